"""The training and evaluation data sets, read into memory: labeled pairs (teacher training, dev,
evaluation) and distillation sets (``label_pairs`` output, the student's training data), and
the distillation set's format: its schema, its manifest and what makes two pairs the same; the
text pools ``build_candidates`` mines and the candidates table it writes (:func:`write_candidates`).

Rows that cannot be used are kept as dead letters with a reason (the readers' and
pair contract's, ``pipeline/pairs.py``, checked by ``pipeline.pair_checks``, plus ``null_label`` and ``invalid_label``); the
jobs write them and count them in their summaries.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from encoders.teacher import TeacherTask
from pipeline import dead_letters as dl
from pipeline.choices import DISTILLATION_COLUMNS
from pipeline.dead_letters import DeadLetter
from pipeline.pair_checks import check_read_items
from pipeline.pairs import PairColumns, TextPair
from pipeline.provenance import stamped
from pipeline.readers import InputError, InputFile, SourcedRow, check_columns, read_rows
from pipeline.store import MANIFEST_FILE
from pipeline.text_checks import TextColumns, TextRow, extract_text, resolve_id
from pipeline.text_ids import text_id
from pipeline.writers import write_json_file, write_parquet_file

if TYPE_CHECKING:
    import torch

# Soft labels of a k-class teacher must sum to 1 within this (they are float32 softmax outputs).
SOFT_LABEL_SUM_TOLERANCE = 1e-3
# The candidates table ``build_candidates`` writes (``label_pairs`` reads it as pairs).
CANDIDATE_SCHEMA = pa.schema([
    ("left", pa.string()), ("right", pa.string()), ("left_id", pa.string()), ("right_id", pa.string()),
    ("source", pa.string()),        # 'knn' | 'random'
    ("similarity", pa.float32()),   # cosine of the two sentence embeddings
    ("rank", pa.int32()),           # 1..k among the left text's neighbours; null for random pairs
])
CANDIDATE_SOURCES = ("knn", "random")
# The distillation set's format (``label_pairs`` writes it: pipeline/beam/label.py).
DISTILLATION_FORMAT = "pairscore-distillation"
SCHEMA_VERSION = 1
# Columns every distillation set has (kept columns may not reuse these names).
BASE_COLUMNS = DISTILLATION_COLUMNS


# --------------------------------------------------------------------------- labeled pairs

@dataclass
class LabeledPairs:
    """The usable pairs of one split (lefts, rights, targets: P each) and what was skipped."""
    lefts: list[str] = field(default_factory=list)
    rights: list[str] = field(default_factory=list)
    targets: list[float] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)   # the --group-col value of each pair, when asked for
    rows_read: int = 0
    skipped: list[DeadLetter] = field(default_factory=list)


def _usable_pairs(items: Iterable[SourcedRow | DeadLetter], columns: PairColumns,
                  into: LabeledPairs | DistillationSet) -> Iterator[tuple[SourcedRow, TextPair]]:
    """What read_rows yields -> (row, its pair) for the rows whose pair is usable (checked in
    columnar batches: :func:`pipeline.pair_checks.check_read_items`); every item is counted in
    ``into.rows_read`` and every dead letter, the reader's or the pair's, kept in ``into.skipped``."""
    for item, pair in check_read_items(items, columns):
        into.rows_read += 1
        letter = item if isinstance(item, DeadLetter) else pair if isinstance(pair, DeadLetter) else None
        if letter is not None:
            into.skipped.append(letter)
            continue
        yield item, pair


def read_labeled_pairs(files: Sequence[InputFile], columns: PairColumns, label_col: str,
                       task: TeacherTask, limit: int | None = None, group_col: str | None = None) -> LabeledPairs:
    """Read labeled pairs; rows with an unusable side or label are skipped as dead letters.

    With ``group_col`` each pair's query (e.g. ``qid``) is kept, as a string, in ``groups``; a row
    without one is skipped (``null_id``): it cannot be ranked among its query's candidates.

    Reasons: the reader's (``invalid_json``, ...), the pair's (``left_empty_text``,
    ``right_null_text``, ...), ``null_label`` (absent, null or empty) and ``invalid_label``
    (not a number the task allows: see ``TeacherTask.target``). ``limit`` stops after that many rows.
    """
    pairs = LabeledPairs()
    items = itertools.islice((item for file in files for item in read_rows(file)), limit)
    for item, pair in _usable_pairs(items, columns, pairs):
        label = item.fields.get(label_col)
        if label is None or (isinstance(label, str) and not label.strip()):
            state = "absent from this row" if label_col not in item.fields else "null or empty"
            pairs.skipped.append(DeadLetter(dl.REASON_NULL_LABEL, f"label column {label_col!r} is {state}",
                                            item.source, item.fields))
            continue
        try:
            target = task.target(label)
        except ValueError as err:
            pairs.skipped.append(DeadLetter(dl.REASON_INVALID_LABEL, f"label column {label_col!r}: {err}",
                                            item.source, item.fields))
            continue
        if group_col is not None:
            group = item.fields.get(group_col)
            if group is None or (isinstance(group, str) and not group.strip()) or isinstance(group, (dict, list)):
                pairs.skipped.append(DeadLetter(dl.REASON_NULL_ID, f"group column {group_col!r} is null, empty "
                                                "or not a scalar", item.source, item.fields))
                continue
            pairs.groups.append(str(group))
        pairs.lefts.append(pair.left)
        pairs.rights.append(pair.right)
        pairs.targets.append(target)
    return pairs


def training_examples(pairs: LabeledPairs, swap: bool) -> tuple[list[str], list[str], list[float]]:
    """(lefts, rights, targets) to train on: each pair, and with ``swap`` each pair again with its
    texts exchanged (for symmetric tasks: the teacher should not care which text comes first)."""
    if not swap:
        return pairs.lefts, pairs.rights, pairs.targets
    return pairs.lefts + pairs.rights, pairs.rights + pairs.lefts, pairs.targets + pairs.targets


# --------------------------------------------------------------------------- distillation sets

@dataclass
class DistillationSet:
    """The usable rows of the distillation set (P each) and what was skipped.

    soft:   (P, C) float32 teacher soft labels (C = 1: sigmoid(z / T); C = k: softmax(z / T)).
    logits: (P, C) float32 teacher logits, or None when the set has none (only ``--loss mse`` needs them).
    human:  (P,) float32 human targets as ``TeacherTask.target`` gives them, NaN where a pair has none.
    """
    lefts: list[str] = field(default_factory=list)
    rights: list[str] = field(default_factory=list)
    soft: list[list[float]] = field(default_factory=list)
    logits: list[list[float]] | None = field(default_factory=list)
    human: list[float] = field(default_factory=list)
    rows_read: int = 0
    skipped: list[DeadLetter] = field(default_factory=list)


def distillation_columns(files: Sequence[InputFile], columns: PairColumns, need_logits: bool) -> tuple[str, str]:
    """(soft label column, logit column) of a distillation set: ``soft_label`` / ``logit`` for
    one-output teachers, ``soft_labels`` / ``logits`` for k classes (pipeline/beam/label.py). Checked
    in every file before anything is read."""
    problems = []
    for soft, logit in (("soft_label", "logit"), ("soft_labels", "logits")):
        required = [*columns.required(), soft] + ([logit] if need_logits else [])
        try:
            check_columns(files, required)
            return soft, logit
        except InputError as err:
            problems.append(str(err))
    raise InputError(f"--distill is not a distillation set (a label_pairs output with soft_label and logit, or "
                     f"soft_labels and logits, columns{' -- --loss mse needs the logits' if need_logits else ''}): "
                     f"{problems[0]}")


def first_width(files: Sequence[InputFile], soft_col: str) -> int:
    """C of a k-class distillation set: the length of the first non-null ``soft_labels`` list."""
    for file in files:
        for item in read_rows(file, [soft_col]):
            if not isinstance(item, DeadLetter) and isinstance(item.fields.get(soft_col), (list, tuple)):
                return len(item.fields[soft_col])
    raise InputError(f"--distill has no row with a {soft_col!r} list: no soft labels to learn from")


def _numbers(value: Any, column: str, width: int) -> list[float]:
    """A scalar or list cell as ``width`` finite floats (numeric strings allowed: CSV inputs);
    ValueError saying what is wrong."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if len(values) != width:
        raise ValueError(f"{column} has {len(values)} values; this set has {width} per pair")
    out = []
    for item in values:
        try:
            number = float(item.strip() if isinstance(item, str) else item)
        except (TypeError, ValueError):
            raise ValueError(f"{column} value {item!r:.60} is not a number") from None
        if isinstance(item, bool) or not math.isfinite(number):
            raise ValueError(f"{column} value {item!r:.60} is not a finite number")
        out.append(number)
    return out


