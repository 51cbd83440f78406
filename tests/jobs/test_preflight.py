"""Pre-flight: the common mistakes are answered before Beam, torch or transformers are imported,
each with one line naming the value (and, for a flag, the nearest real one); what the job would
accept passes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from jobs import preflight
from pipeline.beam import option_names
from pipeline.preflight import PreflightError

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "apache_beam", "transformers")


@pytest.fixture
def inputs(tmp_path) -> Path:
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"left": "a", "right": "b", "pid": 1}) + "\n")
    (tmp_path / "pairs.csv").write_text("left,right\na,b\n")
    (tmp_path / "pairs.tsv").write_text("left\tright\na\tb\n")
    (tmp_path / "texts.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "a"}\n'))
    pq.write_table(pa.table({"left": ["a"], "right": ["b"]}), tmp_path / "pairs.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"this is not parquet")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "report.xlsx").write_text("x")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "half-model").mkdir()
    (tmp_path / "half-model" / "config.json").write_text(json.dumps({"shared_encoder": True}))
    bert = {"model_type": "bert", "architectures": ["BertForSequenceClassification"]}
    models = {"student-model": ({"format": "pairscore-student", "shared_encoder": True}, ["student.safetensors", "encoder"]),
              "half-student": ({"format": "pairscore-student", "shared_encoder": False}, ["student.safetensors"]),
              "half-teacher": (bert, ["tokenizer.json"]),
              "untokenized-teacher": (bert, ["model.safetensors"]),
              "plain-encoder": ({**bert, "architectures": ["BertModel"]}, ["model.safetensors", "tokenizer.json"]),
              "teacher-model": (bert, ["model.safetensors", "tokenizer.json"]),
              "uncommitted": (bert, ["model.safetensors", "tokenizer.json", "_SUMMARY.json"])}
    for name, (config, files) in models.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        for file in files:
            (tmp_path / name / file).write_text("x")
    (tmp_path / "killed-training" / "_temporary-1a2b").mkdir(parents=True)     # a train_teacher run killed
    (tmp_path / "killed-training" / "_LOCK").write_text("{}")
    return tmp_path


# Each case: (job, its arguments, what the one line must say). Paths are relative to ``inputs``.
MISTAKES = {
    "missing input": ("score_pairs", ["--pairs", "missing.jsonl", "--output", "o"],
                      "input 'missing.jsonl' matched no files"),
    "glob that matches nothing": ("encode_texts", ["--input", "texts-*.jsonl", "--output", "o"],
                                  "input 'texts-*.jsonl' matched no files"),
    "wrong column, JSON Lines": ("score_pairs", ["--pairs", "pairs.jsonl", "--left-col", "query", "--output", "o"],
                                 "pairs.jsonl has no column 'query' (required: 'query', 'right'); its first JSON "
                                 "object (line 1) has columns 'left', 'right', 'pid'"),
    "wrong column, CSV": ("label_pairs", ["--pairs", "pairs.csv", "--teacher", "t", "--right-col", "doc",
                                          "--output", "o"], "pairs.csv has no column 'doc'"),
    "wrong column, TSV": ("evaluate", ["--pairs", "pairs.tsv", "--model", "baseline", "--output", "o"],
                          "pairs.tsv has no column 'label'"),
    "wrong column, Parquet footer": ("score_pairs", ["--pairs", "pairs.parquet", "--left-id-col", "qid",
                                                     "--right-id-col", "right", "--left-texts", "pairs.jsonl",
                                                     "--right-texts", "pairs.jsonl", "--output", "o"],
                                     "pairs.parquet has no column 'qid' (required: 'qid', 'right'); its "
                                     "schema has columns 'left', 'right'"),
    "wrong per-side text column": ("score_pairs", ["--pairs", "pairs.jsonl", "--left-id-col", "left",
                                                   "--right-id-col", "right", "--left-texts", "pairs.csv",
                                                   "--right-texts", "pairs.tsv", "--texts-id-col", "left",
                                                   "--texts-text-col", "right", "--right-texts-id-col", "sku",
                                                   "--output", "o"],
                                   "pairs.tsv has no column 'sku' (--right-texts-id-col; required: 'sku', 'right'); "
                                   "its header line has columns 'left', 'right'"),
    "wrong shared text column, mining": ("build_candidates", ["--left-texts", "pairs.csv", "--right-texts",
                                                              "pairs.csv", "--left-texts-text-col", "left",
                                                              "--top-k", "1", "--output", "o"],
                                         "pairs.csv has no column 'text' (--texts-text-col; required: 'text'); "
                                         "its header line has columns 'left', 'right'"),
    "wrong column, .zst": ("encode_texts", ["--input", "texts.jsonl.zst", "--id-col", "id", "--output", "o"],
                           "texts.jsonl.zst has no column 'id'"),
    "missing query column": ("evaluate", ["--pairs", "pairs.jsonl", "--label-col", "pid", "--group-col", "qid",
                                          "--model", "baseline", "--output", "o"], "pairs.jsonl has no column 'qid'"),
    "missing dev query column": ("train_student", ["--distill", "pairs.parquet", "--dev", "pairs.jsonl", "--label-col",
                                                   "pid", "--dev-group-col", "qid", "--head", "li", "--output", "o"],
                                 "pairs.jsonl has no column 'qid'"),
    "corrupt Parquet": ("score_pairs", ["--pairs", "bad.parquet", "--output", "o"],
                        "bad.parquet is not a valid Parquet file"),
    "unknown Beam flag": ("score_pairs", ["--pairs", "pairs.jsonl", "--output", "o", "--direct_num_worker=2"],
                          "unknown option(s) --direct_num_worker=2: not a flag of this job (see --help) nor a "
                          "pipeline option of any Beam runner (--direct_num_worker: did you mean "
                          "--direct_num_workers?)"),
    "bad Beam value": ("score_pairs", ["--pairs", "pairs.jsonl", "--output", "o", "--direct_num_workers=two"],
                       "--direct_num_workers 'two' is not allowed: give an integer"),
    "bad Beam choice": ("score_pairs", ["--pairs", "pairs.jsonl", "--output", "o", "--direct_running_mode=bogus"],
                        "--direct_running_mode 'bogus' is not allowed: choose one of in_memory, multi_threading, "
                        "multi_processing"),
    "misspelt job flag": ("score_pairs", ["--pairs", "pairs.jsonl", "--output", "o", "--keepcols", "pid"],
                          "(--keepcols: did you mean --keep-cols?)"),
    "output not empty": ("encode_texts", ["--input", "pairs.jsonl", "--text-col", "left", "--output", "busy"],
                         "--output 'busy' is not empty (report.xlsx): give a new or empty directory, or pass "
                         "--overwrite"),
    "output is a file": ("train_teacher", ["--train", "pairs.jsonl", "--dev", "pairs.jsonl", "--label-col", "pid",
                                           "--output", "a-file"], "--output 'a-file' is an existing file"),
    "missing model": ("score_pairs", ["--pairs", "pairs.jsonl", "--model", "no-model", "--output", "o"],
                      "model directory 'no-model' does not exist"),
    "incomplete model": ("encode_texts", ["--input", "pairs.jsonl", "--text-col", "left", "--model", "half-model",
                                          "--output", "o"],
                         "checkpoint 'half-model' is incomplete: missing student.safetensors, encoder"),
    "teacher given as the student": ("score_pairs", ["--pairs", "pairs.jsonl", "--model", "teacher-model", "--output", "o"],
                                     "--model 'teacher-model' is a Hugging Face model (a teacher or an encoder), not a "
                                     "pairscore student checkpoint (a train_student output)"),
    "missing teacher": ("label_pairs", ["--pairs", "pairs.jsonl", "--teacher", "runs/teacher", "--output", "o"],
                        "--teacher 'runs/teacher' does not exist: it is no local directory, nor a hub model in the "
                        "local cache, and downloads are off (HF_HUB_OFFLINE) (expected a teacher checkpoint "
                        "directory: a train_teacher output or a Hugging Face sequence-classification cross-encoder)"),
    "missing teacher path": ("label_pairs", ["--pairs", "pairs.jsonl", "--teacher", "./runs/teacher/", "--output", "o"],
                             "--teacher './runs/teacher/' does not exist (expected a teacher checkpoint directory: a "
                             "train_teacher output or a Hugging Face sequence-classification cross-encoder)"),
    "teacher without weights": ("label_pairs", ["--pairs", "pairs.jsonl", "--teacher", "half-teacher", "--output", "o"],
                                "teacher 'half-teacher' is incomplete: missing model.safetensors (a teacher "
                                "checkpoint holds config.json, model.safetensors and its tokenizer)"),
    "teacher without tokenizer": ("label_pairs", ["--pairs", "pairs.jsonl", "--teacher", "untokenized-teacher",
                                                  "--output", "o"], "missing a tokenizer"),
    "student given as the teacher": ("label_pairs", ["--pairs", "pairs.jsonl", "--teacher", "student-model",
                                                     "--output", "o"],
                                     "--teacher 'student-model' is a pairscore student checkpoint, not a teacher"),
    "encoder given as the teacher": ("label_pairs", ["--pairs", "pairs.jsonl", "--teacher", "plain-encoder",
                                                     "--output", "o"],
                                     "--teacher 'plain-encoder' is not a trained cross-encoder: its config.json names "
                                     "BertModel, which has no classification head"),
    "VIRT teacher missing": ("train_student", ["--distill", "pairs.parquet", "--dev", "pairs.jsonl", "--label-col",
                                               "pid", "--head", "li", "--teacher", "./runs/teacher/",
                                               "--virt-weight", "1", "--output", "o"],
                             "--teacher './runs/teacher/' does not exist (expected a teacher checkpoint directory"),
    "VIRT teacher is a student": ("train_student", ["--distill", "pairs.parquet", "--dev", "pairs.jsonl",
                                                    "--label-col", "pid", "--head", "li", "--teacher",
                                                    "student-model", "--virt-weight", "1", "--output", "o"],
                                  "--teacher 'student-model' is a pairscore student checkpoint, not a teacher"),
    "teacher still training": ("label_pairs", ["--pairs", "pairs.jsonl", "--teacher", "killed-training", "--output",
                                               "o"], "--teacher 'killed-training' holds only an unfinished pairscore "
                                                     "run (_LOCK, _temporary-1a2b): no checkpoint has been committed"),
    "evaluated model missing": ("evaluate", ["--pairs", "pairs.jsonl", "--label-col", "pid", "--model", "baseline",
                                             "--model", "new=runs/student", "--output", "o"],
                                "--model 'runs/student' is not a model directory: it does not exist (expected a "
                                "teacher or student checkpoint directory, or `baseline`)"),
    "evaluated model not committed": ("evaluate", ["--pairs", "pairs.jsonl", "--label-col", "pid", "--model",
                                                   "uncommitted", "--output", "o"],
                                      "--model 'uncommitted' is not a committed checkpoint: it has _SUMMARY.json but "
                                      "no _SUCCESS"),
    "evaluated student incomplete": ("evaluate", ["--pairs", "pairs.jsonl", "--label-col", "pid", "--model",
                                                  "s=half-student", "--output", "o"],
                                     "checkpoint 'half-student' is incomplete: missing left_encoder, right_encoder"),
    "evaluated teacher incomplete": ("evaluate", ["--pairs", "pairs.jsonl", "--label-col", "pid", "--model",
                                                  "half-teacher", "--output", "o"],
                                     "teacher 'half-teacher' is incomplete: missing model.safetensors"),
}


def _run_probe(module: str, args: list[str], cwd: Path) -> tuple[int, list[str], str]:
    """``python -m <module> <args>`` in a fresh interpreter (as ``python -m`` runs it): its exit
    status, the heavy modules it had imported when it exited, and its stderr."""
    probe = textwrap.dedent(f"""
        import runpy, sys
        sys.argv = [{module!r}] + {args!r}
        code = 0
        try:
            runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
        except SystemExit as exit:
            code = exit.code or 0
        print("HEAVY=" + ",".join(m for m in {HEAVY!r} if m in sys.modules), "CODE=" + str(code), file=sys.stderr)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)
    *lines, last = done.stderr.strip().splitlines()
    heavy, code = (part.split("=", 1)[1] for part in last.split())
    return int(code), [m for m in heavy.split(",") if m], "\n".join(lines)


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_a_mistake_is_one_line_before_beam_torch_or_transformers(inputs, case):
    job, args, expected = MISTAKES[case]
    code, heavy, stderr = _run_probe(f"jobs.{job}", args, inputs)
    assert code == 2, stderr
    assert stderr.startswith("error: ") and len(stderr.splitlines()) == 1, stderr
    assert expected in stderr, stderr
    assert heavy == [], f"{case}: imported {heavy} before answering"
    assert not (inputs / "o").exists()


