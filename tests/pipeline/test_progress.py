"""The progress reporter: what it writes in each mode, and that the Beam counters feed it."""
from __future__ import annotations

import io
import os

import pytest

from pipeline import progress
from pipeline.progress import Reporter, choose_mode, format_line


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_line_shows_counts_rates_and_elapsed_time():
    line = format_line("score_pairs", 62.4, {"pairs read": 12000, "pairs scored": 8192}, {"pairs scored": 1950.4})
    assert line == "score_pairs 1:02 | pairs read 12,000 | pairs scored 8,192 (1,950/s)"
    assert format_line("encode_texts", 3725, {}, {}) == "encode_texts 1:02:05 | running"


def test_modes():
    assert choose_mode(quiet=True, stream=Terminal()) == "off"
    assert choose_mode(quiet=False, stream=Terminal()) == "live"
    assert choose_mode(quiet=False, stream=io.StringIO()) == "log"


def test_log_mode_writes_plain_lines_with_the_rate_the_count_moved_at():
    clock, out = FakeClock(), io.StringIO()
    reporter = Reporter("encode_texts", "log", started=clock.now - 10, worker=False, stream=out, clock=clock)
    reporter.add("texts encoded", 100)
    reporter.show()
    clock.now += 2
    reporter.add("texts encoded", 100)
    reporter.show()
    clock.now += 60                     # the stage is over: its count stops moving, its rate stays
    reporter.show()
    lines = out.getvalue().splitlines()
    assert lines == ["encode_texts 0:10 | texts encoded 100", "encode_texts 0:12 | texts encoded 200 (100/s)",
                     "encode_texts 1:12 | texts encoded 200 (100/s)"]
    assert "\r" not in out.getvalue()


def test_live_mode_redraws_one_line_and_ends_it_on_close():
    clock, out = FakeClock(), Terminal()
    reporter = Reporter("score_pairs", "live", started=clock.now, worker=False, stream=out, clock=clock)
    reporter.show()
    reporter.add("pairs scored", 5)
    reporter.show()
    reporter.close()
    text = out.getvalue()
    assert text.startswith("\rscore_pairs 0:00 | running\x1b[K\rscore_pairs 0:00 | pairs scored 5\x1b[K")
    assert text.endswith("\n") and text.count("\n") == 1


def test_off_writes_nothing_and_a_worker_writes_only_when_its_counts_moved():
    out = io.StringIO()
    quiet = Reporter("j", "off", started=0, worker=False, stream=out)
    quiet.add("rows read", 3)
    quiet.show()
    quiet.close()
    assert out.getvalue() == ""
    clock = FakeClock()
    worker = Reporter("j", "live", started=clock.now, worker=True, stream=out, clock=clock)
    worker.show()                        # nothing counted yet: nothing to say
    worker.add("rows read", 3)
    worker.show()
    worker.show()
    assert out.getvalue() == f"j [worker {os.getpid()}] 0:00 | rows read 3\n"


def test_beam_counters_feed_the_reporter_and_only_the_shown_ones():
    from pipeline.beam.counters import counter

    out = io.StringIO()
    reporter = progress.start("score_pairs", quiet=False, started=0.0, stream=out)
    try:
        assert os.environ[progress.ENV_MODE] == "log"      # worker processes inherit it
        counter("rows_read", "pairs.").inc(7)
        counter("texts_encoded", "left.").inc(2)
        counter("texts_encoded", "right.").inc(3)
        counter("dead_letter.empty_text", "pairs.").inc()   # not on the line
        assert reporter.counts() == {"pairs read": 7, "texts encoded": 5}
    finally:
        progress.stop()
    assert progress.ENV_MODE not in os.environ
    counter("rows_read", "pairs.").inc(1)                   # no reporter: counting still works


@pytest.mark.parametrize("quiet", [False, True])
def test_a_job_reports_progress_unless_quiet(tmp_path, tiny_checkpoint, monkeypatch, quiet):
    from click.testing import CliRunner

    from jobs.cli import pairscore

    source = tmp_path / "texts.jsonl"
    source.write_text("".join(f'{{"text": "text number {i}"}}\n' for i in range(40)))
    monkeypatch.setenv(progress.ENV_INTERVAL, "0.05")
    args = ["encode-texts", "--input", str(source), "--model", tiny_checkpoint, "--output", str(tmp_path / "out")]
    result = CliRunner().invoke(pairscore, args + (["--quiet"] if quiet else []))
    assert result.exit_code == 0, result.output
    progress_lines = [line for line in result.output.splitlines() if line.startswith("encode_texts 0:")]
    assert "encode_texts: done in" in result.output
    if quiet:
        assert progress_lines == []
    else:
        assert progress_lines and "texts encoded 40" in progress_lines[-1] and "rows read 40" in progress_lines[-1]


def test_training_bars_write_plain_lines_off_a_terminal():
    from tqdm.auto import tqdm

    out = io.StringIO()
    options = progress.bar_options(out)
    assert options["mininterval"] == progress.LOG_SECONDS
    bar = tqdm(total=3, desc="stage 1, epoch 1", unit="pair", **options)
    bar.update(3)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and lines and all(line.startswith("stage 1, epoch 1") for line in lines)
    assert "3/3" in lines[-1]
    assert progress.bar_options(Terminal())["mininterval"] == 1.0