def read_distillation_set(files: Sequence[InputFile], columns: PairColumns, soft_col: str, logit_col: str,
                          width: int, task: TeacherTask, human_col: str | None = None, limit: int | None = None
                          ) -> DistillationSet:
    """Read a distillation set; rows that cannot be trained on are skipped as dead letters.

    Reasons: the reader's (``invalid_json``, ...), the pair's (``left_empty_text``, ...),
    ``null_label`` (the soft label is absent or null) and ``invalid_label`` (a soft label outside
    [0, 1], k soft labels that do not sum to 1, a logit that is not a finite number, a human label
    the task does not allow). A null human label is not an error: the pair learns from the
    teacher alone. ``width``: C, soft labels per pair; ``task`` reads the human labels.
    """
    data = DistillationSet()

    def wanted(file: InputFile) -> list[str]:
        # The logit and human label columns may be absent from a file (mined pairs have no human
        # label); read only what it has, and absent values count as null.
        return [*columns.required(), soft_col, *present_columns(file, [logit_col] + ([human_col] if human_col else []))]

    items = itertools.islice((item for file in files for item in read_rows(file, wanted(file))), limit)
    for item, pair in _usable_pairs(items, columns, data):
        fields = item.fields
        if fields.get(soft_col) is None:
            data.skipped.append(DeadLetter(dl.REASON_NULL_LABEL, f"soft label column {soft_col!r} is null or "
                                           "absent", item.source, fields))
            continue
        try:
            soft = _numbers(fields[soft_col], soft_col, width)
            if not all(0.0 <= p <= 1.0 for p in soft):
                raise ValueError(f"{soft_col} {fields[soft_col]!r:.60} is outside [0, 1]")
            if len(soft) > 1 and abs(sum(soft) - 1.0) > SOFT_LABEL_SUM_TOLERANCE:
                raise ValueError(f"{soft_col} {fields[soft_col]!r:.60} does not sum to 1")
            logit = None if fields.get(logit_col) is None else _numbers(fields[logit_col], logit_col, len(soft))
            human = math.nan
            if human_col and not _is_blank(fields.get(human_col)):
                human = task.target(fields[human_col])
        except ValueError as err:
            data.skipped.append(DeadLetter(dl.REASON_INVALID_LABEL, str(err), item.source, fields))
            continue
        data.lefts.append(pair.left)
        data.rights.append(pair.right)
        data.soft.append(soft)
        if data.logits is not None:
            if logit is None:
                data.logits = None  # some row has no logit: the set has none to train on
            else:
                data.logits.append(logit)
        data.human.append(human)
    return _without_empty_logits(data)


