"""Shared fixtures: tiny random encoders (fast), the packaged MiniLM (realism), shared data."""
from __future__ import annotations

import os
from pathlib import Path

# Nothing may download during tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# No periodic progress lines in tests (the jobs run here, their subprocesses and their Beam workers
# inherit it): on a loaded machine a job reaches its error or its summary after the 30-second progress
# interval, and a test reading its output would then see an extra line. Tests of the progress line
# set their own interval.
os.environ["PAIRSCORE_PROGRESS_SECONDS"] = "inf"

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def worker_pool_env() -> dict[str, str]:
    """The environment for a Beam worker pool (``worker_pool_main``) started by a test: the checkout
    on PYTHONPATH and, first on PATH, the directory of the interpreter running the tests. The pool
    starts each worker as a plain ``python`` found on PATH; from a virtual environment that is not
    on PATH that ``python`` would lack Beam, and every worker would die at import."""
    import sys

    python_dir = os.path.dirname(sys.executable)
    return dict(os.environ,
                PATH=os.pathsep.join([python_dir, os.environ.get("PATH", "")]),
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a skip that says why (CI always has it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}; these tests read real pairs from there")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> str:
    """A 3-layer, 32-wide random BERT with the packaged MiniLM tokenizer, saved as a local
    Hugging Face directory (safetensors)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from encoders.sources import DEFAULT_ENCODER, resolve_encoder

    target = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder(DEFAULT_ENCODER))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=3,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=256)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return str(target)


@pytest.fixture(scope="session")
def tiny_student_config(tiny_encoder_dir):
    from encoders.config import StudentConfig
    return StudentConfig(encoder=tiny_encoder_dir, encoder_layers=2, left_tokens=4, right_tokens=6,
                         left_max_length=16, right_max_length=24, dim=8, pooled=True, head="dipair",
                         head_options={})


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_student_config) -> str:
    """A saved student checkpoint around the tiny encoder."""
    from encoders.checkpoint import build_student, save_student
    target = tmp_path_factory.mktemp("tiny-student")
    save_student(build_student(tiny_student_config, seed=1), target)
    return str(target)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tiny_encoder_dir) -> str:
    """A binary cross-encoder teacher (random head, seed 0) around the tiny encoder, saved as a
    teacher checkpoint (max length 32)."""
    from encoders.teacher import TeacherTask, build_teacher, save_teacher
    target = tmp_path_factory.mktemp("tiny-teacher")
    save_teacher(build_teacher(tiny_encoder_dir, TeacherTask("binary", max_length=32), seed=0), target)
    return str(target)


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody may write to: chmod for a normal user, the immutable flag for root
    (root ignores permissions); skipped where neither works."""
    import shutil
    import subprocess

    target = tmp_path / "read-only"
    target.mkdir()
    if os.geteuid() != 0:
        target.chmod(0o555)
        yield target
        target.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(target)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: cannot make a read-only directory")
    yield target
    subprocess.run(["chattr", "-i", str(target)], check=True)
