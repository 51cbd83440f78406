"""Content hashes of models: one way to hash weights and tokenizers, used by the student's and
the teacher's fingerprints and by the stage-one state cache's file names.

A fingerprint changes when a weight, a shape, a dtype or the tokenizer's vocabulary and rules
change, and never with how or where a model was saved or loaded.
"""
from __future__ import annotations

import json
from typing import Iterable

import torch


def tokenizer_identity(tokenizer) -> str:
    """The tokenizer's vocabulary and rules, without the truncation/padding state that
    every call changes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return json.dumps(sorted(tokenizer.get_vocab().items()))
    spec = json.loads(backend.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    return json.dumps(spec, sort_keys=True)


def hash_weights(digest, named: Iterable[tuple[str, torch.Tensor]], prefix: str = "", dtype: bool = True) -> None:
    """Feed every (name, tensor) to ``digest`` (a hashlib object) in name order: the name, shape
    (and dtype, unless ``dtype`` is False: the stage-one cache names predate it) and raw bytes."""
    for name, tensor in sorted(named, key=lambda item: item[0]):
        label = f"{prefix}{name}:{tuple(tensor.shape)}" + (f":{tensor.dtype}" if dtype else "")
        digest.update(label.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
