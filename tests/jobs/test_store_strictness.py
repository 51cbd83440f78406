"""``score_pairs --store``: a store is used only when it is exactly what this run needs.

Every case fails before the pipeline starts (no output directory is made), with exit status 2 and
one line naming the file and the problem: swapped or mislabelled sides, any manifest field that
differs from the model, unknown keys, invalid JSON, file lists that point outside the store,
missing, truncated or foreign part files, and directories that are not two-side stores at all.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from encoders.checkpoint import build_student, save_student
from encoders.file_fingerprint import file_sha256
from jobs import score_pairs
from jobs.score_pairs import ScorePairsJob, run
from pipeline.store import StoreError, read_store

PAIRS = [{"left": f"question {i}", "right": f"answer {i % 3}"} for i in range(6)]


@pytest.fixture(scope="module")
def square_checkpoint(tmp_path_factory, tiny_student_config) -> str:
    """A tiny student whose two sides have the same layout (N = M, one max length), so that
    nothing but the manifest's ``side`` tells a left store from a right one."""
    target = tmp_path_factory.mktemp("square-student")
    config = tiny_student_config.replace(right_tokens=4, right_max_length=16)
    save_student(build_student(config, seed=5), target)
    return str(target)


@pytest.fixture(scope="module")
def night_one(tmp_path_factory, square_checkpoint) -> Path:
    """A finished run: OUT/store/{left,right} is a good two-side store."""
    tmp = tmp_path_factory.mktemp("night-one")
    pairs = tmp / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    run(ScorePairsJob(pairs=(str(pairs),), output=str(tmp / "out"), model_dir=square_checkpoint), [], argv=[])
    return tmp


@pytest.fixture()
def store(tmp_path, night_one) -> Path:
    """A private copy of night one's store, to edit."""
    return Path(shutil.copytree(night_one / "out" / "store", tmp_path / "store"))


def manifest_of(store: Path, side: str) -> dict:
    return json.loads((store / side / "_MANIFEST.json").read_text())


def edit_manifest(store: Path, which: str, **changes) -> Path:
    path = store / which / "_MANIFEST.json"
    path.write_text(json.dumps({**manifest_of(store, which), **changes}))
    return path


def as_version_1(store: Path, side: str) -> None:
    """Rewrite ``side``'s manifest as schema version 1 (no part sizes or hashes): a store written
    before version 2, which is read and pinned by what its files hold. Tests that damage a part's
    rows use it, so that the check named in the test is reached rather than the version 2 hashes."""
    data = manifest_of(store, side)
    for key in ("part_bytes", "part_sha256", "model_files_fingerprint"):
        del data[key]
    (store / side / "_MANIFEST.json").write_text(json.dumps({**data, "schema_version": 1}))


def refused(night_one: Path, tmp_path: Path, checkpoint: str, store: Path | str) -> str:
    """Run with ``--store store`` through the command line; the one-line error it exits 2 with."""
    output = tmp_path / "tonight"
    result = CliRunner().invoke(score_pairs.main, ["--pairs", str(night_one / "pairs.jsonl"), "--model", checkpoint,
                                                   "--store", str(store), "--output", str(output)])
    assert result.exit_code == 2, result.output
    assert not output.exists(), "the run must fail before anything is written"
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# ------------------------------------------------------------------- sides and manifest fields

def test_swapped_sides_are_refused_naming_both(tmp_path, night_one, square_checkpoint, store):
    (store / "left").rename(store / "tmp")
    (store / "right").rename(store / "left")
    (store / "tmp").rename(store / "right")
    message = refused(night_one, tmp_path, square_checkpoint, store)
    assert "sides swapped" in message
    assert f"{store / 'left' / '_MANIFEST.json'} says side 'right'" in message
    assert f"{store / 'right' / '_MANIFEST.json'} says side 'left'" in message


def test_a_store_of_the_other_side_is_refused(tmp_path, night_one, square_checkpoint, store):
    shutil.rmtree(store / "right")
    shutil.copytree(store / "left", store / "right")   # a left store where the right one belongs
    message = refused(night_one, tmp_path, square_checkpoint, store)
    assert f"{store / 'right' / '_MANIFEST.json'} says side 'left', but --store uses it as the right store" in message