def present_columns(file: InputFile, names: Sequence[str]) -> list[str]:
    """Those of ``names`` that ``file`` has as columns."""
    present = []
    for name in names:
        try:
            check_columns([file], [name])
            present.append(name)
        except InputError:
            pass
    return present


def _without_empty_logits(data: DistillationSet) -> DistillationSet:
    if data.logits is not None and len(data.logits) != len(data.soft):
        data.logits = None
    return data


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _read_manifest(path: str, flag: str) -> dict[str, Any]:
    """A distillation set's manifest as a dict; InputError naming ``flag`` and the file when it is
    not a JSON object (a damaged or foreign file is the user's to fix, not a bug)."""
    try:
        with FileSystems.open(path) as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{flag}: {path} is not a readable {MANIFEST_FILE} ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{flag}: {path} holds a JSON {type(data).__name__}, not the object a {MANIFEST_FILE} holds")
    return data


def distillation_task(paths: Sequence[str]) -> TeacherTask | None:
    """The teacher's task from ``_MANIFEST.json`` of the --distill directories (label_pairs writes
    it), so the dev labels and human labels are read as the teacher's were; None when no
    directory has one. Directories labeled for different tasks are refused."""
    tasks = {}
    for path in paths:
        manifest = FileSystems.join(path.rstrip("/"), MANIFEST_FILE)
        if "*" in path or not FileSystems.exists(manifest):
            continue
        data = _read_manifest(manifest, "--distill")
        if data.get("format") == DISTILLATION_FORMAT and isinstance(data.get("task"), dict):
            task = TeacherTask.from_dict(data["task"])
            # The teacher's max length does not change what a label means.
            meaning = {k: v for k, v in task.to_dict().items() if k != "max_length"}
            tasks[json.dumps(meaning, sort_keys=True)] = (task, path)
    if len(tasks) > 1:
        raise InputError(f"--distill sets were labeled for different tasks ({', '.join(p for _, p in tasks.values())}); "
                         "give --task to say how the dev labels are read")
    return next(iter(tasks.values()))[0] if tasks else None


