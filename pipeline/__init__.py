"""Beam side of pairscore: reading inputs, dedupe, encoding, the embedding store, dead letters.

Imports flow one way: ``jobs -> pipeline -> {encoders, heads}``.
"""
