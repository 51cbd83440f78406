"""Where a model runs and in which precision: decided here, once, for every path.

* Device: ``pick_device("auto")`` is CUDA when torch sees one, else the CPU; ``"cuda"`` without a
  GPU is refused with a clear error.
* CPU: float32 throughout, no autocast (fp32 is both faster and exact there).
* CUDA, computing (training, the teacher, the scoring head): :func:`compute_dtype`, bfloat16
  where the GPU has it (no loss scaling needed), else float16 with loss scaling
  (:func:`grad_scaler`).
* CUDA, stage one (every encoding whose tokens end up in a store, and the plain-PyTorch
  inference that stands for stage one in evaluation and on dev: ``encoders/inference.py``):
  float16, :data:`STORE_DTYPE`. The store keeps float16 tokens (int8 stores are scaled from
  them); float16 carries 3 more mantissa bits than bfloat16, so encoding in bfloat16 would
  round away precision the store could keep.

``autocast(device)`` and ``autocast(device, store=True)`` are the only autocast contexts in
pairscore.
"""
from __future__ import annotations

import contextlib

import torch

from encoders.choices import DEVICES  # noqa: F401  (re-exported: encoders.device.DEVICES)
from encoders.errors import FlagError

# Stage one's autocast dtype on CUDA: what its stores hold (see the module docstring).
STORE_DTYPE = torch.float16


def pick_device(name: str) -> str:
    """``auto`` | ``cpu`` | ``cuda`` -> the device models run on ("cpu" or "cuda")."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise FlagError("--device cuda was asked for, but torch sees no CUDA device")
    return name


def compute_dtype() -> torch.dtype:
    """The mixed-precision dtype on GPU: bfloat16 where supported (no loss scaling needed), else float16."""
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device | str, store: bool = False):
    """Mixed precision on CUDA (``store``: stage one's float16, else :func:`compute_dtype`),
    nothing on CPU."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=STORE_DTYPE if store else compute_dtype())
    return contextlib.nullcontext()


def grad_scaler(device: str) -> torch.amp.GradScaler:
    """Loss scaling only for float16 autocast on GPU; bfloat16 and CPU float32 need none."""
    return torch.amp.GradScaler("cuda", enabled=device == "cuda" and torch.cuda.is_available()
                                and compute_dtype() == torch.float16)


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so a wall-clock time covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_head(student, left: tuple, right: tuple, device: str, mixed_precision: bool = True) -> torch.Tensor:
    """The one place the head runs: (tokens (B, N, D), mask (B, N), pooled (B, H) or None) per
    side, torch tensors on ``device`` -> logits (B, C), under inference mode and, on CUDA,
    mixed precision (``mixed_precision=False``: float32 there too, for comparisons). Here, next
    to the autocast it uses, so that scoring stored tokens imports torch alone (no transformers:
    ``pipeline.head_feed.HeadScorer``)."""
    with torch.inference_mode(), autocast(device) if mixed_precision else contextlib.nullcontext():
        return student.score_tokens(left[0], left[1], right[0], right[1], left[2], right[2])
