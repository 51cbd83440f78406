"""The teacher cross-encoder: task rules, soft labels, losses, checkpoint round trip, predict."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from encoders.teacher import (TEACHER_FILE, TeacherTask, build_teacher, load_teacher, save_teacher, soft_labels)


@pytest.mark.parametrize("label, target", [(0, 0.0), (1, 1.0), ("1", 1.0), (" 0 ", 0.0), (True, 1.0), (1.0, 1.0)])
def test_binary_targets(label, target):
    assert TeacherTask("binary").target(label) == target


@pytest.mark.parametrize("task, label, message", [
    (TeacherTask("binary"), 2, "not 0 or 1"),
    (TeacherTask("binary"), 0.5, "not 0 or 1"),
    (TeacherTask("binary"), "yes", "not a number"),
    (TeacherTask("binary"), "nan", "not a finite number"),
    (TeacherTask("binary"), [1], "list, not a number"),
    (TeacherTask("graded", label_range=(0, 5)), 5.5, "outside the label range 0..5"),
    (TeacherTask("graded", label_range=(0, 5)), True, "boolean"),
    (TeacherTask("classes", num_classes=3), 3, "not a class index 0..2"),
    (TeacherTask("classes", num_classes=3), 1.5, "not a class index"),
    (TeacherTask("classes", num_classes=3), -1, "not a class index"),
])
def test_bad_labels_are_refused_with_the_reason(task, label, message):
    with pytest.raises(ValueError, match=message):
        task.target(label)


def test_graded_and_class_targets():
    assert TeacherTask("graded", label_range=(0, 5)).target("2.5") == 0.5
    assert TeacherTask("graded", label_range=(1, 5)).target(5) == 1.0
    assert TeacherTask("classes", num_classes=3).target("2") == 2.0


@pytest.mark.parametrize("kwargs, message", [
    ({"task": "ranking"}, "task='ranking' is not allowed"),
    ({"task": "graded"}, "needs label_range"),
    ({"task": "graded", "label_range": (5, 0)}, "LOW < HIGH"),
    ({"task": "binary", "loss": "mse"}, "loss='mse' is not allowed for task 'binary'"),
    ({"task": "classes"}, "num_classes=None is not allowed"),
    ({"task": "classes", "num_classes": 1}, "at least 2"),
    ({"task": "binary", "num_classes": 3}, "only for task 'classes'"),
    ({"task": "binary", "label_range": (0, 1)}, "only for task 'graded'"),
    ({"task": "binary", "max_length": 2}, "max_length=2"),
])
def test_task_validation_names_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TeacherTask(**kwargs)


def test_task_json_round_trip():
    task = TeacherTask("graded", loss="mse", label_range=(0, 5), max_length=64)
    data = json.loads(task.to_json())
    assert data["num_outputs"] == 1 and "(y - 0) / 5" in data["label_mapping"]
    assert TeacherTask.from_dict(data) == task
    assert TeacherTask("binary").loss == "bce" and TeacherTask("classes", num_classes=4).loss == "ce"


def test_soft_labels_are_sigmoid_and_softmax_at_temperature():
    z = np.array([[-800.0], [-3.0], [0.0], [2.5], [800.0]], dtype=np.float32)
    for t in (0.5, 1.0, 2.0):
        expected = np.array([0.0, 1 / (1 + math.exp(3 / t)), 0.5, 1 / (1 + math.exp(-2.5 / t)), 1.0])
        np.testing.assert_allclose(soft_labels(z, t), expected, rtol=1e-6, atol=1e-30)
    k = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]], dtype=np.float32)
    probs = soft_labels(k, 2.0)
    np.testing.assert_allclose(probs, torch.softmax(torch.tensor(k, dtype=torch.float64) / 2, 1).numpy(),
                               rtol=1e-6, atol=1e-30)
    assert probs.dtype == np.float32 and probs.shape == (2, 3)
    with pytest.raises(ValueError, match="temperature=0"):
        soft_labels(z, 0)


def test_losses():
    logits = torch.tensor([[0.3], [-1.2], [2.0]])
    targets = torch.tensor([1.0, 0.0, 0.4])
    assert torch.isclose(TeacherTask("binary").loss_value(logits, targets),
                         F.binary_cross_entropy_with_logits(logits[:, 0], targets))
    graded = TeacherTask("graded", loss="mse", label_range=(0, 1))
    assert torch.isclose(graded.loss_value(logits, targets), ((torch.sigmoid(logits[:, 0]) - targets) ** 2).mean())
    k = torch.tensor([[0.1, 0.2, 3.0], [1.0, 0.0, 0.0]])
    assert torch.isclose(TeacherTask("classes", num_classes=3).loss_value(k, torch.tensor([2.0, 0.0])),
                         F.cross_entropy(k, torch.tensor([2, 0])))


@pytest.fixture(scope="module")
def tiny_teacher(tiny_encoder_dir):
    return build_teacher(tiny_encoder_dir, TeacherTask("binary", max_length=24), seed=3)


def test_checkpoint_round_trip_is_safetensors_and_keeps_the_fingerprint(tmp_path, tiny_teacher):
    save_teacher(tiny_teacher, tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", TEACHER_FILE, "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    loaded = load_teacher(tmp_path)
    assert loaded.fingerprint == tiny_teacher.fingerprint and len(loaded.fingerprint) == 64
    assert loaded.task == tiny_teacher.task
    lefts, rights = ["a cat", "how do I cook rice?"], ["a dog", "rice cooking tips"]
    np.testing.assert_allclose(loaded.predict_texts(lefts, rights), tiny_teacher.predict_texts(lefts, rights), atol=1e-6)
    # A standard Hugging Face checkpoint: loads without pairscore.
    from transformers import AutoModelForSequenceClassification
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path, use_safetensors=True).eval()
    batch = loaded.collate(loaded.tokenize(lefts[:1], rights[:1]))
    with torch.no_grad():
        assert torch.allclose(plain(**batch).logits, loaded(batch), atol=1e-6)


def test_fingerprint_follows_weights_and_task(tiny_encoder_dir, tiny_teacher):
    other_seed = build_teacher(tiny_encoder_dir, TeacherTask("binary", max_length=24), seed=4)
    longer = build_teacher(tiny_encoder_dir, TeacherTask("binary", max_length=32), seed=3)
    assert len({tiny_teacher.fingerprint, other_seed.fingerprint, longer.fingerprint}) == 3


def test_predict_by_length_equals_one_pair_at_a_time(tiny_teacher):
    lefts = ["short", "a much longer question about many different things here", "mid length text", "x"]
    rights = ["y", "z", "another mid length text", "a long long long long long long answer"]
    batched = tiny_teacher.predict_texts(lefts, rights, batch_size=3)
    singles = np.concatenate([tiny_teacher.predict_texts([l], [r]) for l, r in zip(lefts, rights)])
    assert batched.shape == (4, 1) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, singles, atol=1e-5)


def test_tokenize_truncates_pairs_to_max_length(tiny_teacher):
    pairs = tiny_teacher.tokenize(["word " * 50, "hi"], ["other " * 50, "there"])
    assert pairs[0].num_tokens == 24 and pairs[0].truncated
    assert not pairs[1].truncated and pairs[1].num_tokens == 5  # [CLS] hi [SEP] there [SEP]
    assert pairs[1].token_type_ids == [0, 0, 0, 1, 1]


def test_plain_encoder_is_not_a_teacher(tiny_encoder_dir, tmp_path):
    with pytest.raises(ValueError, match="not a trained cross-encoder"):
        load_teacher(tiny_encoder_dir)
    with pytest.raises(ValueError, match="does not exist"):
        load_teacher(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_teacher(str(tmp_path / "empty"))


def test_cross_encoder_trained_elsewhere_loads_without_teacher_json(tmp_path, tiny_encoder_dir):
    """Any sequence-classification checkpoint with its head is a teacher: task from num_labels."""
    for classes, expected in ((1, "binary"), (3, "classes")):
        task = TeacherTask("binary") if classes == 1 else TeacherTask("classes", num_classes=classes)
        target = Path(tmp_path / f"foreign-{classes}")
        save_teacher(build_teacher(tiny_encoder_dir, task), target)
        (target / TEACHER_FILE).unlink()
        loaded = load_teacher(target)
        assert loaded.task.task == expected and loaded.task.num_outputs == classes
        assert loaded.task.max_length == 256  # the tiny encoder's position embeddings


def test_bad_teacher_json_is_named(tmp_path, tiny_teacher):
    save_teacher(tiny_teacher, tmp_path)
    (tmp_path / TEACHER_FILE).write_text('{"format": "pairscore-teacher", "version": 1, "task": "regression"}')
    with pytest.raises(ValueError, match="teacher.json.*task='regression'"):
        load_teacher(tmp_path)


def test_max_length_beyond_position_embeddings_is_refused(tiny_encoder_dir):
    with pytest.raises(ValueError, match="max_length=300.*stop at 256"):
        build_teacher(tiny_encoder_dir, TeacherTask("binary", max_length=300))
