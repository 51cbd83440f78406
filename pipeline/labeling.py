"""Teacher labeling, engine-free: what both engines' ``label_pairs`` run on their workers.

* :class:`LabelSettings`: how the teacher runs (decided once by the job);
* :func:`load_labeling_teacher`: the teacher as the job runs it, checked against the fingerprint
  taken at the start;
* :func:`label_window`: a sort window of pairs -> distillation rows (the set's columns: see
  ``pipeline/beam/label.py``);
* :func:`relabel`: a previous set's rows -> rows at this run's temperature (``--previous``).

The Beam engine calls them from its DoFns (``pipeline/beam/label.py``), the Spark engine from its
tasks (``pipeline/spark/label.py``), so the two write the same rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from encoders.threads import ThreadPlan
from pipeline.pairs import TextPair, kept_column_values


@dataclass(frozen=True)
class LabelSettings:
    """How the teacher runs on workers."""
    teacher: str
    fingerprint: str
    schema: pa.Schema
    keep: tuple[str, ...] = ()
    temperature: float = 1.0
    batch_size: int = 64
    device: str = "auto"
    max_length: int | None = None
    threads: ThreadPlan = ThreadPlan()   # torch threads per worker process (encoders/threads.py)
    # Pairs tokenized and sorted by length together before being cut into batches; larger
    # windows pad less, at the cost of holding more pairs in memory.
    sort_window: int = 4096


def load_labeling_teacher(settings: LabelSettings):
    """The teacher as the job runs it (``--max-length`` applied), checked against the fingerprint
    taken when the job started, so every worker labels with the very same model."""
    from encoders.teacher import load_teacher
    from pipeline.errors import InputChanged
    from pipeline.models import pinned_model_load

    with pinned_model_load():
        teacher = load_teacher(settings.teacher)
    if settings.max_length is not None:
        teacher.task = teacher.task.replace(max_length=settings.max_length)
    if teacher.fingerprint != settings.fingerprint:
        raise InputChanged(f"teacher {settings.teacher!r} changed while the job ran (fingerprint "
                           f"{teacher.fingerprint[:16]} on this worker, {settings.fingerprint[:16]} at the start); "
                           "rerun the job once the teacher stays put")
    return teacher


def label_window(teacher, pairs: Sequence[TextPair], settings: LabelSettings,
                 on_batch: Callable[[int], None] | None = None) -> tuple[pa.Table, int]:
    """One sort window of pairs -> (their distillation rows, in input order; how many were
    truncated). The pairs are tokenized together and run sorted by token count
    (``CrossEncoder.predict``), so each batch pads only to its own longest pair. ``on_batch``:
    called with each batch's pair count (progress: a window of thousands takes minutes)."""
    from encoders.teacher import soft_labels

    tokenized = teacher.tokenize([p.left for p in pairs], [p.right for p in pairs])
    logits = teacher.predict(tokenized, settings.batch_size, on_batch=on_batch)     # (P, C) float32
    soft = soft_labels(logits, settings.temperature)                                 # (P,) or (P, C)
    truncated = [t.truncated for t in tokenized]
    data: dict[str, Any] = {"left_id": [p.left_id for p in pairs], "right_id": [p.right_id for p in pairs],
                            "left": [p.left for p in pairs], "right": [p.right for p in pairs]}
    if logits.shape[1] == 1:
        data["logit"], data["soft_label"] = logits[:, 0], soft
    else:
        data["logits"], data["soft_labels"] = list(logits), list(soft)
    data["truncated"] = truncated
    for position, name in enumerate(settings.keep):
        data[name] = kept_column_values([p.kept[position] for p in pairs], settings.schema.field(name))
    return pa.Table.from_pydict(data, schema=settings.schema), sum(truncated)


def relabel(table: pa.Table, schema: pa.Schema, temperature: float) -> pa.Table:
    """Previous distillation rows -> rows of ``schema``, soft labels recomputed from their stored
    logits at ``temperature`` (the previous run may have used another T)."""
    from encoders.teacher import soft_labels

    if table.num_rows == 0:
        return schema.empty_table()
    columns = {name: table.column(name) for name in schema.names if name in table.column_names}
    if "logit" in schema.names:
        logits = table.column("logit").to_numpy(zero_copy_only=False).astype(np.float32)[:, None]
        columns["soft_label"] = pa.array(soft_labels(logits, temperature), pa.float32())
    else:
        logits = np.array(table.column("logits").to_pylist(), dtype=np.float32).reshape(table.num_rows, -1)
        columns["soft_labels"] = pa.array(list(soft_labels(logits, temperature)), pa.list_(pa.float32()))
    return pa.Table.from_pydict({name: columns[name] for name in schema.names}, schema=schema)
