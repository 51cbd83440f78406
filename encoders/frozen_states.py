"""Stage 1's frozen encoder outputs, computed once per unique text.

In DiPair's stage 1 the encoder is frozen, so it gives every text the same token states in every
epoch. ``FrozenStates`` encodes each unique text once, keeps its N / M token states before the
projection, and an epoch of stage 1 then runs only projection + head on them: nearly free, so
stage 1 can train to convergence. With ``cache_dir`` the states are kept on disk (safetensors),
so runs that differ only in the head encode the texts once.

Shapes: B pairs, U unique texts, T tokens kept per text, H the encoder's hidden size, D the
projected size, C outputs.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from encoders.checkpoint import Student
from encoders.config import SIDES
from encoders.device import autocast
from encoders.dual_encoder import SideEncoder, mean_pool, select_tokens
from encoders.fingerprint import hash_weights, tokenizer_identity
from encoders.inference import Pairs, length_order
from encoders.progress import Bars, open_bar

CACHE_FORMAT = "pairscore-frozen-states-v2"   # v2: also the pooled sentence embeddings


def project(side: SideEncoder, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Kept token states (B, N, H) and their mask (B, N) -> projected tokens (B, N, D) with padded
    rows zero: the last step of ``SideEncoder.forward``, run on cached states in stage 1."""
    return side.projection(states) * mask[:, :, None].to(states.dtype)


class FrozenStates:
    """Stage 1's encoder outputs, computed once per unique text: the kept token states before the
    projection. The encoder is frozen in stage 1, so these are exactly what it would give in every
    epoch; an epoch then costs only projection + head.

    A *view* is one (encoder, max length, token count, selection): with a shared encoder, equal
    max lengths and ``first`` token selection both sides read one view that keeps max(N, M) tokens
    (the first N of max(N, M) kept tokens are the first N), so a text on both sides is encoded once.

    states[view]: (U, T, H) float32 on CPU; mask[view]: (U, T) bool; pooled[view]: (U, H) float32,
    the L2-normalised mean-pooled embedding of the whole text (for a cosine skip); rows: text ->
    row, per view.
    """

    def __init__(self, student: Student, texts: dict[str, Sequence[str]], batch_size: int, device: str,
                 cache_dir: str | None = None, bars: Bars = None):
        config = student.config
        shared = (config.shared_encoder and config.left_max_length == config.right_max_length
                  and config.token_selection == "first")
        self.view = {"left": "both", "right": "both"} if shared else {"left": "left", "right": "right"}
        self.count = ({"both": max(config.left_tokens, config.right_tokens)} if shared
                      else {"left": config.left_tokens, "right": config.right_tokens})
        self.states: dict[str, torch.Tensor] = {}
        self.mask: dict[str, torch.Tensor] = {}
        self.pooled: dict[str, torch.Tensor] = {}
        self.rows: dict[str, dict[str, int]] = {}
        self.reused: list[str] = []
        started = time.perf_counter()
        for view, count in self.count.items():
            sides = [side for side in SIDES if self.view[side] == view]
            pool = sorted({text for side in sides for text in texts[side]})
            encoder = student.encoder.side(sides[0])
            cached = _cache_path(cache_dir, encoder, count, pool) if cache_dir else None
            if cached and os.path.exists(cached):
                tensors = load_file(cached)
                states, mask, pooled = tensors["states"], tensors["mask"].bool(), tensors["pooled"]
                self.reused.append(cached)
            else:
                states, mask, pooled = frozen_token_states(
                    encoder, pool, count, batch_size, device,
                    f"stage 1: encode {len(pool):,} texts once", bars)
                if cached:
                    os.makedirs(os.path.dirname(cached), exist_ok=True)
                    save_file({"states": states, "mask": mask.to(torch.uint8), "pooled": pooled}, cached,
                              metadata={"format": CACHE_FORMAT})
            self.states[view], self.mask[view], self.pooled[view] = states, mask, pooled
            self.rows[view] = {text: row for row, text in enumerate(pool)}
        self.seconds = time.perf_counter() - started

    @property
    def texts(self) -> int:
        return sum(len(rows) for rows in self.rows.values())

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for t in [*self.states.values(), *self.mask.values(), *self.pooled.values()])

    def pair_rows(self, pairs: Pairs) -> dict[str, np.ndarray]:
        """side -> (P,) the cache row of each pair's text on that side."""
        return {side: np.fromiter((self.rows[self.view[side]][t] for t in pairs.pools[side]), np.int64,
                                  len(pairs.pools[side]))[pairs.index[side]] for side in SIDES}

    def pooled_of(self, side: str, rows: np.ndarray) -> torch.Tensor:
        """(B,) cache rows of ``side`` -> (B, H) pooled sentence embeddings."""
        return self.pooled[self.view[side]][torch.from_numpy(rows)]

    def logits(self, student: Student, rows: dict[str, np.ndarray], device: str) -> torch.Tensor:
        """Projection + head on cached states: rows side -> (B,) cache rows -> logits (B, C)."""
        sides, pooled = {}, {}
        for side in SIDES:
            view, n = self.view[side], student.config.tokens(side)
            index = torch.from_numpy(rows[side])
            states = self.states[view][index, :n].to(device)                     # (B, n, H)
            mask = self.mask[view][index, :n].to(device)                         # (B, n)
            sides[side] = (project(student.encoder.side(side), states, mask), mask)
            pooled[side] = self.pooled[view][index].to(device) if student.config.pooled else None
        return student.score_tokens(*sides["left"], *sides["right"], pooled["left"], pooled["right"])


