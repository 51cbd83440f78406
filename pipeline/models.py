"""The student's model handlers, engine-free: how any worker (a Beam DoFn, a Spark task) loads the
student once and runs it on a batch.

Shaped like Beam's ``ModelHandler`` (``apache_beam/ml/inference/base.py``): a handler is a small
picklable description of a model; ``load_model()`` builds what a worker needs and
``run_inference(batch, model)`` runs it on one batch. Each engine keeps one loaded model per worker
process (``pipeline/beam/models.py``: ``shared.Shared``; ``pipeline/spark/workers.py``: a
process-wide cache).

* :class:`EncoderHandler` -- stage one: one side's encoder (tokenizer, K layers, projection) of
  the student checkpoint, or of the zero-training baseline; :func:`encode_unique_texts` turns a
  window of texts into store rows with it.
* :class:`HeadHandler` -- stage two: the head alone (``encoders.checkpoint.load_head``): a
  scoring worker never reads the encoder's weights.
* :class:`ModelFacts` (:func:`model_facts`) -- what the launching process needs to know of the
  student (config, weight fingerprint, store layouts) without loading its encoder, so that a run
  whose texts are all in ``--store`` never imports transformers (seconds of start-up).
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Sequence

import pyarrow as pa

from encoders.config import SIDES, StudentConfig
from encoders.file_fingerprint import ModelChanged, read_record
from encoders.threads import ThreadPlan
from pipeline.errors import InputChanged, ModelError
from pipeline.stderr import quiet_refusal_logs
from pipeline.store import StoreError, StoreLayout, encode_token_block, read_manifest
from pipeline.text_checks import UniqueText
from pipeline.text_ids import text_id


@contextlib.contextmanager
def pinned_model_load() -> Iterator[None]:
    """Around a worker's model load: a model directory that differs from the pin the launching
    process took (``encoders.remote.pin_model_dir``; ModelChanged, naming the file) stops the run
    as an input that changed mid-run (``InputChanged``: exit 3, nothing committed)."""
    try:
        yield
    except ModelChanged as err:
        quiet_refusal_logs(raising=True)   # the launcher prints the one line; the engine need not log it too
        raise InputChanged(str(err)) from None


@dataclass(frozen=True)
class ModelFacts:
    """What the launching process of a scoring run needs to know of its student: its ``config``,
    its weight ``fingerprint`` (what stores, outputs and summaries record) and the encoders'
    hidden sizes (``hidden``: {side: H}), from which each side's store layout follows. Built by
    :func:`model_facts` without the encoder's weights when the checkpoint's files prove its
    fingerprint."""
    model_dir: str | None
    config: StudentConfig
    fingerprint: str
    hidden: dict[str, int]

    def layout(self, side: str, dtype: str) -> StoreLayout:
        """``side``'s store layout in ``dtype``: what ``pipeline.store.store_layout`` gives for the
        loaded student."""
        pooled = self.hidden[side] if self.config.pooled else None
        return StoreLayout(side=side, tokens_kept=self.config.tokens(side),
                           dim=self.config.dim if self.config.dim is not None else self.hidden[side],
                           dtype=dtype, pooled_dim=pooled)


def proven_fingerprint(model_dir: str | None, store: str | None = None) -> str | None:
    """The weight fingerprint of the pinned checkpoint ``model_dir`` (``encoders.remote.pin_model_dir``),
    proven from its files alone, or None when they prove none (then the student must be loaded).

    Two proofs, each a file-level fingerprint (encoders/file_fingerprint.py) equal to the pin's:
    the checkpoint's own record (``fingerprint.json``: its file list equals the pinned files, name,
    size and SHA-256) and, for a checkpoint without one, a ``--store`` side whose manifest's
    ``model_files_fingerprint`` equals the pin's (the store was written from these very files, and
    its ``model_fingerprint`` is theirs). The baseline (None) and unpinned hub ids prove none."""
    pin = getattr(model_dir, "pin", None)
    if pin is None:
        return None
    record = read_record(_local_copy(model_dir))
    if record is not None and record.get("weight_fingerprint") \
            and sorted(tuple(entry) for entry in record["files"]) == sorted(pin.files):
        return record["weight_fingerprint"]
    if store is not None:
        from apache_beam.io.filesystems import FileSystems

        for side in SIDES:
            try:
                manifest = read_manifest(FileSystems.join(store, side))
            except StoreError:
                continue     # open_store_side names what is wrong with it, later
            if manifest.model_files_fingerprint == pin.fingerprint:
                return manifest.model_fingerprint
    return None


def _local_copy(model_dir: str) -> str:
    """A local directory holding the pinned ``model_dir``: itself when local (its files were
    hashed by the pin a moment ago: not again), else the verified copy in the cache."""
    from encoders.remote import is_remote, local_model_dir

    return local_model_dir(model_dir) if is_remote(str(model_dir)) else str(model_dir)


def model_facts(model_dir: str | None, store: str | None = None) -> ModelFacts:
    """The :class:`ModelFacts` of the student at ``model_dir`` (pinned by
    ``encoders.remote.pin_model_dir``; None: the zero-training baseline), ``store`` the run's
    ``--store`` root if any.

    When the files prove the weight fingerprint (:func:`proven_fingerprint`), only the config,
    the encoders' config.json and the head are read, and transformers is never imported; the head
    is loaded here to check, before the pipeline starts, that its weights match the config and
    are finite numbers. Otherwise the whole student is loaded (and checked) as before.

    Raises:
        ModelError: a checkpoint that is incomplete, names an unknown head, does not match its
            config or holds a weight that is NaN or infinite (one line, naming the checkpoint).
    """
    from encoders.checkpoint import hidden_size, load_head, load_or_build_student, read_config
    from encoders.config import baseline_config
    from encoders.finite import check_finite_weights

    fingerprint = proven_fingerprint(model_dir, store)
    if fingerprint is None:
        student = load_or_build_student(model_dir, baseline_config())
        if student.head is None:
            raise ModelError(f"model {model_dir!r} has no head to score with")
        hidden = {side: student.encoder.side(side).transformer.config.hidden_size for side in SIDES}
        return ModelFacts(model_dir, student.config, student.fingerprint, hidden)
    local = _local_copy(model_dir)
    config = read_config(local)
    # The head only (kilobytes): a mismatch or a NaN stops the run here, with the checkpoint named.
    check_finite_weights(load_head(local), f"checkpoint {str(model_dir)!r}")
    return ModelFacts(model_dir, config, fingerprint, {side: hidden_size(local, config, side) for side in SIDES})


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
        with pinned_model_load():
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
    ``HeadScorer`` on ``device``, ``batch_size`` pairs per head call, torch threads by ``threads``,
    the opt-in ``compile`` and ``quantize`` ("int8") of the head."""
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
        from pipeline.head_feed import HeadScorer

        self.threads.apply()
        device = pick_device(self.device)
        with pinned_model_load():
            head = load_head(self.model_dir)
        return HeadScorer(head.to(device).eval(), device, self.batch_size, compile=self.compile,
                          quantize=self.quantize)

    def run_inference(self, batch: HeadBatch, model) -> tuple[Any, Any]:
        """A :class:`HeadBatch` of B pairs -> (scores (B,), probs (B, K) or None)."""
        if batch.left_rows is None:
            return model.score(batch.left, batch.right)
        # Whole stores and the pairs' rows in them: the scorer gathers (on the device when resident).
        return model.score_rows(batch.left, batch.left_rows, batch.right, batch.right_rows)


