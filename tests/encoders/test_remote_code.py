"""A checkpoint can never run its own Python: a model directory whose config has an ``auto_map``
or that ships ``*.py`` files is refused before anything is loaded, with no prompt, even when
``y`` is waiting on stdin (transformers would otherwise ask and then import the code)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from encoders.checkpoint import load_student
from encoders.config import StudentConfig
from encoders.sources import load_config, load_pretrained
from encoders.teacher import TeacherTask, build_teacher, load_teacher

REPO = Path(__file__).resolve().parents[2]


def plant_code(model_dir: Path, marker: Path, *, auto_map: bool = True, python: bool = True) -> None:
    """Turn a Hugging Face directory into one that runs code on load: a custom model type with an
    auto_map pointing at a configuration/modeling module that writes ``marker`` when imported."""
    code = (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('the checkpoint ran its code')\n"
            "from transformers import BertConfig, BertModel\n"
            "class EvilConfig(BertConfig):\n    model_type = 'evil-bert'\n"
            "class EvilModel(BertModel):\n    config_class = EvilConfig\n")
    if python:
        (model_dir / "configuration_evil.py").write_text(code)
        (model_dir / "modeling_evil.py").write_text(code)
    if auto_map:
        config = json.loads((model_dir / "config.json").read_text())
        config["model_type"] = "evil-bert"
        config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel",
                              "AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
        (model_dir / "config.json").write_text(json.dumps(config))


@pytest.fixture()
def marker(tmp_path) -> Path:
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "checkpoint code ran"


@pytest.fixture()
def evil_student(tmp_path, tiny_checkpoint, marker) -> Path:
    target = Path(shutil.copytree(tiny_checkpoint, tmp_path / "evil-student"))
    plant_code(target / "encoder", marker)
    return target


def test_score_pairs_refuses_with_y_on_stdin(tmp_path, evil_student, marker):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"left": "a question", "right": "an answer"}) + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "jobs.score_pairs", "--pairs", str(pairs), "--model", str(evil_student),
         "--output", str(tmp_path / "out")],
        input="y\n" * 100, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "ships code that transformers would run" in result.stderr
    assert f"{evil_student / 'encoder' / 'config.json'} has an auto_map" in result.stderr
    assert f"{evil_student / 'encoder' / 'modeling_evil.py'} is Python code" in result.stderr
    assert "[y/N]" not in result.stdout + result.stderr   # never prompted
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("auto_map, python", [(True, False), (False, True)])
def test_either_sign_of_code_is_enough(tmp_path, tiny_checkpoint, marker, auto_map, python):
    target = Path(shutil.copytree(tiny_checkpoint, tmp_path / "student"))
    plant_code(target / "encoder", marker, auto_map=auto_map, python=python)
    with pytest.raises(ValueError, match="ships code that transformers would run"):
        load_student(target)


def test_a_pretrained_encoder_with_code_is_refused(tmp_path, tiny_encoder_dir, marker):
    encoder = Path(shutil.copytree(tiny_encoder_dir, tmp_path / "encoder"))
    plant_code(encoder, marker)
    with pytest.raises(ValueError, match=r"encoder .* ships code .*config\.json has an auto_map"):
        load_pretrained(str(encoder), 2)
    with pytest.raises(ValueError, match="ships code"):   # train_student's check of --encoder
        load_config(str(encoder))
    with pytest.raises(ValueError, match="ships code"):
        from encoders.checkpoint import build_student
        build_student(StudentConfig(encoder=str(encoder), encoder_layers=2, left_tokens=2, right_tokens=2, dim=4))


def test_teachers_with_code_are_refused(tmp_path, tiny_teacher_dir, tiny_encoder_dir, marker):
    teacher = Path(shutil.copytree(tiny_teacher_dir, tmp_path / "teacher"))
    plant_code(teacher, marker)
    with pytest.raises(ValueError, match=r"teacher .* ships code"):
        load_teacher(teacher)
    base = Path(shutil.copytree(tiny_encoder_dir, tmp_path / "base"))
    plant_code(base, marker, auto_map=False)
    with pytest.raises(ValueError, match=r"base model .*modeling_evil\.py is Python code"):
        build_teacher(str(base), TeacherTask("binary", max_length=16))


def test_clean_checkpoints_still_load(tiny_checkpoint):
    assert load_student(tiny_checkpoint).head is not None
