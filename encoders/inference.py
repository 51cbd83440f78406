"""Inference in plain PyTorch (no Beam, no store): the one sorted-batch loop and the one place
the head runs, and a student on many pairs the way the product runs it: every unique text is
encoded once (stage one), then the head runs over the pairs in large batches (stage two).

:func:`length_order` is the sorted-batch loop of every encode, embed and logits path (stage one's
encoder, the teacher, the stage-one state cache, candidate mining, this module);
:func:`run_head` is the head of every scoring path (``pipeline.head_feed.HeadScorer`` and
this module). Training evaluates dev with :func:`pair_logits` and ``jobs.evaluate`` times it.

Shapes: P pairs, U unique texts of a side, N tokens kept, D projected size, H hidden size,
C outputs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch

from encoders.config import SIDES
from encoders.device import autocast, run_head, synchronize  # noqa: F401  (run_head: used here, and named here)
from encoders.dual_encoder import EncodedSide, SideEncoder

if TYPE_CHECKING:
    from encoders.checkpoint import Student


@dataclass
class Pairs:
    """P pairs of texts as indices into each side's pool of unique texts, so every text is
    tokenized and encoded once however many pairs it is in.

    pools: side -> the U unique texts of that side, in order of first appearance;
    index: side -> (P,) int64 rows of the pool.
    """
    pools: dict[str, list[str]]
    index: dict[str, np.ndarray]

    @classmethod
    def of(cls, lefts: Sequence[str], rights: Sequence[str]) -> "Pairs":
        if len(lefts) != len(rights):
            raise ValueError(f"{len(lefts)} left texts but {len(rights)} right texts")
        pools, index = {}, {}
        for side, texts in (("left", lefts), ("right", rights)):
            row: dict[str, int] = {}
            index[side] = np.fromiter((row.setdefault(t, len(row)) for t in texts), np.int64, len(texts))
            pools[side] = list(row)
        return cls(pools, index)

    def __len__(self) -> int:
        return len(self.index["left"])

    @property
    def unique_texts(self) -> int:
        """Texts the encoder runs on: the unique left texts plus the unique right texts."""
        return len(self.pools["left"]) + len(self.pools["right"])


def length_order(tokenized: Sequence, batch_size: int) -> Iterator[np.ndarray]:
    """The sorted-batch loop: indices (int64 arrays of at most ``batch_size``) of ``tokenized``
    (texts or pairs, anything with ``num_tokens``) sorted by token count (stably: equal lengths
    keep their order), so each batch pads only to its own longest item. Every index once."""
    order = np.argsort([t.num_tokens for t in tokenized], kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


@torch.inference_mode()
def encode_pool(side: SideEncoder, texts: Sequence[str], batch_size: int, device: str) -> EncodedSide:
    """Texts -> the side's EncodedSide in input order: tokens (U, N, D) float32, mask (U, N) bool,
    pooled (U, H) or None; length-sorted batches, on GPU in stage one's float16 (encoders/device.py),
    as stage one encodes."""
    tokenized = side.tokenize(texts)
    parts: list[tuple[np.ndarray, EncodedSide]] = []
    for index in length_order(tokenized, batch_size):
        batch = side.collate([tokenized[i] for i in index]).to(device)
        with autocast(device, store=True):
            parts.append((index, side(batch.input_ids, batch.attention_mask)))
    if not parts:
        return EncodedSide(torch.zeros(0, side.num_tokens, side.output_dim, device=device),
                           torch.zeros(0, side.num_tokens, dtype=torch.bool, device=device), None)
    # Undo the length sort: row i of the result is texts[i].
    inverse = torch.from_numpy(np.argsort(np.concatenate([index for index, _ in parts]))).to(device)
    tokens = torch.cat([encoded.tokens.float() for _, encoded in parts])[inverse]
    mask = torch.cat([encoded.mask for _, encoded in parts])[inverse]
    pooled = torch.cat([encoded.pooled.float() for _, encoded in parts])[inverse] if side.keep_pooled else None
    return EncodedSide(tokens, mask, pooled)


@torch.inference_mode()
def encode_pairs(student: "Student", pairs: Pairs, device: str, batch_size: int = 128) -> dict[str, EncodedSide]:
    """Stage one: side -> EncodedSide of that side's pool (U rows), each unique text once."""
    return {side: encode_pool(student.encoder.side(side), pairs.pools[side], batch_size, device) for side in SIDES}


@torch.inference_mode()
def head_logits(student: "Student", encoded: dict[str, EncodedSide], pairs: Pairs, device: str,
                batch_size: int = 4096) -> torch.Tensor:
    """Stage two: gather each pair's tokens and run the head through :func:`run_head` (the one
    inference path, as ``score_pairs`` runs it),
    ``batch_size`` pairs at a time -> logits (P, C) float32 on CPU."""
    left, right = encoded["left"], encoded["right"]
    out = []
    for start in range(0, len(pairs), batch_size):
        rows = {side: torch.from_numpy(pairs.index[side][start:start + batch_size]).to(device) for side in SIDES}
        # The head runs exactly as stage two runs it (run_head, which HeadScorer calls too).
        logits = run_head(student,
                          (left.tokens[rows["left"]], left.mask[rows["left"]],
                           left.pooled[rows["left"]] if left.pooled is not None else None),
                          (right.tokens[rows["right"]], right.mask[rows["right"]],
                           right.pooled[rows["right"]] if right.pooled is not None else None), device)
        out.append(logits.float().cpu())
    return torch.cat(out) if out else torch.zeros(0, student.config.num_outputs)


def pair_logits(student: "Student", pairs: Pairs, device: str, encode_batch_size: int = 128,
                head_batch_size: int = 4096) -> tuple[np.ndarray, dict[str, float]]:
    """The student on P pairs: logits (P, C) float32 and the seconds spent in each stage,
    ``encode_seconds`` (tokenize + encode both pools) and ``head_seconds`` (gather + head).
    The student is run in eval mode and left in the mode it was in."""
    was_training = student.training
    student.eval()
    try:
        started = time.perf_counter()
        encoded = encode_pairs(student, pairs, device, encode_batch_size)
        synchronize(device)
        encoded_at = time.perf_counter()
        logits = head_logits(student, encoded, pairs, device, head_batch_size)
        synchronize(device)
        finished = time.perf_counter()
    finally:
        student.train(was_training)
    return logits.numpy(), {"encode_seconds": encoded_at - started, "head_seconds": finished - encoded_at}