def _flags(**given) -> dict:
    """Flags as click gives them to score_pairs (defaults, then ``given``)."""
    flags = {"pairs": (), "format": None, "left_col": "left", "right_col": "right", "left_id_col": None,
             "right_id_col": None, "left_texts": (), "right_texts": (), "texts_id_col": "id",
             "texts_text_col": "text", "keep_cols": (), "model_dir": None, "output": "o", "overwrite": False}
    flags.update(given)
    return flags


def test_what_the_job_accepts_passes(inputs, tiny_checkpoint, monkeypatch):
    monkeypatch.chdir(inputs)
    (inputs / "stale").mkdir()
    (inputs / "stale" / "_LOCK").write_text("{}")                   # a dead run's lock alone: not "not empty"
    (inputs / "dir").mkdir()
    (inputs / "dir" / "p.jsonl").write_text(json.dumps({"left": "a", "right": "b"}) + "\n")
    (inputs / "in[1].jsonl").write_text(json.dumps({"left": "a", "right": "b"}) + "\n")   # literal, not a glob
    passing = [
        _flags(pairs=("pairs.jsonl", "pairs.csv", "pairs.tsv", "pairs.parquet")),
        _flags(pairs=("pairs.*",), format=None, output="stale"),
        _flags(pairs=("dir",), model_dir=tiny_checkpoint),
        _flags(pairs=("in[1].jsonl", "gs://bucket/pairs/*.parquet"), output="busy", overwrite=True),
        _flags(pairs=("pairs.jsonl",), left_id_col="left", right_id_col="right", left_texts=("texts.jsonl.zst",),
               right_texts=("gs://bucket/texts.parquet",), texts_id_col="text", texts_text_col="text"),
        _flags(pairs=("pairs.jsonl",), model_dir="gs://bucket/model", output="gs://bucket/out"),
        # left to the job, whose flag checks explain these first
        _flags(pairs=("pairs.jsonl",), right_id_col="pid"),
        _flags(pairs=("pairs.jsonl",), left_id_col="q", right_id_col="p"),
        _flags(pairs=("pairs.jsonl",), left_texts=("pairs.jsonl",)),
    ]
    for flags in passing:
        preflight.check("score_pairs", flags, [])
    beam = ["--direct_num_workers=2", "--direct_running_mode", "multi_processing", "--runner", "DirectRunner",
            "--experiments=a", "--no_use_public_ips", "--dask_client_address=x:1"]
    preflight.check("score_pairs", _flags(pairs=("pairs.jsonl",)), beam)


