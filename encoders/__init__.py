"""Plain-PyTorch models: the student's dual encoder and checkpoint, the teacher, their precision,
fingerprints and sorted-batch inference, training and evaluation metrics.

Imports only ``heads/`` (and Beam's FileSystems in ``encoders/remote.py``, which owns remote
files, the model cache and atomic saves), never ``pipeline/`` or ``jobs/``. This file imports
nothing, so a light module of the package costs no torch import.
"""
