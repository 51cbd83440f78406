"""Candidate mining in plain PyTorch: sentence embeddings of a pool of texts, exact nearest
neighbours by cosine, and random pairs that avoid given ones (``jobs.build_candidates``).

Shapes: NL left texts, NR right texts, H the encoder's hidden size, k neighbours per left text.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from encoders.device import autocast
from encoders.dual_encoder import SideEncoder
from encoders.inference import length_order
from encoders.progress import Bars, open_bar

# Memory for one block of similarities (block rows x NR float32): bounds the search's working set
# whatever the pool sizes.
SIMILARITY_BLOCK_BYTES = 256 << 20


@torch.inference_mode()
def embed_texts(side: SideEncoder, texts: Sequence[str], batch_size: int, description: str = "",
                bars: Bars = None) -> torch.Tensor:
    """Texts -> (P, H) float32 L2-normalised mean-pooled embeddings, in input order.

    Texts are sorted by token count before being cut into batches (:func:`encoders.inference.length_order`),
    so each batch pads only to its own longest text. ``description``: the title of the bar drawn
    with ``bars``, the job's progress callback (None: no bar).
    """
    device = next(side.parameters()).device
    tokenized = side.tokenize(texts)
    out = torch.empty(len(texts), side.transformer.config.hidden_size)
    bar = open_bar(bars, len(texts), description, "text")
    for index in length_order(tokenized, batch_size):
        batch = side.collate([tokenized[i] for i in index]).to(device)
        with autocast(device):
            encoded = side(batch.input_ids, batch.attention_mask)
        out[torch.from_numpy(index)] = encoded.pooled.float().cpu()
        bar.update(len(index))
    bar.close()
    return out


def top_k_neighbours(left: torch.Tensor, right: torch.Tensor, k: int, exclude: torch.Tensor,
                     block_bytes: int = SIMILARITY_BLOCK_BYTES) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact maximum-inner-product search (cosine, for normalised embeddings).

    left (NL, H), right (NR, H); exclude (NL,) long: a right index each left row must not get
    (its identical text), -1 for none. Returns similarities (NL, k') float32 and right indices
    (NL, k') long, best first, k' = min(k, NR); slots with no candidate left (k >= NR with an
    excluded index) hold index -1. Left rows are taken in blocks so a block of similarities
    stays under ``block_bytes``.
    """
    count = min(k, right.shape[0])
    values = torch.empty(left.shape[0], count)
    indices = torch.empty(left.shape[0], count, dtype=torch.long)
    if count == 0:
        return values, indices
    block = max(1, block_bytes // (4 * right.shape[0]))
    right_t = right.T.contiguous()                                           # (H, NR)
    for start in range(0, left.shape[0], block):
        stop = min(start + block, left.shape[0])
        sims = left[start:stop] @ right_t                                    # (b, NR)
        rows = exclude[start:stop]
        has = torch.nonzero(rows >= 0).squeeze(1)
        sims[has, rows[has]] = -math.inf
        top_values, top_indices = sims.topk(count, dim=1)                    # (b, k'), sorted
        top_indices[torch.isinf(top_values)] = -1
        values[start:stop], indices[start:stop] = top_values.cpu(), top_indices.cpu()
    return values, indices


def sample_random(num_right: int, per_left: int, excluded: Sequence[set[int]], rng: np.random.Generator
                  ) -> list[np.ndarray]:
    """For each left row, ``per_left`` distinct right indices drawn uniformly from those not in
    its ``excluded`` set (its neighbours and its identical text); fewer when fewer remain."""
    picks = []
    for banned in excluded:
        take = min(per_left, num_right - len(banned))
        if take <= 0:
            picks.append(np.empty(0, dtype=np.int64))
        elif num_right <= 4 * (len(banned) + per_left):
            # Small pool: draw from the explicit complement.
            allowed = np.setdiff1d(np.arange(num_right), np.fromiter(banned, np.int64, len(banned)))
            picks.append(rng.choice(allowed, size=take, replace=False))
        else:
            # Large pool: rejection sampling; at least 3 in 4 draws are acceptable here.
            chosen: list[int] = []
            while len(chosen) < take:
                j = int(rng.integers(num_right))
                if j not in banned and j not in chosen:
                    chosen.append(j)
            picks.append(np.array(chosen, dtype=np.int64))
    return picks
