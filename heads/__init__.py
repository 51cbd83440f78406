"""Heads: small modules that turn a pair's projected token embeddings into logits.

Plain PyTorch (no Beam), one head per file, all with the same call (see heads/_common.py)::

    logits = head(left, left_mask, right, right_mask)     # (B, N, D), (B, N), (B, M, D), (B, M) -> (B, K)

=============  ===============================================================  ===========
name           what                                                             file
=============  ===============================================================  ===========
dipair         DiPair-TSF: transformer over the merged N+M tokens (the product)  dipair.py
dipair-ffnn    DiPair-FFNN: FFNN over the flattened N+M tokens                  dipair_ffnn.py
li             late interaction: each side attended by the other's first token  late_interaction.py
de-ffnn        dual encoder: FFNN over [u, v, |u-v|, u*v] of the first tokens   de_ffnn.py
de-cos         dual encoder: learned scale * cos(u, v) + learned bias            de_cos.py
pooled-cos     zero-training baseline: cos of the pooled sentence embeddings    pooled_cos.py
=============  ===============================================================  ===========

Any head but pooled-cos can be wrapped in ``CosineSkip`` (cosine_skip.py): the pooled-embedding
cosine plus the head's logits, so training starts from the zero-shot baseline.

Build by name and rebuild from a checkpoint's JSON::

    head = build_head("dipair", dim=128, left_tokens=4, right_tokens=12, layers=2)
    same = build_head(head.name, dim=head.dim, left_tokens=head.left_tokens,
                      right_tokens=head.right_tokens, num_outputs=head.num_outputs, **head_options(head))
"""
from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from heads._common import PairHead, config_from_options
from heads.cosine_skip import CosineSkip
from heads.de_cos import DECosConfig, DECosHead
from heads.de_ffnn import DEFFNNConfig, DEFFNNHead
from heads.dipair import DiPairConfig, DiPairHead
from heads.dipair_ffnn import DiPairFFNNConfig, DiPairFFNNHead
from heads.late_interaction import LateInteractionHead, LIConfig
from heads.pooled_cos import PooledCosConfig, PooledCosHead

_HEADS: dict[str, type[PairHead]] = {head.name: head for head in (
    DiPairHead, DiPairFFNNHead, LateInteractionHead, DEFFNNHead, DECosHead, PooledCosHead)}

HEAD_NAMES: tuple[str, ...] = tuple(_HEADS)

__all__ = [
    "HEAD_NAMES", "build_head", "head_options", "PairHead", "CosineSkip",
    "DiPairHead", "DiPairConfig", "DiPairFFNNHead", "DiPairFFNNConfig", "LateInteractionHead", "LIConfig",
    "DEFFNNHead", "DEFFNNConfig", "DECosHead", "DECosConfig", "PooledCosHead", "PooledCosConfig",
]


def build_head(name: str, *, dim: int, left_tokens: int, right_tokens: int, num_outputs: int = 1,
               **options: Any) -> nn.Module:
    """A freshly initialised head.

    name:         one of HEAD_NAMES.
    dim:          D, the projected token dimension.
    left_tokens:  N, left token embeddings per pair.   right_tokens: M, right ones.
    num_outputs:  logits per pair: 1 for binary / regression, k for k classes.
    options:      the head's config fields (see its ``*Config`` class); JSON values are fine
                  (lists for tuples).

    Raises ValueError naming the bad value and what is allowed: unknown name, unknown
    option, bad option value, bad size.
    """
    if name not in _HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEAD_NAMES)}")
    head_class = _HEADS[name]
    config = config_from_options(head_class.config_class, name, options)
    return head_class(config, dim=dim, left_tokens=left_tokens, right_tokens=right_tokens,
                      num_outputs=num_outputs)


def head_options(head: nn.Module) -> dict[str, Any]:
    """The options that rebuild ``head``'s architecture with :func:`build_head` (together with
    its name and sizes: ``head.name``, ``head.dim``, ``head.left_tokens``, ``head.right_tokens``,
    ``head.num_outputs``). JSON-able: tuples come back as lists."""
    if not isinstance(head, PairHead) or type(head) not in _HEADS.values():
        raise ValueError(f"{type(head).__name__} is not a registered head; heads: {', '.join(HEAD_NAMES)}")
    return {field.name: _jsonable(getattr(head.config, field.name))
            for field in dataclasses.fields(head.config)}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
