"""A scoring run whose texts are all in ``--store`` needs no encoder: its launching process (the
in-process runner's workers included) never imports transformers, and the student's config,
fingerprint and store layouts come from its files (pipeline/models.py: ``model_facts``).

Start-up time itself is measured by benchmarks/startup.py, not here: these tests check what is
imported and loaded (``sys.modules`` of a fresh process), which does not depend on machine speed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from encoders.checkpoint import load_student
from encoders.config import SIDES
from encoders.file_fingerprint import RECORD_FILE
from encoders.remote import pin_model_dir
from jobs.score_pairs import ScorePairsJob, run
from pipeline.models import model_facts, proven_fingerprint
from pipeline.store import store_layout

REPO = Path(__file__).resolve().parents[2]
PAIRS = [{"left": f"question {i}", "right": f"answer {i % 3}"} for i in range(6)]
# Run in a fresh interpreter: score_pairs' command line, then (at exit, whatever the status)
# the names of the transformers modules this process imported, written to a JSON file.
PROBE = """
import atexit, json, runpy, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(
    name for name in sys.modules if name.split(".")[0] == "transformers"))))
sys.argv[0] = "score_pairs"
runpy.run_module("jobs.score_pairs", run_name="__main__")
"""


@pytest.fixture(scope="module")
def night_one(tmp_path_factory, tiny_checkpoint) -> Path:
    """Pairs, and a finished run over them whose OUT/store holds every text."""
    tmp = tmp_path_factory.mktemp("night-one")
    (tmp / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    run(ScorePairsJob(pairs=(str(tmp / "pairs.jsonl"),), output=str(tmp / "out"), model_dir=tiny_checkpoint), [],
        argv=[])
    return tmp


def score_in_fresh_process(tmp_path: Path, pairs: Path, checkpoint: str, store: Path) -> tuple[dict, list[str]]:
    """(the run's _SUMMARY.json, the transformers modules its process imported)."""
    imported = tmp_path / "imported.json"
    output = tmp_path / "tonight"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    done = subprocess.run([sys.executable, "-c", PROBE, str(imported), "--pairs", str(pairs), "--model", checkpoint,
                           "--store", str(store), "--output", str(output), "--runner", "DirectRunner"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((output / "_SUMMARY.json").read_text()), json.loads(imported.read_text())


def test_a_run_whose_texts_are_all_stored_never_imports_transformers(tmp_path, night_one, tiny_checkpoint):
    summary, imported = score_in_fresh_process(tmp_path, night_one / "pairs.jsonl", tiny_checkpoint,
                                               night_one / "out" / "store")
    assert summary["counts"]["pairs_scored"] == len(PAIRS)
    assert summary["counts"]["left_texts_encoded"] == summary["counts"]["right_texts_encoded"] == 0
    assert imported == []


def test_a_text_not_yet_stored_loads_the_encoder_in_the_same_process(tmp_path, night_one, tiny_checkpoint):
    """The other side of the test above: the probe does see transformers when the encoder is
    needed (one new left text, encoded by the in-process runner's worker)."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS + [{"left": "a new question", "right": "answer 0"}]))
    summary, imported = score_in_fresh_process(tmp_path, pairs, tiny_checkpoint, night_one / "out" / "store")
    assert summary["counts"]["left_texts_encoded"] == 1 and summary["counts"]["right_texts_encoded"] == 0
    assert "transformers" in imported


def test_model_facts_equal_the_loaded_students(tiny_checkpoint, tiny_student_config, tmp_path):
    """Config, fingerprint and both sides' layouts (float16 and int8) from the files equal what the
    loaded student gives; also for a student without a projection (D = H) and with unshared encoders."""
    from encoders.checkpoint import build_student, save_student

    other = tmp_path / "unprojected"
    save_student(build_student(tiny_student_config.replace(dim=None, shared_encoder=False), seed=2), other)
    for checkpoint in (tiny_checkpoint, str(other)):
        student = load_student(checkpoint)
        facts = model_facts(pin_model_dir(checkpoint))
        assert facts.fingerprint == student.fingerprint and facts.config == student.config
        for side in SIDES:
            for dtype in ("float16", "int8"):
                assert facts.layout(side, dtype) == store_layout(student, side, dtype)


def test_a_checkpoint_without_its_record_is_proven_by_a_store_written_from_its_files(tmp_path, night_one,
                                                                                    tiny_checkpoint):
    """No fingerprint.json: the --store manifest's file fingerprint equal to the pin's proves the
    weight fingerprint; without a store (or with another model's) none is proven and the student
    is loaded, giving the same facts."""
    bare = Path(shutil.copytree(tiny_checkpoint, tmp_path / "bare"))
    (bare / RECORD_FILE).unlink()
    store = night_one / "out" / "store"
    expected = load_student(tiny_checkpoint).fingerprint
    assert proven_fingerprint(pin_model_dir(str(tiny_checkpoint))) == expected            # by its record
    assert proven_fingerprint(pin_model_dir(str(bare)), str(store)) == expected           # by the store
    assert proven_fingerprint(pin_model_dir(str(bare))) is None
    assert proven_fingerprint(pin_model_dir(str(bare)), str(tmp_path / "no-store")) is None
    assert model_facts(pin_model_dir(str(bare))).fingerprint == expected                  # loaded


def test_a_record_that_does_not_describe_the_files_proves_nothing(tmp_path, tiny_checkpoint):
    """A record listing other files (a weight file replaced after the save) is not trusted: the
    student is loaded, and its fingerprint is the new weights'."""
    from safetensors.torch import load_file, save_file

    changed = Path(shutil.copytree(tiny_checkpoint, tmp_path / "changed"))
    tensors = load_file(str(changed / "student.safetensors"))
    name = sorted(key for key in tensors if key.startswith("head."))[0]
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, str(changed / "student.safetensors"), metadata={"format": "pairscore-student"})
    pinned = pin_model_dir(str(changed))
    assert proven_fingerprint(pinned) is None
    facts = model_facts(pinned)
    assert facts.fingerprint == load_student(changed).fingerprint != load_student(tiny_checkpoint).fingerprint


def test_a_nan_head_weight_is_refused_before_the_pipeline_starts(tmp_path, night_one, tiny_checkpoint):
    """The head is loaded and checked in the launching process even though the encoder is not:
    a NaN in it is one error naming the checkpoint and the tensor, and nothing is written."""
    import torch
    from safetensors.torch import load_file, save_file

    from encoders.checkpoint import load_head
    from encoders.file_fingerprint import write_record

    poisoned = Path(shutil.copytree(tiny_checkpoint, tmp_path / "poisoned"))
    tensors = load_file(str(poisoned / "student.safetensors"))
    name = sorted(key for key in tensors if key.startswith("head."))[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(poisoned / "student.safetensors"), metadata={"format": "pairscore-student"})
    # A record that describes the poisoned files, as a save of NaN weights would write.
    write_record(poisoned, json.loads((Path(tiny_checkpoint) / RECORD_FILE).read_text())["weight_fingerprint"])
    assert proven_fingerprint(pin_model_dir(str(poisoned))) is not None
    assert load_head(str(poisoned)).head is not None
    with pytest.raises(ValueError, match=r"has weights that are not finite numbers .* \(" + re.escape(name)):
        model_facts(pin_model_dir(str(poisoned)))


def test_loading_a_student_stays_quiet(tiny_checkpoint):
    """transformers is imported lazily now; its load reports ("BertModel LOAD REPORT", a table of
    the pooler's missing weights) and progress bars must stay off all the same (encoders.sources
    turns them off when imported)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    done = subprocess.run([sys.executable, "-c", "import sys\nfrom encoders.checkpoint import load_student\n"
                           "load_student(sys.argv[1])", tiny_checkpoint],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for noise in ("LOAD REPORT", "Loading weights", "MISSING"):
        assert noise not in done.stdout + done.stderr
