"""VIRT: distil how the cross-encoder attends across the pair into the two towers
(``../shared/papers/virt-li-2022.txt``, eq. 5-7). Training time only: inference and the stores
do not change.

The teacher reads ``[CLS] left [SEP] right [SEP]``; in each layer its attention map has two cross
blocks, left -> right and right -> left. The towers never see each other, but each trained
student layer can still form *virtual* maps: its own query projection of one tower's input
hidden states against its key projection of the other tower's (eq. 5). The VIRT loss pulls
those virtual maps towards the teacher's cross blocks, each row renormalised to sum to 1
(eq. 6; renormalising the softmax's row over a block is the softmax of the block's scores):

    L_virt = 1 / (2 |S| A) sum_{l in S} sum_heads ( ||M~x->y - Mx->y||_F / m + ||M~y->x - My->x||_F / n )

per pair (eq. 7), averaged over the pairs of a batch that have aligned tokens on both sides;
m, n are the pair's aligned left / right tokens, S the trained student layers, A the student's
heads. ``train_student --virt-weight`` adds ``alpha * L_virt`` to the distillation loss wherever
the encoder trains (stage 2; the single stage of ``--stages 1``).

Layers: student layer s (0-based, of L_s) is compared with teacher layer
``t(s) = floor((s + 1) * L_t / L_s) - 1`` (equal depths: t(s) = s; a 3-layer student of a 6-layer
teacher: 1, 3, 5); only the layers that train carry the loss (``--train-layers k``: the top k).
Heads: equal counts map one to one; when the teacher's count is a multiple of the student's,
each student head is compared with the mean of its group of consecutive teacher heads; otherwise
every student head is compared with the mean of all the teacher's heads.

Tokens: the towers see ``[CLS] left [SEP]`` and ``[CLS] right [SEP]`` (their own max lengths),
the teacher the pair cut to its max length (the longer text loses tokens first). Word pieces of
a text are the same alone or in the pair, so the k-th content token of a tower is the k-th of
that text in the teacher for every k both views have (checked on the ids: the common prefix).
The maps cover the left [CLS] (position 0 in both views) and the aligned content tokens; the
[SEP]s, the right tower's own [CLS] and every token one view lacks (truncated by the teacher or
by the tower) are masked, in the teacher's renormalisation and the student's softmax alike, so
both maps are distributions over the same tokens.

Shapes: B pairs, Tl / Tr tokens of the left / right tower (padded), T the teacher's tokens,
H hidden size, A heads (A_t the teacher's), d = H / A.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from encoders.teacher import CrossEncoder, load_teacher
from encoders.errors import FlagError, ModelError


def teacher_layer_for(student_layer: int, student_layers: int, teacher_layers: int) -> int:
    """The teacher layer (0-based) whose attention student layer ``student_layer`` (0-based, of
    ``student_layers``) learns: ``floor((s + 1) * L_t / L_s) - 1``, proportional depth, the
    student's last layer on the teacher's last."""
    if not 0 <= student_layer < student_layers:
        raise ValueError(f"student layer {student_layer} is not one of 0..{student_layers - 1}")
    return max(0, (student_layer + 1) * teacher_layers // student_layers - 1)


def head_average(student_heads: int, teacher_heads: int) -> torch.Tensor:
    """(A, A_t) weights, rows summing to 1: student head a is compared with
    ``sum_t W[a, t] * teacher head t`` (identity for equal counts, the mean of a group of
    A_t / A consecutive heads when A divides A_t, else the mean of all teacher heads)."""
    if student_heads == teacher_heads:
        return torch.eye(student_heads)
    if teacher_heads % student_heads == 0:
        group = teacher_heads // student_heads
        return torch.repeat_interleave(torch.eye(student_heads), group, dim=1) / group
    return torch.full((student_heads, teacher_heads), 1.0 / teacher_heads)


@dataclass
class Alignment:
    """Where each tower token of a batch of pairs sits in the teacher's input.

    left_pos (B, Tl), right_pos (B, Tr): int64 teacher positions (0 where masked);
    left_ok (B, Tl), right_ok (B, Tr): bool, the token is in the maps (aligned, not special,
    not padding).
    """
    left_pos: torch.Tensor
    left_ok: torch.Tensor
    right_pos: torch.Tensor
    right_ok: torch.Tensor

    def to(self, device) -> "Alignment":
        return Alignment(self.left_pos.to(device), self.left_ok.to(device), self.right_pos.to(device),
                         self.right_ok.to(device))


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += 1
    return count


def align(left_ids: Sequence[Sequence[int]], right_ids: Sequence[Sequence[int]],
          teacher_ids: Sequence[Sequence[int]], teacher_sequences: Sequence[Sequence[int | None]],
          special_ids: set[int], cls_id: int | None, left_length: int, right_length: int) -> Alignment:
    """Align each pair's tower tokens with the teacher's.

    left_ids / right_ids: per pair, the tower's token ids (special tokens included);
    teacher_ids: per pair, the teacher's ids; teacher_sequences: per teacher token 0 (left
    text), 1 (right text) or None (special), as fast tokenizers' ``sequence_ids`` give them;
    left_length / right_length: Tl / Tr, the towers' padded lengths in this batch.
    """
    count = len(left_ids)
    left_pos = torch.zeros(count, left_length, dtype=torch.int64)
    right_pos = torch.zeros(count, right_length, dtype=torch.int64)
    left_ok = torch.zeros(count, left_length, dtype=torch.bool)
    right_ok = torch.zeros(count, right_length, dtype=torch.bool)
    for i in range(count):
        ids, sequences = teacher_ids[i], teacher_sequences[i]
        for which, tower, pos, ok in ((0, left_ids[i], left_pos, left_ok), (1, right_ids[i], right_pos, right_ok)):
            tower_content = [p for p, token in enumerate(tower) if token not in special_ids]
            teacher_content = [p for p, s in enumerate(sequences) if s == which]
            shared = _common_prefix([tower[p] for p in tower_content], [ids[p] for p in teacher_content])
            for k in range(shared):
                pos[i, tower_content[k]] = teacher_content[k]
                ok[i, tower_content[k]] = True
            # The left [CLS] is the same token at position 0 in both views; the right tower's own
            # [CLS] has no counterpart in the teacher.
            if which == 0 and shared and cls_id is not None and tower and tower[0] == cls_id and ids[0] == cls_id:
                ok[i, 0] = True
    return Alignment(left_pos, left_ok, right_pos, right_ok)


def cross_blocks(attention: torch.Tensor, alignment: Alignment) -> tuple[torch.Tensor, torch.Tensor]:
    """One teacher layer's attention probabilities (B, A_t, T, T) -> its cross blocks in the
    towers' coordinates, left -> right (B, A_t, Tl, Tr) and right -> left (B, A_t, Tr, Tl), masked
    to aligned tokens, each row renormalised to sum to 1 (eq. 6); masked rows are 0."""
    attention = attention.float()
    heads, length = attention.shape[1], attention.shape[2]

    def block(rows_pos, rows_ok, cols_pos, cols_ok):
        rows = rows_pos[:, None, :, None].expand(-1, heads, -1, length)
        picked = attention.gather(2, rows)                                        # (B, A_t, R, T)
        cols = cols_pos[:, None, None, :].expand(-1, heads, picked.shape[2], -1)
        picked = picked.gather(3, cols)                                           # (B, A_t, R, C)
        keep = (rows_ok[:, None, :, None] & cols_ok[:, None, None, :]).to(picked.dtype)
        picked = picked * keep
        return picked / picked.sum(dim=-1, keepdim=True).clamp(min=1e-12)

    a = alignment
    return block(a.left_pos, a.left_ok, a.right_pos, a.right_ok), block(a.right_pos, a.right_ok, a.left_pos, a.left_ok)


def virtual_map(query_layer: torch.nn.Module, key_layer: torch.nn.Module, queries_from: torch.Tensor,
                keys_from: torch.Tensor, keys_ok: torch.Tensor) -> torch.Tensor:
    """Eq. 5 for one BERT-style layer: its query projection of one tower's input states
    (B, R, H) against its key projection of the other's (B, C, H), per head, softmax over the
    other tower's tokens with ``keys_ok`` (B, C) False masked -> (B, A, R, C) float32.
    ``query_layer`` / ``key_layer``: the same layer of the two towers (one module when the
    encoder is shared)."""
    queries, keys = query_layer.attention.self, key_layer.attention.self
    heads, size = queries.num_attention_heads, queries.attention_head_size
    q = queries.query(queries_from).view(*queries_from.shape[:2], heads, size).transpose(1, 2)    # (B, A, R, d)
    k = keys.key(keys_from).view(*keys_from.shape[:2], heads, size).transpose(1, 2)               # (B, A, C, d)
    scores = (q.float() @ k.float().transpose(2, 3)) / math.sqrt(size)                              # (B, A, R, C)
    scores = scores.masked_fill(~keys_ok[:, None, None, :], torch.finfo(scores.dtype).min)
    return scores.softmax(dim=-1)


def map_loss(student_maps: Sequence[tuple[torch.Tensor, torch.Tensor]],
             teacher_maps: Sequence[tuple[torch.Tensor, torch.Tensor]], alignment: Alignment) -> torch.Tensor:
    """Eq. 7: per layer the student's (left -> right (B, A, Tl, Tr), right -> left (B, A, Tr, Tl))
    and the teacher's, heads already mapped -> the scalar loss, averaged over layers, heads and
    the pairs with aligned tokens on both sides (0 when no pair has)."""
    m = alignment.left_ok.sum(dim=1).float()                         # (B,)
    n = alignment.right_ok.sum(dim=1).float()
    valid = (m > 0) & (n > 0)
    keep_lr = (alignment.left_ok[:, None, :, None] & alignment.right_ok[:, None, None, :]).float()
    keep_rl = keep_lr.transpose(2, 3)
    per_pair = 0.0
    for (student_lr, student_rl), (teacher_lr, teacher_rl) in zip(student_maps, teacher_maps):
        lr = torch.linalg.vector_norm((student_lr - teacher_lr) * keep_lr, dim=(2, 3))   # (B, A)
        rl = torch.linalg.vector_norm((student_rl - teacher_rl) * keep_rl, dim=(2, 3))
        per_pair = per_pair + (lr / m.clamp(min=1)[:, None] + rl / n.clamp(min=1)[:, None]).mean(dim=1)
    per_pair = per_pair / (2 * len(student_maps))                                      # (B,)
    if not bool(valid.any()):
        return (per_pair * 0).sum()
    return per_pair[valid].mean()


class Virt:
    """The teacher and the layer / head maps of one VIRT run.

    ``student_layers``: the student's transformer layers (ModuleList, L_s of them); ``trained``:
    the indices of the layers that train (they carry the loss)."""

    def __init__(self, teacher: CrossEncoder, weight: float, student_layers: torch.nn.ModuleList,
                 trained: Sequence[int]):
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.weight = weight
        teacher_config = teacher.model.config
        self.teacher_layers = teacher_config.num_hidden_layers
        self.trained = list(trained)
        self.layer_map = {s: teacher_layer_for(s, len(student_layers), self.teacher_layers) for s in self.trained}
        student_heads = student_layers[0].attention.self.num_attention_heads
        self.heads = head_average(student_heads, teacher_config.num_attention_heads)
        tokenizer = teacher.tokenizer
        self.special_ids = set(tokenizer.all_special_ids)
        self.cls_id = tokenizer.cls_token_id

    def describe(self) -> dict:
        """For the run's summary."""
        a_s, a_t = self.heads.shape
        how = ("one to one" if a_s == a_t else f"mean of {a_t // a_s} teacher heads each" if a_t % a_s == 0
               else "mean of all teacher heads")
        return {"weight": self.weight, "layers": {str(s): t for s, t in self.layer_map.items()},
                "heads": f"{a_s} student <- {a_t} teacher: {how}", "teacher_max_length": self.teacher.task.max_length}

    @torch.no_grad()
    def teacher_maps(self, lefts: Sequence[str], rights: Sequence[str], left_ids: Sequence[Sequence[int]],
                     right_ids: Sequence[Sequence[int]], left_length: int, right_length: int, device
                     ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], Alignment]:
        """A batch's pairs (texts and the towers' token ids, padded to Tl / Tr) -> per trained
        student layer (in ``self.trained`` order) the teacher's cross blocks with heads mapped to
        the student's, ((B, A, Tl, Tr), (B, A, Tr, Tl)), and the alignment."""
        teacher = self.teacher
        encoded = teacher.tokenizer(list(lefts), list(rights), truncation="longest_first",
                                    max_length=teacher.task.max_length, padding=True, return_tensors="pt")
        sequences = [encoded.sequence_ids(i) for i in range(len(lefts))]
        lengths = encoded["attention_mask"].sum(dim=1).tolist()
        teacher_ids = [row[:length] for row, length in zip(encoded["input_ids"].tolist(), lengths)]
        alignment = align(left_ids, right_ids, teacher_ids, sequences, self.special_ids, self.cls_id,
                          left_length, right_length).to(device)
        batch = {k: v.to(device) for k, v in encoded.items()}
        attentions = teacher.model(**batch, output_attentions=True).attentions
        heads = self.heads.to(device)
        maps = []
        for s in self.trained:
            lr, rl = cross_blocks(attentions[self.layer_map[s]], alignment)
            maps.append((torch.einsum("st,btrc->bsrc", heads, lr), torch.einsum("st,btrc->bsrc", heads, rl)))
        return maps, alignment

    def loss(self, left_layers: torch.nn.ModuleList, right_layers: torch.nn.ModuleList,
             left_inputs: Sequence[torch.Tensor], right_inputs: Sequence[torch.Tensor], teacher_maps,
             alignment: Alignment) -> torch.Tensor:
        """The towers' layers (the same ModuleList when the encoder is shared) and, per trained
        layer (``self.trained`` order), the hidden states entering it, ``left_inputs`` (B, Tl, H)
        and ``right_inputs`` (B, Tr, H), one row per pair -> the VIRT loss (a scalar)."""
        student_maps = []
        for s, left, right in zip(self.trained, left_inputs, right_inputs):
            student_maps.append((virtual_map(left_layers[s], right_layers[s], left, right, alignment.right_ok),
                                 virtual_map(right_layers[s], left_layers[s], right, left, alignment.left_ok)))
        return map_loss(student_maps, teacher_maps, alignment)


