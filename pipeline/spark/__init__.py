"""The Spark engine: stage two as PySpark jobs around the engine-free core (see ``score.py``).

The only package that imports pyspark. Light on purpose: importing it imports nothing heavy.
"""
