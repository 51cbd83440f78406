"""What produced an output: the one place that says it, for Parquet tables and ``_SUMMARY.json``.

Every table pairscore writes carries Parquet key-value metadata (CLI contract), readable without
pairscore (``pyarrow.parquet.read_schema(path).metadata``, DuckDB ``parquet_kv_metadata``):

==========================  ==================================================================
``pairscore.version``       the installed pairscore's version (package metadata, set in setup.py)
``pairscore.job``           the job that wrote the table, e.g. ``score_pairs``
``pairscore.models``        JSON: model role -> ``{"fingerprint": ..., "path": ...}``; the path
                            resolved (absolute, symlinks followed) for a local model, as given
                            for a remote one or a hub id
``pairscore.score``         what ``score`` means (tables with a score only): a cosine in [-1, 1]
                            or a probability in [0, 1]
``pairscore.created_at``    the UTC time of the run, ISO 8601
==========================  ==================================================================

Standard library only (it handles pyarrow schemas without importing pyarrow): the command line
imports it for ``pairscore --version``.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from importlib import metadata as package_metadata
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import pyarrow as pa

PACKAGE = "pairscore"
KEY_PREFIX = "pairscore."

# What ``score`` means, by kind of model (``pairscore.score``).
COSINE_SCORE = "cosine similarity in [-1, 1] (zero-training baseline, not a probability)"
PROBABILITY_SCORE = "probability in [0, 1]: sigmoid of the model's logit"
CLASS_PROBABILITY_SCORE = "probability in [0, 1] of the last class; probs: the softmax probabilities of every class"


def version() -> str:
    """The installed pairscore's version, from its package metadata (the one place it is set is
    setup.py); ``0+unknown`` for a checkout that was never installed."""
    try:
        return package_metadata.version(PACKAGE)
    except package_metadata.PackageNotFoundError:
        return "0+unknown"


def utc_timestamp(seconds: float | None = None) -> str:
    """``2026-12-05T09:14:03.123456Z`` for ``seconds`` since the epoch (default: now)."""
    moment = datetime.now(timezone.utc) if seconds is None else datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def resolved_path(path: str | None) -> str | None:
    """A local path made absolute with symlinks followed; a remote path (``gs://``), a hub id or
    ``None`` as they are."""
    if path is None or "://" in path or not os.path.exists(path):
        return path
    return os.path.realpath(path)


def table_metadata(job: str, models: Mapping[str, tuple[str, str | None]] | None = None,
                   score: str | None = None, created_at: str | None = None) -> dict[str, str]:
    """The key-value metadata of every table one run writes.

    Args:
        job: the job's name (``score_pairs`` ...).
        models: role -> (fingerprint, path as given); the path is resolved here.
        score: what the table's ``score`` column means (one of the ``*_SCORE`` texts), if it has one.
        created_at: the run's UTC time (default: now).
    """
    described = {role: {"fingerprint": fingerprint, "path": resolved_path(path)}
                 for role, (fingerprint, path) in (models or {}).items()}
    values = {"version": version(), "job": job, "models": json.dumps(described, sort_keys=True),
              "created_at": created_at or utc_timestamp()}
    if score is not None:
        values["score"] = score
    return {KEY_PREFIX + key: value for key, value in values.items()}


def stamped(schema: pa.Schema, provenance: Mapping[str, str] | None) -> pa.Schema:
    """``schema`` with ``provenance`` added to its metadata (what a Parquet writer stores in the
    file's footer); unchanged without one. Schemas compare equal with or without it."""
    if not provenance:
        return schema
    return schema.with_metadata({**(schema.metadata or {}), **{k.encode(): v.encode() for k, v in provenance.items()}})


def read_provenance(schema: pa.Schema) -> dict[str, str]:
    """The ``pairscore.*`` metadata of a table's schema (e.g. ``pyarrow.parquet.read_schema(path)``)."""
    return {key.decode(): value.decode() for key, value in (schema.metadata or {}).items()
            if key.decode().startswith(KEY_PREFIX)}