def test_a_worker_that_reports_to_its_launching_process_sends_records_it_can_read():
    out, clock = io.StringIO(), FakeClock()
    worker = Reporter("score_pairs", "live", started=clock.now, worker=True, stream=out, clock=clock, records=True)
    assert worker.interval == progress.WORKER_RECORD_SECONDS
    worker.show()                                   # nothing counted: nothing sent
    worker.add("pairs scored", 5)
    worker.show()
    launcher = Reporter("score_pairs", "log", started=clock.now, worker=False, stream=io.StringIO(), clock=clock)
    launcher.add("pairs read", 9)
    progress._reporter = launcher
    try:
        assert all(progress.receive_record(line) for line in out.getvalue().splitlines())
        assert not progress.receive_record("score_pairs 0:01 | running")
    finally:
        progress._reporter = None
    assert launcher.counts() == {"pairs read": 9, "pairs scored": 5}
    assert launcher.line() == "score_pairs 0:00 | pairs read 9 | pairs scored 5"


def test_lines_written_above_the_live_line_never_join_it():
    clock, out = FakeClock(), Terminal()
    reporter = Reporter("score_pairs", "live", started=clock.now, worker=False, stream=out, clock=clock)
    reporter.add("pairs read", 3)
    reporter.show()
    reporter.write_above(lambda: out.write("WARNING: something a worker said\n"))
    reporter.write_above(lambda: out.write("and another line\n"))
    reporter.show()
    assert out.getvalue() == ("\rscore_pairs 0:00 | pairs read 3\x1b[K" "\r\x1b[K" "WARNING: something a worker said\n"
                              "and another line\n" "\rscore_pairs 0:00 | pairs read 3\x1b[K")


def test_a_count_with_a_total_shows_its_percentage_and_the_time_left_at_its_rate():
    line = format_line("label_pairs", 60, {"rows read": 48000, "pairs labeled": 1200, "input read": 30_000_000},
                       {"pairs labeled": 35.0, "input read": 2_000_000.0},
                       {"rows read": 48000, "pairs labeled": 48000, "input read": 120_000_000})
    assert line == ("label_pairs 1:00 | rows read 48,000 of 48,000 (100%) | pairs labeled 1,200 of 48,000 "
                    "(2%, 35/s, ETA 22:17) | input read 30.0 MB of 120.0 MB (25%, 2.0 MB/s, ETA 0:45)")


def test_totals_of_counters_that_share_a_label_add_up_and_show_on_the_line():
    clock = FakeClock()
    reporter = progress.start("score_pairs", quiet=False, started=clock.now, stream=io.StringIO())
    try:
        progress.expect({"left_texts.rows_read": 300, "right_texts.rows_read": 100, "pairs.rows_read": 50})
        reporter.add("text rows read", 100)
        assert "text rows read 100 of 400 (25%)" in reporter.line()
    finally:
        progress.stop()


@pytest.mark.parametrize("compressed", [False, True])
def test_text_inputs_count_the_stored_bytes_they_consume_against_their_size(tmp_path, compressed):
    """JSONL/CSV progress is the share of the file's stored (compressed, for .zst) bytes read."""
    import zstandard

    from pipeline.readers import expand_inputs, expect_inputs, read_rows

    content = "".join(f'{{"text": "text number {i}"}}\n' for i in range(5000)).encode()
    path = tmp_path / ("texts.jsonl.zst" if compressed else "texts.jsonl")
    path.write_bytes(zstandard.ZstdCompressor().compress(content) if compressed else content)
    reporter = progress.start("encode_texts", quiet=False, started=0.0, stream=io.StringIO())
    try:
        files = expand_inputs([str(path)])
        expect_inputs(files, ("rows_read",))
        assert reporter.totals == {"input read": path.stat().st_size}     # no rows total: not Parquet
        rows = list(read_rows(files[0]))
        assert len(rows) == 5000 and reporter.counts()["input read"] == path.stat().st_size
    finally:
        progress.stop()


def test_parquet_inputs_give_their_rows_as_the_total(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.readers import expand_inputs, expect_inputs

    for name, rows in (("a.parquet", 70), ("b.parquet", 30)):
        pq.write_table(pa.table({"text": [f"t{i}" for i in range(rows)]}), tmp_path / name)
    reporter = progress.start("label_pairs", quiet=False, started=0.0, stream=io.StringIO())
    try:
        expect_inputs(expand_inputs([str(tmp_path / "*.parquet")]), ("rows_read", "pairs_labeled"))
        assert reporter.totals == {"rows read": 100, "pairs labeled": 100}
    finally:
        progress.stop()
    quiet = progress.start("label_pairs", quiet=True, started=0.0, stream=io.StringIO())
    try:
        expect_inputs(expand_inputs([str(tmp_path / "*.parquet")]), ("rows_read",))
        assert quiet.totals == {}                           # --quiet: nothing is read for it
    finally:
        progress.stop()


def test_a_job_reading_parquet_shows_its_total_from_the_footers(tmp_path, tiny_checkpoint, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from jobs.cli import pairscore

    source = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"text": [f"text number {i}" for i in range(40)]}), source)
    monkeypatch.setenv(progress.ENV_INTERVAL, "0.05")
    result = CliRunner().invoke(pairscore, ["encode-texts", "--input", str(source), "--model", tiny_checkpoint,
                                            "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    progress_lines = [line for line in result.output.splitlines() if line.startswith("encode_texts 0:")]
    assert progress_lines and "rows read 40 of 40 (100%" in progress_lines[-1]