def pair_key(left: str, right: str) -> str:
    """What makes two pairs "the same pair" for ``--previous``: the two texts, in order."""
    return text_id(left) + text_id(right)


def distillation_schema(num_outputs: int, kept: Sequence[pa.Field]) -> pa.Schema:
    """The output schema for a teacher with ``num_outputs`` logits and the kept columns' fields."""
    fields = [pa.field("left_id", pa.string()), pa.field("right_id", pa.string()),
              pa.field("left", pa.string()), pa.field("right", pa.string())]
    if num_outputs == 1:
        fields += [pa.field("logit", pa.float32()), pa.field("soft_label", pa.float32())]
    else:
        fields += [pa.field("logits", pa.list_(pa.float32())), pa.field("soft_labels", pa.list_(pa.float32()))]
    return pa.schema([*fields, pa.field("truncated", pa.bool_()), *kept])


@dataclass(frozen=True)
class DistillationManifest:
    """``DIR/_MANIFEST.json`` of a distillation set: which teacher labeled it, at which temperature,
    and its columns, so that a later ``--previous`` run (and the student trainer) can check it."""
    teacher_fingerprint: str
    teacher: str
    task: dict[str, Any]
    num_outputs: int
    temperature: float
    columns: dict[str, str]
    kept_columns: list[str]
    rows: int
    files: list[str]
    previous: str | None = None
    format: str = DISTILLATION_FORMAT
    schema_version: int = SCHEMA_VERSION
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def write(self, directory: str) -> None:
        write_json_file(FileSystems.join(directory, MANIFEST_FILE), self.to_json() + "\n")

    @classmethod
    def read(cls, directory: str) -> "DistillationManifest":
        path = FileSystems.join(directory, MANIFEST_FILE)
        if not FileSystems.exists(path):
            raise InputError(f"--previous {directory!r} is not a label_pairs output: it has no {MANIFEST_FILE}")
        data = _read_manifest(path, "--previous")
        if data.get("format") != DISTILLATION_FORMAT or data.get("schema_version") != SCHEMA_VERSION:
            raise InputError(f"--previous {directory!r}: {MANIFEST_FILE} is not a distillation set of schema "
                             f"version {SCHEMA_VERSION} (format {data.get('format')!r}, version "
                             f"{data.get('schema_version')!r})")
        return cls(**data)


def schema_columns(schema: pa.Schema) -> dict[str, str]:
    return {f.name: str(f.type) for f in schema}


def previous_set_files(directory: str, fingerprint: str, schema: pa.Schema) -> list[str]:
    """The part files of ``--previous`` ``directory``, a distillation set that the teacher of
    ``fingerprint`` labeled with this run's columns (``schema``); InputError naming what differs."""
    from pipeline.store import store_files

    manifest = DistillationManifest.read(directory)
    if manifest.teacher_fingerprint != fingerprint:
        raise InputError(f"--previous {directory!r} was labeled by another teacher (fingerprint "
                         f"{manifest.teacher_fingerprint[:16]}, this one {fingerprint[:16]}): its labels cannot be "
                         "reused; drop --previous to label every pair with this teacher")
    if manifest.columns != schema_columns(schema):
        raise InputError(f"--previous {directory!r} has columns {manifest.columns} but this run writes "
                         f"{schema_columns(schema)}: use the same --keep-cols (and input column types) as the "
                         "previous run")
    files = store_files(directory)
    if not files:
        raise InputError(f"--previous {directory!r} holds no part-*.parquet files")
    return files


