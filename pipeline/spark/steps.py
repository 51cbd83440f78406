"""What every Spark step of pairscore shares: work items, the result rows of successful attempts,
and cleaning staging down to their files (see ``tasks.py`` for the attempt-unique names)."""
from __future__ import annotations

import json
import posixpath
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import files
from pipeline.spark import tasks
from pipeline.store import is_part_file_name


@dataclass
class SparkRun:
    """What a run's steps produced: the result rows of successful attempts (their files are the
    run's), and counts."""
    results: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, rows: list[dict]) -> list[dict]:
        self.results += rows
        return rows

    def paths(self, kind: str, side: str | None = None) -> tuple[str, ...]:
        return tuple(sorted(r["path"] for r in self.results
                            if r["kind"] == kind and (side is None or r["side"] == side)))

    def keep_only_results(self, directories: Sequence[str]) -> None:
        """Delete every part file in ``directories`` that no successful attempt reported (a failed
        attempt's, a speculative loser's), so that the commit moves one copy of every row."""
        wanted = {r["path"] for r in self.results if r["path"]}
        for directory in directories:
            for path in files.list_files(directory):
                if path not in wanted and is_part_file_name(posixpath.basename(path)):
                    files.delete(path)

    def dead_letters(self) -> dict[str, dict[str, int]]:
        """Counter prefix (``pairs.``, ``left_texts.`` ...) -> reason -> count, read from the kept
        dead-letter files themselves."""
        letters: dict[str, dict[str, int]] = defaultdict(dict)
        for row in self.results:
            if row["kind"] != "dead_letter":
                continue
            with files.open_input(row["path"]) as handle:
                reasons = pq.read_table(handle, columns=["reason"]).column("reason").to_pylist()
            for reason in reasons:
                letters[row["side"]][reason] = letters[row["side"]].get(reason, 0) + 1
        return {prefix: dict(sorted(found.items())) for prefix, found in letters.items()}

    def footer_rows(self, kind: str, side: str | None = None) -> int:
        """Rows of the kept files of ``kind``, from their footers."""
        total = 0
        for path in self.paths(kind, side):
            with files.open_input(path) as handle:
                total += pq.ParquetFile(handle).metadata.num_rows
        return total


def narrow(kind: pa.DataType) -> pa.DataType:
    """Spark hands strings and binaries as large types; pairscore's tables use the plain ones."""
    return {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}.get(kind, kind)


def items(spark, count: int):
    """A DataFrame of ``count`` work items (their indices), one per partition."""
    return spark.sparkContext.parallelize([(i,) for i in range(count)], max(1, count)).toDF(tasks.ITEMS_DDL)


def collect(frame) -> list[dict]:
    """A step's result rows (``tasks.RESULT_SCHEMA``): one per file of a successful attempt."""
    return [{**row.asDict(), "info": json.loads(row["info"])} for row in frame.collect()]


def refuse_reserved_kept(keep: Sequence[str]) -> None:
    """Refuse kept columns named like the columns score-pairs' Spark steps add beside them (a dead
    letter's reason, detail, source and row; a pair's file and position), in one line. Labeling
    carries its kept columns by position and needs no such rule; scoring does not yet."""
    from pipeline.dead_letters import DEAD_LETTER_SCHEMA
    from pipeline.errors import FlagError
    from pipeline.pair_checks import FILE_COLUMN, POSITION_COLUMN

    reserved = (*DEAD_LETTER_SCHEMA.names, FILE_COLUMN, POSITION_COLUMN)
    clash = [name for name in keep if name in reserved]
    if clash:
        raise FlagError(f"--keep-cols {', '.join(map(repr, clash))} is not allowed with --engine spark: the Spark "
                        f"engine's scoring steps use columns named {', '.join(reserved)}; rename the column in the "
                        "input or use --engine beam")