class HeadBatch(NamedTuple):
    """B pairs as the head reads them: each side's SideArrays and, when those are a whole store
    (R rows), the (B,) store rows of the pairs; rows None: the arrays are the B pairs' own rows."""
    left: Any
    left_rows: Any
    right: Any
    right_rows: Any


class EncodedTexts(NamedTuple):
    """Store rows of a window of texts: ``table`` (one row per id, the store's schema),
    ``encoded`` (texts run through the encoder), ``truncated`` (of those, cut at max length)."""
    table: pa.Table
    encoded: int
    truncated: int


def encode_unique_texts(handler: EncoderHandler, model: LoadedEncoder, texts: Sequence[UniqueText],
                        layout: StoreLayout, batch_size: int) -> EncodedTexts:
    """A window of texts -> their store rows. Texts are tokenized together, sorted by token count
    and cut into batches of ``batch_size``, so each batch pads only to its own longest text (this
    is where length batching pays); ids sharing a text share its embedding."""
    from encoders.inference import length_order

    encoder = model.encoder
    schema = layout.schema()
    with model.lock:
        tokenized = encoder.tokenize([t.text for t in texts])
    columns: dict[str, list] = {name: [] for name in schema.names}
    encoded = truncated = 0
    for batch_index in length_order(tokenized, batch_size):
        batch = encoder.collate([tokenized[i] for i in batch_index]).to(model.device)
        out = handler.run_inference(batch, model)
        token_bytes, scales = encode_token_block(out.tokens.float().cpu().numpy(), layout.dtype)
        pooled = out.pooled.float().cpu().numpy().astype("<f2") if out.pooled is not None else None
        for position, i in enumerate(batch_index):
            unique, tok = texts[i], tokenized[i]
            encoded += 1
            truncated += bool(tok.truncated)
            for id_ in unique.ids:
                columns["id"].append(id_)
                columns["text_hash"].append(text_id(unique.text))
                columns["num_tokens"].append(tok.num_tokens)
                columns["truncated"].append(tok.truncated)
                columns["tokens"].append(token_bytes[position])
                if scales is not None:
                    columns["token_scale"].append(float(scales[position]))
                if pooled is not None:
                    columns["pooled"].append(pooled[position].tobytes())
    return EncodedTexts(pa.Table.from_pydict(columns, schema=schema), encoded, truncated)
