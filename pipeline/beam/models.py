"""The student's model handlers: the one place a Beam worker loads the student.

Shaped like Beam's ``ModelHandler`` (``apache_beam/ml/inference/base.py``): a handler is a small
picklable description of a model; ``load_model()`` builds what a worker needs and
``run_inference(batch, model)`` runs it on one batch. A DoFn holds a handler and acquires the
model once per worker process through ``shared.Shared`` (:func:`acquire`), so the DoFn threads
of one process share one copy.

Where this departs from Beam: the DoFns do not use ``RunInference``. Stage one sorts texts by
length within a window before cutting batches, and stage two scores Arrow tables of pairs joined
with the store; RunInference's element-wise batching would undo both. The handlers keep
Beam's shape so that the load/run split, and the sharing, read the same.

* :class:`EncoderHandler` -- stage one: one side's encoder (tokenizer, K layers, projection) of
  the student checkpoint, or of the zero-training baseline.
* :class:`HeadHandler` -- stage two: the head alone (``encoders.checkpoint.load_head``): a
  scoring worker never reads the encoder's weights.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

from apache_beam.utils import shared

from encoders.threads import ThreadPlan


class LoadedEncoder:
    """A side encoder shared by the DoFn threads of a worker process. Its forward pass may run
    in several threads at once; its (Rust) tokenizer may not, hence ``lock``."""

    def __init__(self, encoder, device: str):
        self.encoder = encoder
        self.device = device
        self.lock = threading.Lock()


@dataclass(frozen=True)
class EncoderHandler:
    """Stage one's model: ``side``'s encoder of the student at ``model_dir`` (None: the baseline)."""
    model_dir: str | None
    side: str
    device: str = "auto"
    threads: ThreadPlan = ThreadPlan()

    @property
    def tag(self) -> str:
        return f"encoder:{self.model_dir}:{self.side}:{self.device}:{self.threads}"

    def load_model(self) -> LoadedEncoder:
        from encoders.checkpoint import load_or_build_student
        from encoders.config import baseline_config
        from encoders.device import pick_device

        self.threads.apply()
        device = pick_device(self.device)
        student = load_or_build_student(self.model_dir, baseline_config())
        return LoadedEncoder(student.encoder.side(self.side).to(device).eval(), device)

    def run_inference(self, batch, model: LoadedEncoder):
        """A TokenizedBatch (on the model's device) -> EncodedSide: tokens (B, N, D), mask (B, N),
        pooled (B, H) or None; in inference mode and, on GPU, the store's float16
        (encoders/device.py: float16 stores lose nothing to it)."""
        import torch
        from encoders.device import autocast

        with torch.inference_mode(), autocast(model.device, store=True):
            return model.encoder(batch.input_ids, batch.attention_mask)


@dataclass(frozen=True)
class HeadHandler:
    """Stage two's model: the head of the student at ``model_dir`` (None: the baseline's) as a
    ``HeadScorer`` on ``device``, ``batch_size`` pairs per head call, torch threads by ``threads``."""
    model_dir: str | None
    device: str = "auto"
    batch_size: int = 8192
    threads: ThreadPlan = ThreadPlan()
    compile: bool = False
    quantize: str | None = None

    @property
    def tag(self) -> str:
        return f"head:{self.model_dir}:{self.device}:{self.batch_size}:{self.threads}:{self.compile}:{self.quantize}"

    def load_model(self):
        from encoders.checkpoint import load_head
        from encoders.device import pick_device
        from pipeline.scoring_core import HeadScorer

        self.threads.apply()
        device = pick_device(self.device)
        return HeadScorer(load_head(self.model_dir).to(device).eval(), device, self.batch_size,
                          compile=self.compile, quantize=self.quantize)

    def run_inference(self, batch: tuple[Any, Any], model) -> tuple[Any, Any]:
        """(left SideArrays, right SideArrays) of B pairs -> (scores (B,), probs (B, K) or None)."""
        return model.score(*batch)


def acquire(handle: shared.Shared, load: Callable[[], Any], tag: str) -> Any:
    """The object ``load`` builds, once per worker process and ``tag`` (``shared.Shared``)."""
    return handle.acquire(load, tag=tag)