def test_checkpoints_the_jobs_accept_pass(inputs, tiny_checkpoint, tiny_teacher_dir, monkeypatch):
    """Real teacher and student checkpoints, committed training outputs, hub ids (a teacher may be
    one, loaded from the local cache) and remote paths pass; the job's own loaders judge the rest."""
    monkeypatch.chdir(inputs)
    committed = inputs / "committed-teacher"
    shutil.copytree(tiny_teacher_dir, committed)
    for marker in ("_SUMMARY.json", "_SUCCESS"):
        (committed / marker).write_text("{}")
    pairs = {"pairs": ("pairs.jsonl",), "format": None, "left_col": "left", "right_col": "right", "left_id_col": None,
             "right_id_col": None, "output": "o", "overwrite": False}
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(inputs / "hub-cache"))
    (inputs / "hub-cache" / "models--cross-encoder--ms-marco-MiniLM-L-6-v2").mkdir(parents=True)
    for teacher in (tiny_teacher_dir, str(committed), "teacher-model", "cross-encoder/ms-marco-MiniLM-L-6-v2",
                    "gs://bucket/teacher"):
        preflight.check("label_pairs", {**pairs, "teacher": teacher})
    with pytest.raises(PreflightError, match="nor a hub model in the local cache"):
        preflight.check("label_pairs", {**pairs, "teacher": "cross-encoder/stsb-TinyBERT-L-4"})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)     # downloads allowed: the loader may fetch it
    preflight.check("label_pairs", {**pairs, "teacher": "cross-encoder/stsb-TinyBERT-L-4"})
    evaluate = {**pairs, "label_col": "pid", "group_col": None, "dev": ()}
    preflight.check("evaluate", {**evaluate, "models": ("baseline", tiny_checkpoint, f"teacher={tiny_teacher_dir}",
                                                         f"t2={committed}", "b=baseline", "gs://bucket/student")})
    preflight.check("score_pairs", _flags(pairs=("pairs.jsonl",), model_dir=tiny_checkpoint))