@pytest.mark.parametrize("field, value, expected", [
    ("tokens_kept", 5, "tokens kept 5 != 4"),
    ("dim", 16, "dim 16 != 8"),
    ("pooled_dim", None, "pooled dim None != 32"),
    ("token_selection", "last", "token selection last != "),
    ("max_length", 99, "max length 99 != 16"),
    ("encoder", "another-encoder", "encoder another-encoder != "),
    ("model_fingerprint", "0" * 64, "model fingerprint 0000000000000000 != this model's"),
])
def test_every_model_field_is_checked(tmp_path, night_one, square_checkpoint, store, field, value, expected):
    edit_manifest(store, "right", **{field: value})
    message = refused(night_one, tmp_path, square_checkpoint, store)
    assert f"store {str(store / 'right')!r} was written by another model" in message and expected in message


@pytest.mark.parametrize("changes, expected", [
    ({"dtype": "float8"}, "dtype is 'float8', expected 'float16' or 'int8'"),
    ({"rows": -1}, "rows is -1, expected an integer >= 0"),
    ({"tokens_kept": "4"}, "tokens_kept is '4', expected an integer >= 1"),
    ({"files": "part-0.parquet"}, "files is 'part-0.parquet', expected a list of file names"),
    ({"side": "both"}, "side is 'both', expected 'left' or 'right'"),
    ({"schema_version": 3}, "schema version 3 is not supported"),
])
def test_invalid_manifest_values_name_the_field(tmp_path, night_one, square_checkpoint, store, changes, expected):
    path = edit_manifest(store, "left", **changes)
    message = refused(night_one, tmp_path, square_checkpoint, store)
    assert f"store manifest {path}" in message and expected in message


def test_unknown_and_missing_manifest_keys_are_named(tmp_path, night_one, square_checkpoint, store):
    path = edit_manifest(store, "left", comment="hand-edited")
    message = refused(night_one, tmp_path, square_checkpoint, store)
    assert f"store manifest {path} has unknown key(s) 'comment'" in message
    data = manifest_of(store, "left")
    del data["comment"], data["encoder"]
    path.write_text(json.dumps(data))
    assert "missing key(s) 'encoder'" in refused(night_one, tmp_path, square_checkpoint, store)


def test_invalid_json_names_the_manifest(tmp_path, night_one, square_checkpoint, store):
    path = store / "right" / "_MANIFEST.json"
    path.write_text(path.read_text()[:-20])
    message = refused(night_one, tmp_path, square_checkpoint, store)
    assert f"store manifest {path} is not valid JSON" in message


# ------------------------------------------------------------------- files stay inside the store

@pytest.mark.parametrize("entry", ["../../x", "../../part-x.parquet", "/etc/passwd", "sub/part-0.parquet",
                                   "C:part-0.parquet", "_SUMMARY.json"])
def test_files_outside_the_store_are_never_followed(tmp_path, night_one, square_checkpoint, store, entry):
    # A real part file where the escaping entry points, so following it would "work".
    outside = tmp_path / "part-x.parquet"
    shutil.copy(next((store / "left").glob("part-*.parquet")), outside)
    path = edit_manifest(store, "left", files=[entry])
    message = refused(night_one, tmp_path, square_checkpoint, store)
    assert f"store manifest {path}" in message and repr(entry) in message
    assert "not a part file of this store" in message
    with pytest.raises(StoreError, match="not a part file of this store"):
        read_store(str(store / "left"))


def test_read_store_reads_only_the_listed_parts(store):
    manifest, table = read_store(str(store / "left"))
    stray = store / "left" / "part-stray.parquet"   # not in the manifest: not part of the store
    shutil.copy(next((store / "left").glob("part-0*.parquet")), stray)
    assert read_store(str(store / "left"))[1].num_rows == table.num_rows == manifest.rows


# ------------------------------------------------------------------- damaged parts

