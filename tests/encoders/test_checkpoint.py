"""The student checkpoint: round trip, fingerprint, no pickles, clear errors."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from encoders.checkpoint import build_student, load_head, load_student, read_config, save_student

TEXTS = ["a checkpoint must give the same embeddings", "after it is saved and loaded", "x"]


def test_round_trip_gives_identical_outputs_and_fingerprint(tiny_checkpoint):
    first = load_student(tiny_checkpoint)
    second = load_student(tiny_checkpoint)
    assert first.fingerprint == second.fingerprint
    assert len(first.fingerprint) == 64
    for side in ("left", "right"):
        a = first.encoder.side(side).encode(TEXTS)
        b = second.encoder.side(side).encode(TEXTS)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)


def test_saved_student_equals_the_built_one(tmp_path, tiny_student_config):
    built = build_student(tiny_student_config, seed=5)
    save_student(built, tmp_path / "ckpt")
    loaded = load_student(tmp_path / "ckpt")
    assert loaded.fingerprint == built.fingerprint
    assert torch.allclose(loaded.encoder.left.encode(TEXTS).tokens, built.encoder.left.encode(TEXTS).tokens,
                          atol=1e-6)
    assert loaded.encoder.left.transformer.config.num_hidden_layers == 2  # only K layers saved


def test_head_alone_is_the_checkpoints_head_without_the_encoder(tiny_checkpoint, monkeypatch):
    """Stage two's workers load the head alone: the same weights, and no encoder weight is read."""
    import encoders.checkpoint as checkpoint
    full = load_student(tiny_checkpoint)
    monkeypatch.setattr(checkpoint, "_load_transformer", lambda *a: pytest.fail("the encoder was loaded"))
    head_only = load_head(tiny_checkpoint)
    assert head_only.encoder is None and head_only.config == full.config
    expected = full.head.state_dict()
    assert set(head_only.head.state_dict()) == set(expected)
    assert all(torch.equal(v, expected[k]) for k, v in head_only.head.state_dict().items())
    baseline = load_head(None)
    assert baseline.config.head == "pooled-cos" and baseline.encoder is None


def test_layout_is_json_and_safetensors_only(tiny_checkpoint):
    files = {p.relative_to(tiny_checkpoint).as_posix() for p in Path(tiny_checkpoint).rglob("*") if p.is_file()}
    assert {"config.json", "student.safetensors", "encoder/model.safetensors", "encoder/config.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    config = json.loads((Path(tiny_checkpoint) / "config.json").read_text())
    assert config["format"] == "pairscore-student" and config["left_tokens"] == 4


def test_loading_never_unpickles(tiny_checkpoint, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    load_student(tiny_checkpoint)


def test_fingerprint_changes_with_any_weight(tmp_path, tiny_checkpoint):
    copy = tmp_path / "changed"
    shutil.copytree(tiny_checkpoint, copy)
    student = load_student(copy)
    before = student.fingerprint
    with torch.no_grad():
        student.encoder.right.projection.bias[0] += 1e-3
    save_student(student, copy)
    assert load_student(copy).fingerprint != before


def test_fingerprint_ignores_tokenizer_call_state(tiny_checkpoint):
    student = load_student(tiny_checkpoint)
    student.encoder.left.encode(TEXTS)  # sets truncation state on the shared tokenizer
    assert student.fingerprint == load_student(tiny_checkpoint).fingerprint


def test_unshared_encoders_round_trip(tmp_path, tiny_student_config):
    built = build_student(tiny_student_config.replace(shared_encoder=False), seed=2)
    assert built.encoder.left.transformer is not built.encoder.right.transformer
    save_student(built, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "left_encoder").is_dir() and (tmp_path / "ckpt" / "right_encoder").is_dir()
    assert load_student(tmp_path / "ckpt").fingerprint == built.fingerprint


def test_incomplete_checkpoint_names_what_is_missing(tmp_path, tiny_checkpoint):
    copy = tmp_path / "incomplete"
    shutil.copytree(tiny_checkpoint, copy)
    (copy / "student.safetensors").unlink()
    with pytest.raises(ValueError, match="incomplete: missing student.safetensors"):
        load_student(copy)
    (copy / "config.json").unlink()
    with pytest.raises(ValueError, match="incomplete: missing config.json"):
        load_student(copy)


def test_unknown_head_is_refused_before_loading_weights(tmp_path, tiny_checkpoint):
    copy = tmp_path / "unknown-head"
    shutil.copytree(tiny_checkpoint, copy)
    config = json.loads((copy / "config.json").read_text())
    config["head"] = "bogus-head"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown head 'bogus-head'; known heads: .*dipair"):
        read_config(copy)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_student(tmp_path / "nope")
