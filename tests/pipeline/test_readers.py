"""Tests for pipeline.readers: finding, checking and streaming input files."""
from __future__ import annotations

import csv
import gzip
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.dead_letters import (
    REASON_BAD_FIELD_COUNT,
    REASON_INVALID_JSON,
    REASON_INVALID_UTF8,
    REASON_NOT_AN_OBJECT,
    DeadLetter,
)
from pipeline.readers import (
    FORMATS,
    InputError,
    InputFile,
    SourcedRow,
    check_columns,
    count_input_rows,
    detect_format,
    expand_inputs,
    read_rows,
)

ROWS = [
    {"left": "red shoes", "right": "shoes, red"},
    {"left": "café ünïcode", "right": ""},
    {"left": 'say "hi"', "right": "tab\there"},
]
# TSV has no quoting (a quote is an ordinary character), so a field cannot hold a tab.
TSV_ROWS = [{**row, "right": row["right"].replace("\t", " ")} for row in ROWS]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data``, zstd-compressed when the name ends in .zst, gzip-compressed for .gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zst(data) if path.name.endswith(".zst") else
                     gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_table(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` in the format the name says (header = first row's keys)."""
    fmt, _ = detect_format(str(path))
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    if fmt == "jsonl":
        data = "".join(json.dumps(row) + "\n" for row in rows)
    elif fmt == "tsv":  # no quoting in TSV: a field cannot hold a tab or a line break
        assert not any(c in str(v) for row in rows for v in row.values() for c in "\t\r\n")
        data = "".join("\t".join(map(str, r)) + "\n" for r in [list(rows[0]), *[r.values() for r in rows]])
    else:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n",
                                delimiter="," if fmt == "csv" else "\t")
        writer.writeheader()
        writer.writerows(rows)
        data = out.getvalue()
    return write_bytes(path, data.encode("utf-8"))


def input_file(path: Path, format: str | None = None) -> InputFile:
    return InputFile(str(path), *detect_format(str(path), format))


def read_all(path: Path, **kwargs) -> list:
    return list(read_rows(input_file(path), **kwargs))


def split(results: list) -> tuple[list[SourcedRow], list[DeadLetter]]:
    good = [r for r in results if isinstance(r, SourcedRow)]
    dead = [r for r in results if isinstance(r, DeadLetter)]
    assert len(good) + len(dead) == len(results)
    return good, dead


def brief(letter: DeadLetter) -> tuple:
    """A dead letter without its human-readable detail (checked separately where it matters)."""
    assert letter.detail
    return letter.reason, letter.source, letter.row


# --------------------------------------------------------------------------------------------
# detect_format
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, override, expected", [
    ("pairs.parquet", None, ("parquet", None)),
    ("pairs.jsonl", None, ("jsonl", None)),
    ("PAIRS.NDJSON", None, ("jsonl", None)),
    ("dir.v2/pairs.jsonl.zst", None, ("jsonl", "zstd")),
    ("pairs.csv", None, ("csv", None)),
    ("pairs.csv.zst", None, ("csv", "zstd")),
    ("gs://bucket/x/pairs.tsv", None, ("tsv", None)),
    ("pairs.tsv.zst", None, ("tsv", "zstd")),
    ("pairs.txt", "jsonl", ("jsonl", None)),
    ("part-00000", "csv", ("csv", None)),
    ("pairs.csv.zst", "tsv", ("tsv", "zstd")),
    ("pairs.csv", "PARQUET", ("parquet", None)),
    ("pairs.jsonl.gz", None, ("jsonl", "gzip")),
    ("Pairs.TSV.GZ", None, ("tsv", "gzip")),
    ("pairs.json.gz", "jsonl", ("jsonl", "gzip")),
])
def test_detect_format(path, override, expected):
    assert detect_format(path, override) == expected


@pytest.mark.parametrize("path", ["data/pairs.json", "pairs", "pairs.zst", "pairs.gz", "pairs.json.gz"])
def test_detect_format_unknown_extension_names_path_and_allowed(path):
    with pytest.raises(InputError) as err:
        detect_format(path)
    assert path in str(err.value)
    assert ".jsonl" in str(err.value) and ".parquet" in str(err.value)


def test_detect_format_rejects_unknown_override_and_zstd_parquet():
    with pytest.raises(InputError, match="allowed formats: parquet, jsonl, csv, tsv"):
        detect_format("pairs.csv", "xlsx")
    with pytest.raises(InputError, match=r"pairs\.parquet\.zst.*compression='zstd'"):
        detect_format("pairs.parquet.zst")
    with pytest.raises(InputError, match=r"pairs\.parquet\.gz: gzip-compressed Parquet files are not supported"):
        detect_format("pairs.parquet.gz")


def test_an_unread_compression_is_named_not_sent_to_format():
    # Advice to pass --format would read bzip2 bytes as text: every row a dead letter.
    with pytest.raises(InputError, match=r"pairs\.jsonl\.bz2 is bzip2-compressed, which pairscore does not read"):
        detect_format("pairs.jsonl.bz2", "jsonl")


# --------------------------------------------------------------------------------------------
# gzip: multi-member, truncated, corrupt
# --------------------------------------------------------------------------------------------

def test_multi_member_gzip_reads_every_member(tmp_path):
    # What `cat a.jsonl.gz b.jsonl.gz` and parallel compressors (pigz) write.
    path = tmp_path / "joined.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"left": "a", "right": "b"}\n') + gzip.compress(b'{"left": "c", "right": "d"}\n'))
    file, = expand_inputs([str(path)])
    assert file == InputFile(str(path), "jsonl", "gzip")
    check_columns([file], ["left", "right"])
    assert [r.fields for r in read_rows(file)] == [{"left": "a", "right": "b"}, {"left": "c", "right": "d"}]
    assert [r.source for r in read_rows(file)] == [f"{path}:1", f"{path}:2"]


def test_truncated_gzip_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(gzip.compress(big_csv(20_000))[:-100])
    file, = expand_inputs([str(path)])
    check_columns([file], ["left"])        # the header is whole
    with pytest.raises(InputError, match=f"^{path} is truncated: its gzip data ends in the middle of a member"):
        list(read_rows(file))
    with pytest.raises(InputError, match=f"^{path} is truncated"):
        count_input_rows([file])


def test_corrupt_gzip_is_an_error_naming_the_file(tmp_path):
    junk = tmp_path / "junk.jsonl.gz"
    junk.write_bytes(b"this is not gzip at all\n" * 10)
    file, = expand_inputs([str(junk)])
    with pytest.raises(InputError, match=f"^{junk} is corrupt: gzip decompression failed"):
        check_columns([file], ["left"])
    with pytest.raises(InputError, match=f"^{junk} is corrupt: gzip decompression failed"):
        list(read_rows(file))
    data = bytearray(gzip.compress(big_csv(20_000)))
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
    middle = tmp_path / "middle.csv.gz"
    middle.write_bytes(bytes(data))
    with pytest.raises(InputError, match=f"^{middle} is (corrupt|truncated)"):
        list(read_rows(expand_inputs([str(middle)])[0]))
    assert FORMATS == ("parquet", "jsonl", "csv", "tsv")


# --------------------------------------------------------------------------------------------
# read_rows: each format, plain and zstd
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["p.parquet", "p.jsonl", "p.jsonl.zst", "p.ndjson",
                                  "p.csv", "p.csv.zst", "p.tsv", "p.tsv.zst", "p.jsonl.gz", "p.csv.gz", "p.tsv.gz"])
def test_each_format_round_trips(tmp_path, name):
    rows = TSV_ROWS if ".tsv" in name else ROWS
    path = write_table(tmp_path / name, rows)
    file, = expand_inputs([str(path)])
    assert file == InputFile(str(path), *detect_format(name))
    check_columns([file], ["left", "right"])

    results = list(read_rows(file))

    assert all(isinstance(r, SourcedRow) for r in results)
    assert [r.fields for r in results] == rows
    first = {"parquet": 0, "jsonl": 1, "csv": 2, "tsv": 2}[file.format]  # CSV header is line 1
    assert [r.source for r in results] == [f"{path}:{first + i}" for i in range(len(ROWS))]


def test_value_types_per_format(tmp_path):
    rows = [{"id": 7, "text": "a", "score": 0.5, "tag": None}]
    jsonl = write_table(tmp_path / "t.jsonl", rows)
    parquet = write_table(tmp_path / "t.parquet", rows)
    csv_path = write_bytes(tmp_path / "t.csv", b"id,text,score,tag\n7,a,0.5,\n")

    assert read_all(jsonl)[0].fields == rows[0]   # JSON types kept, null is None
    assert read_all(parquet)[0].fields == rows[0]
    assert read_all(csv_path)[0].fields == {"id": "7", "text": "a", "score": "0.5", "tag": ""}


def test_format_override(tmp_path):
    jsonl = write_bytes(tmp_path / "pairs.txt", b'{"left": "a", "right": "b"}\n')
    tsv = write_bytes(tmp_path / "pairs.csv.zst", b"left\tright\na\tb\n")

    file, = expand_inputs([str(jsonl)], format="jsonl")
    assert file == InputFile(str(jsonl), "jsonl", False)
    assert [r.fields for r in read_rows(file)] == [{"left": "a", "right": "b"}]

    file, = expand_inputs([str(tsv)], format="tsv")
    assert file == InputFile(str(tsv), "tsv", True)
    assert [r.fields for r in read_rows(file)] == [{"left": "a", "right": "b"}]


def test_columns_projection(tmp_path):
    rows = [{"left": "a", "right": "b", "extra": "x"}]
    for name in ["p.parquet", "p.jsonl", "p.csv"]:
        path = write_table(tmp_path / name, rows)
        assert [r.fields for r in read_all(path, columns=["right", "left"])] == [
            {"right": "b", "left": "a"}]
    with pytest.raises(InputError, match=r"p\.parquet has no column 'nope'"):
        read_all(tmp_path / "p.parquet", columns=["left", "nope"])


def test_parquet_streams_in_batches_with_row_indices(tmp_path):
    rows = [{"left": f"l{i}", "right": f"r{i}"} for i in range(10_000)]
    path = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3000)

    results = read_all(path)

    assert [r.fields for r in results] == rows
    assert results[9_999].source == f"{path}:9999"


# --------------------------------------------------------------------------------------------
# expand_inputs
# --------------------------------------------------------------------------------------------

def test_globs_sorted_and_deduplicated(tmp_path):
    for name in ["b.jsonl", "a.jsonl", "c.jsonl.zst", "d.csv", "sub/e.jsonl"]:
        write_table(tmp_path / name, ROWS)

    files = expand_inputs([f"{tmp_path}/*.jsonl*", str(tmp_path / "a.jsonl"),
                           f"{tmp_path}/?.csv"])

    assert files == [InputFile(str(tmp_path / "a.jsonl"), "jsonl", False),
                     InputFile(str(tmp_path / "b.jsonl"), "jsonl", False),
                     InputFile(str(tmp_path / "c.jsonl.zst"), "jsonl", True),
                     InputFile(str(tmp_path / "d.csv"), "csv", False)]
    # ** crosses directories
    assert [f.path for f in expand_inputs([f"{tmp_path}/**.jsonl"])] == [
        str(tmp_path / n) for n in ["a.jsonl", "b.jsonl", "sub/e.jsonl"]]


def test_directory_means_its_input_files(tmp_path):
    for name in ["b.parquet", "a.csv", "sub/c.csv"]:
        write_table(tmp_path / name, ROWS)
    for name in ["_SUMMARY.json", ".a.csv.crc", "notes.txt"]:
        write_bytes(tmp_path / name, b"{}")

    expected = [str(tmp_path / "a.csv"), str(tmp_path / "b.parquet")]
    assert [f.path for f in expand_inputs([str(tmp_path)])] == expected
    assert [f.path for f in expand_inputs([f"{tmp_path}/"])] == expected
    # With --format every (non-hidden) file is taken as that format.
    assert [f.path for f in expand_inputs([str(tmp_path / "sub")], format="tsv")] == [
        str(tmp_path / "sub/c.csv")]


def test_a_path_that_exists_is_read_literally_not_as_a_glob(tmp_path):
    """``in/pairs[1].jsonl`` that exists is that file, not ``in/pairs1.jsonl``; the same for a
    directory whose name holds glob characters. A path that does not exist is still a glob."""
    write_table(tmp_path / "pairs[1].jsonl", ROWS)
    write_table(tmp_path / "pairs1.jsonl", ROWS[:1])
    assert [f.path for f in expand_inputs([str(tmp_path / "pairs[1].jsonl")])] == [str(tmp_path / "pairs[1].jsonl")]
    assert [f.path for f in expand_inputs([str(tmp_path / "pairs[0-9].jsonl")])] == [str(tmp_path / "pairs1.jsonl")]
    write_table(tmp_path / "day[1]" / "a.jsonl", ROWS)
    write_table(tmp_path / "day1" / "b.jsonl", ROWS)
    assert [f.path for f in expand_inputs([str(tmp_path / "day[1]")])] == [str(tmp_path / "day[1]" / "a.jsonl")]


def test_directory_without_input_files(tmp_path):
    write_bytes(tmp_path / "notes.txt", b"hi")
    with pytest.raises(InputError, match=r"holds no input files \(it holds: notes\.txt\)"):
        expand_inputs([str(tmp_path)])


def test_empty_glob_and_missing_path(tmp_path):
    write_table(tmp_path / "a.jsonl", ROWS)
    pattern = f"{tmp_path}/*.parquet"
    with pytest.raises(InputError) as err:
        expand_inputs([str(tmp_path / "a.jsonl"), pattern])
    assert str(err.value) == f"input {pattern!r} matched no files"

    with pytest.raises(InputError, match="nope.csv' matched no files"):
        expand_inputs([str(tmp_path / "nope.csv")])
    with pytest.raises(InputError, match="no input paths given"):
        expand_inputs([])


def test_glob_matching_unknown_extension_names_file(tmp_path):
    write_table(tmp_path / "a.jsonl", ROWS)
    write_bytes(tmp_path / "a.json", b"{}")
    with pytest.raises(InputError, match=r"a\.json from its extension"):
        expand_inputs([f"{tmp_path}/a.*"])


def test_unknown_filesystem_scheme():
    with pytest.raises(InputError, match="could not list input 'nosuchfs://bucket/x.csv'"):
        expand_inputs(["nosuchfs://bucket/x.csv"])


# --------------------------------------------------------------------------------------------
# check_columns
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["p.parquet", "p.jsonl", "p.jsonl.zst", "p.csv", "p.tsv.zst"])
def test_missing_column_names_file_column_and_present_columns(tmp_path, name):
    path = write_table(tmp_path / name, [{"left": "a", "text": "b"}])
    with pytest.raises(InputError) as err:
        check_columns([input_file(path)], ["left", "right"])
    message = str(err.value)
    assert message.startswith(f"{path} has no column 'right' (required: 'left', 'right'); ")
    assert message.endswith("has columns 'left', 'text'")


def test_check_columns_jsonl_uses_every_object_near_the_top_or_skips(tmp_path):
    # A column absent from the first object but present in the next: those rows are dead letters
    # (null_text ...), not the file's refusal, in whatever order the rows come.
    first_object_later = write_bytes(
        tmp_path / "a.jsonl", b'\nnot json\n[1]\n{"left": "a"}\n{"left": "b", "right": "c"}\n')
    check_columns([input_file(first_object_later)], ["left", "right"])
    reordered = write_bytes(tmp_path / "r.jsonl", b'{"left": "b", "right": "c"}\n{"left": "a"}\n')
    check_columns([input_file(reordered)], ["left", "right"])
    misspelt = write_bytes(tmp_path / "m.jsonl", b'{"left": "a"}\n[1]\n{"left": "b", "rihgt": "c"}\n')
    with pytest.raises(InputError, match=r"has no column 'right' .* the union of its first 2 JSON objects \(from line 1\) has columns "
                                         r"'left', 'rihgt'"):
        check_columns([input_file(misspelt)], ["left", "right"])

    no_object = write_bytes(tmp_path / "b.jsonl", b"\n[1]\nnot json\n")
    check_columns([input_file(no_object)], ["left", "right"])  # nothing to check against


def test_check_columns_reports_every_bad_file(tmp_path):
    good = write_table(tmp_path / "good.csv", ROWS)
    bad1 = write_table(tmp_path / "bad1.csv", [{"left": "a"}])
    bad2 = write_bytes(tmp_path / "bad2.parquet", b"not parquet at all")
    with pytest.raises(InputError) as err:
        check_columns([input_file(p) for p in (good, bad1, bad2)], ["left", "right"])
    lines = str(err.value).splitlines()
    assert lines[0] == "2 of 3 input files have problems:"
    assert lines[1].strip().startswith(f"{bad1} has no column 'right'")
    assert lines[2].strip().startswith(f"{bad2} is not a valid Parquet file: ")


def test_check_columns_empty_csv_and_repeated_column(tmp_path):
    empty = write_bytes(tmp_path / "empty.csv", b"")
    with pytest.raises(InputError, match=r"empty\.csv is empty: it has no header line"):
        check_columns([input_file(empty)], ["left"])
    assert read_all(empty) == []

    repeated = write_bytes(tmp_path / "rep.csv", b"left,right,left\na,b,c\n")
    with pytest.raises(InputError, match=r"rep\.csv: column 'left' appears more than once"):
        check_columns([input_file(repeated)], ["left", "right"])


# --------------------------------------------------------------------------------------------
# damaged files
# --------------------------------------------------------------------------------------------

def test_random_bytes_named_parquet(tmp_path):
    path = write_bytes(tmp_path / "junk.parquet", random.Random(0).randbytes(5000))
    for action in (lambda: check_columns([input_file(path)], ["left"]), lambda: read_all(path)):
        with pytest.raises(InputError, match=f"^{path} is not a valid Parquet file: "):
            action()


def test_truncated_parquet(tmp_path):
    path = write_table(tmp_path / "cut.parquet", ROWS * 100)
    path.write_bytes(path.read_bytes()[:-200])
    for action in (lambda: check_columns([input_file(path)], ["left"]), lambda: read_all(path)):
        with pytest.raises(InputError, match=f"^{path} is not a valid Parquet file: "):
            action()


def test_corrupt_parquet_page_fails_while_streaming(tmp_path):
    rnd = random.Random(1)
    rows = [{"left": f"left {i} {rnd.randbytes(8).hex()}", "right": str(i)} for i in range(12_000)]
    path = tmp_path / "pages.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2000, compression="zstd")
    # Damage the last row group's first page; compressed pages make the damage detectable.
    page = pq.ParquetFile(path).metadata.row_group(5).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[page + 50:page + 250] = rnd.randbytes(200)
    path.write_bytes(bytes(data))

    check_columns([input_file(path)], ["left", "right"])  # the footer is fine
    seen = []
    with pytest.raises(InputError, match=f"^{path} is corrupt: reading Parquet data after row"):
        for result in read_rows(input_file(path)):
            seen.append(result)
    assert 0 < len(seen) < len(rows)
    assert [r.fields for r in seen] == rows[:len(seen)]


def test_random_bytes_named_zst(tmp_path):
    path = tmp_path / "junk.jsonl.zst"
    path.write_bytes(random.Random(0).randbytes(5000))
    with pytest.raises(InputError, match=f"^{path} is not valid zstd-compressed data: "):
        check_columns([input_file(path)], [])
    with pytest.raises(InputError, match=f"^{path} is corrupt: zstd decompression failed"):
        read_all(path)


def big_csv(rows: int) -> bytes:
    """A CSV of about 40 bytes a row that compresses poorly (so its frame spans many blocks)."""
    rnd = random.Random(2)
    return b"left,right\n" + b"".join(b"%d,%s\n" % (i, rnd.randbytes(16).hex().encode())
                                      for i in range(rows))


def test_zst_with_garbage_after_valid_start_fails_while_streaming(tmp_path):
    # A good first frame larger than the read buffer, then garbage: the header decompresses
    # (check_columns passes) and the damage only shows while streaming.
    path = tmp_path / "garbage.csv.zst"
    path.write_bytes(zst(big_csv(40_000)) + b"\x00garbage" * 1000)
    check_columns([input_file(path)], ["left", "right"])

    count = 0
    with pytest.raises(InputError, match=f"^{path} is corrupt: zstd decompression failed"):
        for result in read_rows(input_file(path)):
            assert isinstance(result, SourcedRow)
            count += 1
    assert count > 0


def test_zst_with_corrupt_middle(tmp_path):
    data = bytearray(zst(big_csv(20_000)))
    data[len(data) // 2:len(data) // 2 + 64] = random.Random(3).randbytes(64)
    path = tmp_path / "middle.csv.zst"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=f"^{path} is (corrupt|truncated)"):
        read_all(path)


def test_truncated_zst_is_an_error_not_missing_rows(tmp_path):
    # zstandard's stream reader alone would end quietly at the cut, losing the last rows.
    path = tmp_path / "cut.csv.zst"
    path.write_bytes(zst(big_csv(20_000))[:-100])
    with pytest.raises(InputError, match=f"^{path} is truncated: "):
        read_all(path)

    empty = tmp_path / "empty.jsonl.zst"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=f"^{empty} is empty, so it is not zstd"):
        check_columns([input_file(empty)], [])


def test_concatenated_zst_frames_are_all_read(tmp_path):
    path = tmp_path / "cat.jsonl.zst"
    path.write_bytes(zst(b'{"n": 1}\n') + zst(b'{"n": 2}\n'))
    assert [r.fields for r in read_all(path)] == [{"n": 1}, {"n": 2}]


# --------------------------------------------------------------------------------------------
# malformed records -> dead letters
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.zst"])
def test_jsonl_dead_letters(tmp_path, name):
    path = write_bytes(tmp_path / name, b"\n".join([
        b'{"left": "a", "right": "b"}',               # 1 good
        b'{"left": "caf\xe9", "right": "x"}',         # 2 invalid UTF-8, still an object
        b"",                                          # 3 blank
        b"not json",                                  # 4
        b"[1, 2]",                                    # 5 not an object
        b"   \t ",                                    # 6 blank
        b'{"left": "ok", "right": null, "n": 3}\r',   # 7 good (CRLF)
        b"\xff\xfe oops",                             # 8 invalid UTF-8, not JSON either
        b'{"left": "lone \\ud800 surrogate"}',        # 9 valid JSON, not valid Unicode
        b'"just a string"',                           # 10 not an object
        b'{"left": "\\ud83d\\ude00 paired"}',         # 11 good: a surrogate pair is one emoji
    ]) + b"\n")

    good, dead = split(read_all(path))

    assert good == [
        SourcedRow(f"{path}:1", {"left": "a", "right": "b"}),
        SourcedRow(f"{path}:7", {"left": "ok", "right": None, "n": 3}),
        SourcedRow(f"{path}:11", {"left": "\U0001F600 paired"}),
    ]
    assert [brief(d) for d in dead] == [
        (REASON_INVALID_UTF8, f"{path}:2", {"left": "caf\ufffd", "right": "x"}),
        (REASON_INVALID_JSON, f"{path}:4", {"line": "not json"}),
        (REASON_NOT_AN_OBJECT, f"{path}:5", {"line": "[1, 2]"}),
        (REASON_INVALID_UTF8, f"{path}:8", {"line": "\ufffd\ufffd oops"}),
        (REASON_INVALID_UTF8, f"{path}:9", {"left": "lone \ufffd surrogate"}),
        (REASON_NOT_AN_OBJECT, f"{path}:10", {"line": '"just a string"'}),
    ]
    assert dead[0].detail == "line is not valid UTF-8: b'\\xe9' at byte 14 of the line " \
                             "(invalid continuation byte)"
    assert dead[1].detail.startswith("line is not valid JSON: Expecting value at column 1")
    assert dead[2].detail == "line holds a JSON array, not an object"
    # Every dead letter can be written out (no lone surrogates left).
    for letter in dead:
        letter.to_record()["row"].encode("utf-8")


def test_jsonl_byte_order_mark(tmp_path):
    path = write_bytes(tmp_path / "bom.jsonl", b'\xef\xbb\xbf{"left": "a"}\n')
    check_columns([input_file(path)], ["left"])
    assert read_all(path) == [SourcedRow(f"{path}:1", {"left": "a"})]


@pytest.mark.parametrize("name", ["d.csv", "d.csv.zst"])
def test_csv_dead_letters_multiline_fields_and_blank_lines(tmp_path, name):
    path = write_bytes(tmp_path / name, b"".join([
        b"left,right\r\n",                          # 1 header
        b"a,b\r\n",                                 # 2
        b'"multi\r\nline",\r\n',                    # 3-4 one record, empty right
        b"\r\n",                                    # 5 blank
        b"caf\xe9,ok\r\n",                          # 6 invalid UTF-8
        b"x,y,z\r\n",                               # 7 too many fields
        b"only\r\n",                                # 8 too few
        b'"quoted, comma","say ""hi"""\r\n',        # 9
        b'"bad \xff\nacross lines",fine\r\n',       # 10-11 invalid UTF-8 in a multi-line field
        b"last,row",                                # 12 no final newline
    ]))

    good, dead = split(read_all(path))

    assert good == [
        SourcedRow(f"{path}:2", {"left": "a", "right": "b"}),
        SourcedRow(f"{path}:3", {"left": "multi\r\nline", "right": ""}),
        SourcedRow(f"{path}:9", {"left": "quoted, comma", "right": 'say "hi"'}),
        SourcedRow(f"{path}:12", {"left": "last", "right": "row"}),
    ]
    assert [brief(d) for d in dead] == [
        (REASON_INVALID_UTF8, f"{path}:6", {"left": "caf\ufffd", "right": "ok"}),
        (REASON_BAD_FIELD_COUNT, f"{path}:7", {"left": "x", "right": "y", "_extra_fields": ["z"]}),
        (REASON_BAD_FIELD_COUNT, f"{path}:8", {"left": "only"}),
        (REASON_INVALID_UTF8, f"{path}:10", {"left": "bad \ufffd\nacross lines", "right": "fine"}),
    ]
    assert dead[0].detail == "field 'left' is not valid UTF-8"
    assert dead[1].detail == "record has 3 fields but the header has 2"
    for letter in dead:
        letter.to_record()["row"].encode("utf-8")


def test_tsv_has_no_quoting_and_counts_fields(tmp_path):
    # TSV is read without quote processing: quotes are kept as they are, and a tab always splits.
    path = write_bytes(tmp_path / "d.tsv", b'left\tright\n"a\tb"\tc\nd,e\tf\ng\n"q"\t say ""hi""\n')
    good, dead = split(read_all(path))
    assert good == [SourcedRow(f"{path}:3", {"left": "d,e", "right": "f"}),
                    SourcedRow(f"{path}:5", {"left": '"q"', "right": ' say ""hi""'})]
    assert [brief(d) for d in dead] == [
        (REASON_BAD_FIELD_COUNT, f"{path}:2", {"left": '"a', "right": 'b"', "_extra_fields": ["c"]}),
        (REASON_BAD_FIELD_COUNT, f"{path}:4", {"left": "g"})]


@pytest.mark.parametrize("name", ["six.tsv", "six.tsv.zst"])
def test_tsv_unbalanced_quote_does_not_swallow_lines(tmp_path, name):
    """One line is one row: a text that starts with an unbalanced quote stays in its own row."""
    lines = [b"id\ttext", b"1\tfirst", b'2\t"unbalanced start of a quote', b"3\tthird", b"4\tfourth",
             b'5\tfifth with a " inside', b"6\tsixth"]
    path = write_bytes(tmp_path / name, b"\r\n".join(lines) + b"\r\n")
    check_columns([input_file(path)], ["id", "text"])
    good, dead = split(read_all(path))
    assert dead == []
    assert [(r.source, r.fields["id"]) for r in good] == [(f"{path}:{n + 2}", str(n + 1)) for n in range(6)]
    assert good[1].fields["text"] == '"unbalanced start of a quote'
    assert good[4].fields["text"] == 'fifth with a " inside'


def test_tsv_header_is_read_without_quoting_too(tmp_path):
    path = write_bytes(tmp_path / "h.tsv", b'"id\ttext"\n1\tx\n')
    with pytest.raises(InputError, match="""has no column 'id'"""):
        check_columns([input_file(path)], ["id"])
    check_columns([input_file(path)], ['"id'])


def test_tsv_lone_carriage_return_stays_in_its_field(tmp_path):
    path = write_bytes(tmp_path / "cr.tsv", b"a\tb\nx\ry\tz\n")
    assert read_all(path) == [SourcedRow(f"{path}:2", {"a": "x\ry", "b": "z"})]


def test_csv_byte_order_mark_and_invalid_header_bytes(tmp_path):
    path = write_bytes(tmp_path / "bom.csv", b"\xef\xbb\xbfleft,r\xe9ght\na,b\n")
    assert read_all(path) == [SourcedRow(f"{path}:2", {"left": "a", "r\ufffdght": "b"})]


def test_exact_counts_in_a_larger_mixed_file(tmp_path):
    lines = []
    for i in range(3000):
        if i % 100 == 7:
            lines.append(b"{broken")
        elif i % 250 == 3:
            lines.append(b'{"left": "\xc3\x28"}')  # invalid 2-byte sequence
        elif i % 500 == 11:
            lines.append(b"")
        else:
            lines.append(json.dumps({"left": f"t{i}", "right": i}).encode())
    path = write_bytes(tmp_path / "mixed.jsonl.zst", b"\n".join(lines) + b"\n")

    good, dead = split(read_all(path))

    reasons = [d.reason for d in dead]
    assert reasons.count(REASON_INVALID_JSON) == 30
    assert reasons.count(REASON_INVALID_UTF8) == 12
    assert len(dead) == 42
    assert len(good) == 3000 - 42 - 6
    assert good[-1] == SourcedRow(f"{path}:3000", {"left": "t2999", "right": 2999})