def test_truncated_part_is_named(tmp_path, night_one, square_checkpoint, store):
    part = next((store / "left").glob("part-*.parquet"))
    part.write_bytes(part.read_bytes()[:-40])
    message = refused(night_one, tmp_path, square_checkpoint, store)
    assert f"store part {part} is corrupt or truncated" in message


def test_missing_part_is_named(tmp_path, night_one, square_checkpoint, store):
    part = next((store / "right").glob("part-*.parquet"))
    part.unlink()
    message = refused(night_one, tmp_path, square_checkpoint, store)
    assert f"lists {part.name}, which is missing from {store / 'right'}" in message


def test_part_with_another_layout_is_named(tmp_path, night_one, square_checkpoint, store):
    part = next((store / "right").glob("part-*.parquet"))
    table = pq.read_table(part)
    narrow = table.set_column(table.schema.get_field_index("tokens"), "tokens",
                              pa.array([b[:-2] for b in table.column("tokens").to_pylist()], pa.binary(62)))
    pq.write_table(narrow, part)
    message = refused(night_one, tmp_path, square_checkpoint, store)
    assert f"store part {part} does not match" in message and "fixed_size_binary[62]" in message


def test_a_part_changed_after_the_store_was_written_is_named(tmp_path, night_one, square_checkpoint, store):
    """Version 2 manifests record each part's size and SHA-256: a part rewritten since (here with
    the same rows and schema, so that nothing else would notice) is refused."""
    part = sorted((store / "left").glob("part-*.parquet"))[0]
    pq.write_table(pq.read_table(part), part, compression="snappy")
    message = refused(night_one, tmp_path, square_checkpoint, store)
    assert f"store part {part} is not the file {store / 'left' / '_MANIFEST.json'} records" in message
    assert "the store was changed after it was written" in message


def test_row_count_that_does_not_add_up_is_named(tmp_path, night_one, square_checkpoint, store):
    path = edit_manifest(store, "left", rows=manifest_of(store, "left")["rows"] + 1)
    message = refused(night_one, tmp_path, square_checkpoint, store)
    assert f"store manifest {path} says rows" in message


# ------------------------------------------------------------------- what the rows hold