def test_the_baseline_preflight_knows_is_the_evaluators():
    from encoders.evaluation import BASELINE
    from jobs.preflight import BASELINE as SPELT
    assert SPELT == BASELINE


def _imported_beam_parser_options():
    """{option: (takes a value, int/float type name or None, choices or None)} from the parser the
    imported Beam builds for the jobs (pipeline/beam/runner.py)."""
    import pipeline.beam.encode  # noqa: F401 - the options classes the Beam jobs' library brings
    import pipeline.beam.label  # noqa: F401
    import pipeline.beam.score  # noqa: F401
    from pipeline.beam.runner import beam_option_parser

    found = {}
    for name, action in beam_option_parser()._option_string_actions.items():
        if name.startswith("--") and not name.startswith(option_names._UNCHECKED_PREFIXES):
            kind = action.type.__name__ if action.type in (int, float) else None
            found[name] = (action.nargs != 0, kind, tuple(action.choices) if action.choices is not None else None)
    return found


def test_the_options_read_from_beams_source_are_the_ones_the_imported_beam_defines():
    """The pre-flight reads the installed Beam's option declarations without importing Beam; what it
    reads must be what Beam's own parser holds once imported: every name, whether it takes a value,
    its int/float type and its choices (where the source states them literally)."""
    read = option_names.installed_beam_options()
    imported = _imported_beam_parser_options()
    assert sorted(read) == sorted(imported)
    for name, (takes_value, kind, choices) in imported.items():
        option = read[name]
        assert option.takes_value == takes_value, name
        if kind is not None:
            assert option.value_type == kind, name
        if option.choices is not None:
            assert option.choices == choices, name
    # the values the issue names are typed in every Beam version the package allows
    assert read["--direct_num_workers"].value_type == "int"
    assert read["--direct_running_mode"].choices == ("in_memory", "multi_threading", "multi_processing")