def load_virt_teacher(path: str | None, weight: float, student_tokenizer) -> CrossEncoder | None:
    """``--teacher`` for ``--virt-weight``: None when the weight is 0 (VIRT off, nothing is
    loaded); else the teacher with eager attention (the kernels that return attention maps).
    ValueError, one line naming the value, when there is no teacher, it is not a cross-encoder
    checkpoint, has no fast tokenizer, or its vocabulary differs from the student's."""
    if not weight:
        return None
    if path is None:
        raise FlagError(f"--virt-weight {weight} needs --teacher DIR: the cross-encoder whose attention maps "
                        "the student learns")
    try:
        teacher = load_teacher(path, attn_implementation="eager")
    except ValueError as err:
        raise ModelError(f"--teacher {path!r} is not a cross-encoder teacher checkpoint (--virt-weight {weight}): "
                         f"{str(err).splitlines()[0]}") from err
    if not getattr(teacher.tokenizer, "is_fast", False):
        raise ModelError(f"--teacher {path!r} has no fast tokenizer: VIRT aligns its tokens with the towers' by the "
                         "fast tokenizer's sequence ids")
    ours, theirs = student_tokenizer.get_vocab(), teacher.tokenizer.get_vocab()
    if ours != theirs:
        raise ModelError(f"--teacher {path!r} has another tokenizer than the student's encoder ({len(theirs):,} vs "
                         f"{len(ours):,} vocabulary entries, or different ids): --virt-weight {weight} compares "
                         "word piece by word piece, so both must tokenize alike")
    layers = getattr(getattr(getattr(teacher.model, "base_model", None), "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList) or not hasattr(layers[0], "attention"):
        raise ModelError(f"--teacher {path!r} is a {type(teacher.model).__name__}, not a BERT-style cross-encoder: "
                         "VIRT reads its per-layer attention maps")
    return teacher


def gather_rows(tensors: Sequence[torch.Tensor], back: np.ndarray | torch.Tensor) -> list[torch.Tensor]:
    """Per-text tensors (U, ...) -> per-pair rows (B, ...)."""
    back = torch.as_tensor(back).reshape(-1)
    return [t[back.to(t.device)] for t in tensors]