@dataclass
class TextPool:
    """The unique texts of one side (P each) and how every row read was accounted for.

    With an id column, texts that several ids share appear once, under their smallest id.
    """
    texts: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    rows_read: int = 0
    rows_kept: int = 0
    rows_duplicate: int = 0
    dead: list[DeadLetter] = field(default_factory=list)


def read_text_pool(files: Sequence[InputFile], columns: TextColumns) -> TextPool:
    """Read, check and dedupe one side's texts with stage one's rules (extract_text, resolve_id):
    rows read = kept (one per unique id) + duplicates + dead letters."""
    pool = TextPool()
    by_id: dict[str, list[TextRow]] = {}
    for file in files:
        for item in read_rows(file):
            pool.rows_read += 1
            result = item if isinstance(item, DeadLetter) else extract_text(item, columns)
            if isinstance(result, DeadLetter):
                pool.dead.append(result)
            else:
                by_id.setdefault(result.id, []).append(result)
    ids_of_text: dict[str, list[str]] = {}
    for id_, rows in by_id.items():
        unique, duplicates, rejected = resolve_id(id_, rows)
        pool.rows_duplicate += duplicates
        pool.dead += rejected
        if unique is not None:
            pool.rows_kept += 1
            ids_of_text.setdefault(unique.text, []).append(id_)
    pool.texts = list(ids_of_text)
    pool.ids = [min(ids) for ids in ids_of_text.values()]
    return pool


def write_candidates(path: str, left: TextPool, right: TextPool, embeddings: dict[str, torch.Tensor],
                     knn_sims: np.ndarray, knn_index: np.ndarray, random_index: list[np.ndarray],
                     provenance: dict[str, str] | None = None, rows_per_group: int = 65536
                     ) -> dict[str, dict[str, float]]:
    """Write each left text's neighbours (by rank), then its random pairs, as zstd Parquet row groups.

    knn_sims, knn_index: (NL, k') from :func:`encoders.neighbours.top_k_neighbours`; random_index: NL arrays of right
    indices. provenance: the table's key-value metadata (pipeline/provenance.py). Returns per source the pairs written and their mean similarity.
    """
    left_emb, right_emb = embeddings["left"].cpu().numpy(), embeddings["right"].cpu().numpy()
    totals = {source: [0, 0.0] for source in CANDIDATE_SOURCES}

    def row_groups():
        rows: list[tuple] = []  # (left index, right index, source, similarity, rank)
        for i in range(len(left.texts)):
            for rank, (j, similarity) in enumerate(zip(knn_index[i], knn_sims[i]), start=1):
                if j >= 0:
                    rows.append((i, int(j), "knn", float(similarity), rank))
            picks = random_index[i]
            rows.extend((i, int(j), "random", float(similarity), None)
                        for j, similarity in zip(picks, right_emb[picks] @ left_emb[i]))
            if len(rows) >= rows_per_group or (i == len(left.texts) - 1 and rows):
                for row in rows:
                    totals[row[2]][0] += 1
                    totals[row[2]][1] += row[3]
                lefts, rights, source, similarity, rank = zip(*rows)
                yield pa.Table.from_pydict({
                    "left": [left.texts[x] for x in lefts], "right": [right.texts[x] for x in rights],
                    "left_id": [left.ids[x] for x in lefts], "right_id": [right.ids[x] for x in rights],
                    "source": list(source), "similarity": list(similarity), "rank": list(rank)},
                    schema=CANDIDATE_SCHEMA)
                rows = []

    write_parquet_file(path, stamped(CANDIDATE_SCHEMA, provenance), row_groups())
    return {source: {"pairs": count, "mean_similarity": round(total / count, 4) if count else None}
            for source, (count, total) in totals.items()}

def check_human_label_column(files: Sequence[InputFile], column: str) -> None:
    """The human label column may be absent from some files (mined pairs have no human label) but
    must be in at least one: a misspelt name would otherwise silently train on soft labels alone."""
    if not any(present_columns(file, [column]) for file in files):
        raise InputError(f"--human-label-col {column!r}: no --distill file has that column (label_pairs keeps "
                         f"it with --keep-cols {column})")