def _with_value(part: Path, column: str, row: int, value: float) -> None:
    """Rewrite ``part`` with one float16 value of ``column`` in ``row`` set to ``value``."""
    table = pq.read_table(part)
    cells = table.column(column).to_pylist()
    halves = np.frombuffer(cells[row], "<f2").copy()
    halves[len(halves) // 2] = value
    cells[row] = halves.tobytes()
    index = table.schema.get_field_index(column)
    pq.write_table(table.set_column(index, table.schema.field(index), pa.array(cells, table.schema.field(index).type)),
                   part, compression="zstd")


@pytest.mark.parametrize("column,value", [("tokens", np.nan), ("tokens", -np.inf), ("pooled", np.inf)])
def test_non_finite_embeddings_are_refused_naming_the_part(tmp_path, night_one, square_checkpoint, store,
                                                           column, value):
    part = sorted((store / "right").glob("part-*.parquet"))[0]
    id_ = pq.read_table(part).column("id")[1].as_py()
    _with_value(part, column, 1, value)
    as_version_1(store, "right")
    message = refused(night_one, tmp_path, square_checkpoint, store)
    assert f"store part {part} holds embeddings that are not finite" in message
    assert f"id {id_!r}" in message and f"column {column!r}" in message
    # Read directly, and read by a pipeline (a part that changed after the check before the run).
    with pytest.raises(StoreError, match=f"store part {part} holds embeddings that are not finite"):
        read_store(str(store / "right"))
    from pipeline.beam.score import read_store_tables
    from pipeline.store import PartPin
    import apache_beam as beam
    pin = PartPin(str(part), part.stat().st_size, file_sha256(part))
    with pytest.raises(Exception, match="holds embeddings that are not finite"):
        with beam.Pipeline() as pipeline:
            read_store_tables(pipeline, [pin], "Store", batch_rows=1) | beam.Map(lambda t: t)


def test_an_id_in_two_parts_is_refused_naming_both(tmp_path, night_one, square_checkpoint, store):
    side = store / "left"
    part = sorted(side.glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    copy = side / "part-99999-of-99999.parquet"
    pq.write_table(table.slice(2, 1), copy, compression="zstd")   # one row again, in a second part
    manifest = manifest_of(store, "left")
    edit_manifest(store, "left", files=manifest["files"] + [copy.name], rows=manifest["rows"] + 1)
    as_version_1(store, "left")
    id_ = table.column("id")[2].as_py()
    message = refused(night_one, tmp_path, square_checkpoint, store)
    assert f"holds id {id_!r} more than once: in {part} and {copy}" in message
    with pytest.raises(StoreError, match="more than once"):
        read_store(str(side))


def test_ids_that_differ_only_in_a_nul_are_not_repeats(store):
    side = store / "left"
    part = sorted(side.glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    first = table.slice(0, 1)
    pq.write_table(first.set_column(0, table.schema.field(0), pa.array([first.column("id")[0].as_py() + "\x00"])),
                   side / "part-nul.parquet")
    manifest = manifest_of(store, "left")
    edit_manifest(store, "left", files=manifest["files"] + ["part-nul.parquet"], rows=manifest["rows"] + 1)
    as_version_1(store, "left")
    assert read_store(str(side))[1].num_rows == table.num_rows + 1


# ------------------------------------------------------------------- not a store at all

def test_missing_directory(tmp_path, night_one, square_checkpoint):
    message = refused(night_one, tmp_path, square_checkpoint, tmp_path / "no-such-store")
    nowhere = tmp_path / "no-such-store"
    assert f"expected {nowhere / 'left' / '_MANIFEST.json'} and {nowhere / 'right' / '_MANIFEST.json'}" in message
    assert "does not exist" in message and "a first run goes without --store" in message


def test_one_level_too_deep(tmp_path, night_one, square_checkpoint, store):
    message = refused(night_one, tmp_path, square_checkpoint, store / "left")
    assert "one-side 'left' store" in message and f"pass --store {str(store)!r}" in message


def test_job_output_instead_of_its_store(tmp_path, night_one, square_checkpoint):
    message = refused(night_one, tmp_path, square_checkpoint, night_one / "out")
    assert f"pass --store {str(night_one / 'out' / 'store')!r}" in message


def test_deleted_manifest(tmp_path, night_one, square_checkpoint, store):
    (store / "right" / "_MANIFEST.json").unlink()
    message = refused(night_one, tmp_path, square_checkpoint, store)
    assert f"expected {store / 'left' / '_MANIFEST.json'} and {store / 'right' / '_MANIFEST.json'}" in message
    assert f"{store / 'right'} holding part-" in message and "but no _MANIFEST.json" in message


def test_one_side_store_says_how_to_pass_it(tmp_path, night_one, square_checkpoint, store):
    # What encode_texts writes: one store directory with its manifest and parts, no left/ or right/.
    single = Path(shutil.copytree(store / "right", tmp_path / "products-store"))
    message = refused(night_one, tmp_path, square_checkpoint, single)
    assert f"found {single / '_MANIFEST.json'} of a one-side 'right' store" in message
    assert "put this store at DIR/right and a left store at DIR/left, then pass --store DIR" in message


def test_a_good_store_is_still_reused(tmp_path, night_one, square_checkpoint, store):
    summary = run(ScorePairsJob(pairs=(str(night_one / "pairs.jsonl"),), output=str(tmp_path / "tonight"),
                                model_dir=square_checkpoint, store=str(store)), [], argv=[])
    assert summary.counts["left_texts_encoded"] == summary.counts["right_texts_encoded"] == 0
    assert summary.counts["left_texts_reused"] == len({p["left"] for p in PAIRS})


def test_a_directory_without_stores_lists_what_it_holds(tmp_path, night_one, square_checkpoint):
    somewhere = tmp_path / "somewhere"
    (somewhere / "notes").mkdir(parents=True)
    (somewhere / "scores.csv").write_text("x\n")
    message = refused(night_one, tmp_path, square_checkpoint, somewhere)
    assert f"found no left/ or right/ store in it ({somewhere} holds notes, scores.csv)" in message