@torch.inference_mode()
def frozen_token_states(side: SideEncoder, texts: Sequence[str], count: int, batch_size: int, device: str,
                        description: str = "", bars: Bars = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Texts -> (U, count, H) float32 kept token states (before projection, on CPU), (U, count)
    bool mask and (U, H) float32 pooled embeddings, in input order: ``SideEncoder.forward`` up to
    the projection, keeping ``count`` tokens. ``description``: the title of the bar drawn with
    ``bars``, the job's progress callback (None: no bar)."""
    tokenized = side.tokenize(texts)
    hidden = side.transformer.config.hidden_size
    states = torch.zeros(len(texts), count, hidden)
    mask = torch.zeros(len(texts), count, dtype=torch.bool)
    pooled = torch.zeros(len(texts), hidden)
    was_training = side.training
    side.eval()
    bar = open_bar(bars, len(texts), description, "text")
    try:
        for index in length_order(tokenized, batch_size):
            batch = side.collate([tokenized[i] for i in index]).to(device)
            with autocast(device):
                output = side.transformer(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            last = output.last_hidden_state.float()
            kept, kept_mask = select_tokens(last, batch.attention_mask, count, side.selection)
            rows = torch.from_numpy(index)
            states[rows], mask[rows] = kept.cpu(), kept_mask.cpu()
            pooled[rows] = mean_pool(last, batch.attention_mask).cpu()
            bar.update(len(index))
    finally:
        bar.close()
        side.train(was_training)
    return states, mask, pooled


def _cache_path(directory: str, side: SideEncoder, count: int, texts: Sequence[str]) -> str:
    """A cache file named by everything its contents depend on: the encoder's weights and
    tokenizer, max length, tokens kept, selection and the exact texts. Another encoder, K, length
    or data set gets another file; the same gets this one back (e.g. every head of a comparison)."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CACHE_FORMAT, "max_length": side.max_length, "count": count,
                              "selection": side.selection}).encode())
    digest.update(tokenizer_identity(side.tokenizer).encode())
    hash_weights(digest, side.transformer.state_dict().items(), dtype=False)
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return os.path.join(directory, f"frozen-states-{digest.hexdigest()[:32]}.safetensors")