def test_bad_beam_values_are_refused_before_beam_is_imported():
    with pytest.raises(PreflightError, match=r"--direct_num_workers 'two' is not allowed: give an integer"):
        option_names.check_beam_flags(["--direct_num_workers=two"])
    with pytest.raises(PreflightError, match=r"--direct_running_mode 'bogus' is not allowed: choose one of "
                                             r"in_memory, multi_threading, multi_processing"):
        option_names.check_beam_flags(["--direct_running_mode", "bogus"])
    option_names.check_beam_flags(["--direct_num_workers=2", "--direct_running_mode", "multi_processing",
                                   "--runner=DirectRunner", "--no_use_public_ips", "--experiments=a,b"])


OTHER_BEAM_SOURCE = textwrap.dedent("""
    class PipelineOptions(object):
        pass

    class FutureOptions(PipelineOptions):
        MODES = ['fast', 'slow']

        @classmethod
        def _add_argparse_args(cls, parser):
            parser.add_argument('--runner', help='the runner')
            parser.add_argument('--future_shards', type=int, default=1)
            parser.add_value_provider_argument('--future_rate', type=float)
            parser.add_argument('--future_mode', choices=cls.MODES)
            parser.add_argument('--future_flag', action='store_true')
    """)


def test_the_flag_check_follows_whatever_beam_source_it_reads(tmp_path):
    """Another Beam version (here a source of options that no released Beam has): the check still
    suggests and refuses, by what that source declares, not by a list generated for one version."""
    source = tmp_path / "pipeline_options.py"
    source.write_text(OTHER_BEAM_SOURCE, encoding="utf-8")
    options = option_names.read_beam_options([str(source)])
    assert sorted(options) == ["--future_flag", "--future_mode", "--future_rate", "--future_shards", "--runner"]
    with pytest.raises(PreflightError, match="did you mean --future_shards"):
        option_names.check_beam_flags(["--future_shard=3"], options=options)
    with pytest.raises(PreflightError, match="--keepcols: did you mean --keep-cols"):
        option_names.check_beam_flags(["--keepcols", "pid"], own_flags=["--keep-cols"], options=options)
    with pytest.raises(PreflightError, match="--future_mode 'medium' is not allowed: choose one of fast, slow"):
        option_names.check_beam_flags(["--future_mode=medium"], options=options)
    with pytest.raises(PreflightError, match="--future_rate 'high' is not allowed: give a number"):
        option_names.check_beam_flags(["--future_rate=high"], options=options)
    with pytest.raises(PreflightError, match="unknown option"):
        option_names.check_beam_flags(["--direct_num_workers=2"], options=options)   # not in this Beam
    option_names.check_beam_flags(["--future_shards", "4", "--future_flag", "--runner=X"], options=options)


def test_without_beam_installed_the_flags_are_left_to_the_import(monkeypatch):
    monkeypatch.setattr(option_names, "installed_beam_root", lambda: None)
    option_names.check_beam_flags(["--runnr=DirectRunner"])      # the job's own import fails, naming Beam


def test_the_preflight_module_imports_no_heavy_library():
    code = ("import sys, jobs.preflight, pipeline.preflight, pipeline.beam.option_names, jobs.cli\n"
            f"print(','.join(m for m in {HEAVY!r} + ('pyarrow',) if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == ""
