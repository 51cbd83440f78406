"""``jobs.train_student``: the loss by hand, the two-stage freeze, the stage-1 cache, bad rows with
exact counts, every head, k classes, the checkpoint through ``score_pairs``, bad arguments."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from encoders.checkpoint import build_student, load_student
from encoders.sources import load_pretrained
from jobs import train_student
from encoders.metrics import roc_auc
from jobs.score_pairs import ScorePairsJob
from jobs.score_pairs import run as score_pairs_run
from encoders.inference import Pairs, pair_logits
from encoders import frozen_states
from encoders.frozen_states import FrozenStates, project
from encoders.distill import Trainer, distillation_loss, loss_floor
from jobs.train_student import TrainStudentJob, run, train
from pipeline.text_ids import text_id

WORDS = ["apple", "river", "engine", "violin", "desert", "planet", "copper", "garden", "falcon", "marble"]


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def distill_rows(count: int = 48) -> list[dict]:
    """A learnable toy distillation set: the teacher says yes exactly when the right text starts
    with "yes"; every pair has a human label too (as a string, the way JSONL kept columns come)."""
    rows = []
    for i in range(count):
        a, b = WORDS[i % len(WORDS)], WORDS[(3 * i + 1) % len(WORDS)]
        z = 3.0 if i % 2 else -3.0
        rows.append({"left": f"is {a} like {b}", "right": f"{'yes' if i % 2 else 'no'} {a} and {b}",
                     "logit": z, "soft_label": sigmoid(z), "label": str(i % 2)})
    return rows


def write_distill(directory: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), directory / "part-00000-of-00001.parquet")
    return directory


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return path


def dev_rows(rows: list[dict]) -> list[dict]:
    return [{"left": r["left"], "right": r["right"], "label": int(r["label"])} for r in rows]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("toy")
    rows = distill_rows()
    return {"distill": write_distill(tmp / "distill", rows), "dev": write_jsonl(tmp / "dev.jsonl", dev_rows(rows[:20])),
            "tmp": tmp}


def tiny_job(toy, tiny_encoder_dir, output, **changes) -> TrainStudentJob:
    settings = dict(distill=(str(toy["distill"]),), dev=(str(toy["dev"]),), output=str(output), head="dipair",
                    encoder=tiny_encoder_dir, layers=2, n=4, m=6, dim=8, left_max_length=16, right_max_length=24,
                    stage1_epochs=2, stage2_epochs=1, batch_size=16, stage1_batch_size=16, progress=False)
    settings.update(changes)
    return TrainStudentJob(**settings)


def encoder_weights(student) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in student.encoder.left.transformer.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- loss

def test_cross_entropy_on_soft_labels_by_hand():
    # DiPair eq. (1), -(p log s + (1 - p) log(1 - s)) with s = sigmoid(z), for z = 0, p = 0.5 and z = 2, p = 0.9.
    first = math.log(2)
    second = -(0.9 * math.log(sigmoid(2)) + 0.1 * math.log(1 - sigmoid(2)))
    loss = distillation_loss(torch.tensor([[0.0], [2.0]]), torch.tensor([[0.5], [0.9]]), None,
                             torch.tensor([math.nan, math.nan]), 0.5, "ce")
    assert float(loss) == pytest.approx((first + second) / 2, rel=1e-6)
    assert (first + second) / 2 == pytest.approx(0.5100376, abs=1e-6)


def test_k_class_cross_entropy_and_mse_by_hand():
    # -sum p_c log softmax(z)_c for z = (1, 2, 3), p = (0.2, 0.3, 0.5).
    lse = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    expected = -(0.2 * (1 - lse) + 0.3 * (2 - lse) + 0.5 * (3 - lse))
    loss = distillation_loss(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.2, 0.3, 0.5]]), None,
                             torch.tensor([math.nan]), 0.0, "ce")
    assert float(loss) == pytest.approx(expected, rel=1e-6) and expected == pytest.approx(1.1076059, abs=1e-6)
    # MSE on logits: ((1 - 2)^2 + (-1 - 0.5)^2) / 2 = 1.625, whatever the soft labels say.
    mse = distillation_loss(torch.tensor([[1.0], [-1.0]]), torch.tensor([[0.0], [1.0]]),
                            torch.tensor([[2.0], [0.5]]), torch.tensor([math.nan, math.nan]), 0.5, "mse")
    assert float(mse) == pytest.approx(1.625)


def test_human_labels_are_mixed_in_with_their_weight():
    # Pair 1 (z = 2, p = 0.9, human 0, w = 0.5): 0.5 * CE(p) + 0.5 * -log(1 - s(2)); pair 2 has no human label.
    teacher_part = -(0.9 * math.log(sigmoid(2)) + 0.1 * math.log(1 - sigmoid(2)))
    human_part = -math.log(1 - sigmoid(2))
    expected = ((0.5 * teacher_part + 0.5 * human_part) + math.log(2)) / 2
    loss = distillation_loss(torch.tensor([[2.0], [0.0]]), torch.tensor([[0.9], [0.5]]), None,
                             torch.tensor([0.0, math.nan]), 0.5, "ce")
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # Weight 0: the human label is ignored.
    only_teacher = distillation_loss(torch.tensor([[2.0]]), torch.tensor([[0.9]]), None, torch.tensor([0.0]), 0.0)
    assert float(only_teacher) == pytest.approx(teacher_part, rel=1e-6)


def test_loss_floor_is_reached_at_the_targets_logits():
    soft = torch.tensor([[0.9], [0.2], [0.5]])
    human = torch.tensor([1.0, math.nan, 0.0])
    floor = loss_floor(soft, human, 0.25)
    mixed = torch.tensor([0.75 * 0.9 + 0.25, 0.2, 0.75 * 0.5])
    at_target = distillation_loss(torch.logit(mixed)[:, None], soft, None, human, 0.25)
    assert float(at_target) == pytest.approx(floor, rel=1e-5)
    entropy = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert floor == pytest.approx(np.mean([entropy(0.925), entropy(0.2), entropy(0.375)]), rel=1e-6)  # float32 soft labels


# --------------------------------------------------------------------------- the stage-1 cache

@pytest.mark.parametrize("shared, lengths", [(True, (16, 16)), (False, (16, 24))])
def test_frozen_states_give_what_the_encoder_gives(tiny_student_config, shared, lengths):
    """Projection + head on cached states equals the student run on the texts, with the one shared
    view (max(N, M) tokens, sliced) and with one view per side."""
    config = tiny_student_config.replace(shared_encoder=shared, left_max_length=lengths[0],
                                         right_max_length=lengths[1], pooled=False)
    student = build_student(config, seed=3)
    lefts = ["is apple like river", "a much longer question about the copper engine and its violin", "x"]
    rights = ["yes apple", "no", "an answer that is rather long and keeps going past the kept tokens"]
    cache = FrozenStates(student, {"left": lefts, "right": rights}, batch_size=2, device="cpu")
    assert len(cache.states) == (1 if shared else 2) and cache.texts == (6 if shared else 6)
    pairs = Pairs.of(lefts, rights)
    with torch.no_grad():
        cached = cache.logits(student, cache.pair_rows(pairs), "cpu")
        for side, texts in (("left", lefts), ("right", rights)):
            encoder = student.encoder.side(side)
            batch = encoder.collate(encoder.tokenize(texts))
            direct = encoder(batch.input_ids, batch.attention_mask)
            view = cache.view[side]
            rows = torch.tensor([cache.rows[view][t] for t in texts])
            n = config.tokens(side)
            assert torch.equal(cache.mask[view][rows, :n], direct.mask)
            torch.testing.assert_close(project(encoder, cache.states[view][rows, :n], direct.mask), direct.tokens,
                                       atol=1e-5, rtol=1e-5)
    reference = student.score_texts(lefts, rights)
    torch.testing.assert_close(cached, reference, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- two stages

def test_two_stage_freeze(tmp_path, toy, tiny_encoder_dir, monkeypatch):
    """Stage 1 leaves every encoder weight as pretrained and trains projection + head; stage 2
    changes the encoder."""
    after = {}
    original = Trainer.train_stage

    def recording(self, stage, rng):
        before_head = {k: v.clone() for k, v in self.student.head.state_dict().items()}
        records = original(self, stage, rng)
        after[stage.name] = (encoder_weights(self.student), before_head,
                             {k: v.clone() for k, v in self.student.head.state_dict().items()})
        return records
    monkeypatch.setattr(Trainer, "train_stage", recording)
    summary, student = train(tiny_job(toy, tiny_encoder_dir, tmp_path / "s", lr=5e-3, stage2_lr=5e-3,
                                      encoder_lr=5e-3, stage1_epochs=3, patience=3), argv=[])
    pretrained = {k: v for k, v in load_pretrained(tiny_encoder_dir, 2)[0].state_dict().items()}
    encoder_after_1, head_before_1, head_after_1 = after["stage1"]
    assert same_weights(encoder_after_1, pretrained)
    assert not same_weights(head_before_1, head_after_1)
    assert not same_weights(after["stage2"][0], pretrained)
    assert [r["stage"] for r in summary.metrics["epochs"]] == ["stage1"] * 3 + ["stage2"]
    assert summary.counts["stage1_texts_cached"] == len({*(r["left"] for r in distill_rows()),
                                                         *(r["right"] for r in distill_rows())})
    # The checkpoint is the best epoch of the whole run, and the in-memory student is that one too.
    best = summary.metrics["best_stage"]
    saved = load_student(tmp_path / "s")
    assert same_weights(encoder_weights(saved), encoder_weights(student))
    assert same_weights(encoder_weights(saved), pretrained) == (best == "stage1")
    assert summary.model_fingerprints["student"] == saved.fingerprint


def test_stage2_epochs_0_keeps_the_encoder_frozen(tmp_path, toy, tiny_encoder_dir):
    """The cheapest student: stage 1 only; the checkpoint's encoder is the pretrained one."""
    summary, student = train(tiny_job(toy, tiny_encoder_dir, tmp_path / "frozen", stage1_epochs=2, patience=2,
                                      stage2_epochs=0), argv=[])
    assert {r["stage"] for r in summary.metrics["epochs"]} == {"stage1"} and summary.metrics["best_stage"] == "stage1"
    pretrained = dict(load_pretrained(tiny_encoder_dir, 2)[0].state_dict())
    assert same_weights(encoder_weights(load_student(tmp_path / "frozen")), pretrained)


def test_one_stage_trains_the_encoder_from_the_start(tmp_path, toy, tiny_encoder_dir, monkeypatch):
    monkeypatch.setattr(frozen_states, "FrozenStates", None)   # no stage 1: nothing may be cached
    summary, student = train(tiny_job(toy, tiny_encoder_dir, tmp_path / "one", stages=1, stage2_epochs=2,
                                      encoder_lr=5e-3), argv=[])
    assert [r["stage"] for r in summary.metrics["epochs"]] == ["one_stage"] * 2
    assert "stage1_texts_cached" not in summary.counts and summary.metrics["stage1_cache"] is None
    pretrained = load_pretrained(tiny_encoder_dir, 2)[0].state_dict()
    assert not same_weights(encoder_weights(student), dict(pretrained))


def test_stage1_learns_a_trivial_task_and_stops_early(tmp_path, toy, tiny_encoder_dir):
    # Without the cosine skip, which would already solve this toy task before the first step.
    summary = run(tiny_job(toy, tiny_encoder_dir, tmp_path / "learn", stage1_epochs=30, patience=3, lr=1e-2,
                           stages=2, warmup=0.0, cosine_skip=False), argv=[])
    stage1 = [r for r in summary.metrics["epochs"] if r["stage"] == "stage1"]
    assert stage1[-1]["train_loss"] < 0.6 * stage1[0]["train_loss"], [r["train_loss"] for r in stage1]
    assert summary.metrics["best_dev"]["auc"] == 1.0
    # It stopped once dev (AUC, then log loss) had not improved for 3 epochs, before the 30 allowed.
    if len(stage1) < 30:
        assert stage1[-1]["early_stop"] and not any(r["best_so_far"] for r in stage1[-3:])
    assert summary.metrics["train_loss_floor"] == pytest.approx(-(sigmoid(3) * math.log(sigmoid(3)) + sigmoid(-3)
                                                                  * math.log(sigmoid(-3))), rel=1e-5)


def test_cache_dir_is_reused_by_the_next_head(tmp_path, toy, tiny_encoder_dir):
    cache = tmp_path / "cache"
    # Equal max lengths with a shared encoder: one view, one file, for both sides.
    first = run(tiny_job(toy, tiny_encoder_dir, tmp_path / "a", cache_dir=str(cache), left_max_length=24), argv=[])
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1 and first.metrics["stage1_cache"]["reused"] == []
    second = run(tiny_job(toy, tiny_encoder_dir, tmp_path / "b", cache_dir=str(cache), head="de-ffnn",
                          left_max_length=24), argv=[])
    assert second.metrics["stage1_cache"]["reused"] == [str(files[0])]
    # Same texts, same encoder: the first run's stage-1 dev metrics come back exactly with the file.
    again = run(tiny_job(toy, tiny_encoder_dir, tmp_path / "c", cache_dir=str(cache), left_max_length=24), argv=[])
    assert again.metrics["epochs"][0]["dev"] == first.metrics["epochs"][0]["dev"]


# --------------------------------------------------------------------------- every head, the checkpoint

@pytest.mark.parametrize("head", ["dipair", "dipair-ffnn", "li", "de-ffnn", "de-cos"])
def test_every_head_trains_and_its_checkpoint_predicts_as_trained(tmp_path, toy, tiny_encoder_dir, head):
    summary, student = train(tiny_job(toy, tiny_encoder_dir, tmp_path / head, head=head, head_layers=None
                                      if head == "de-cos" else 1), argv=[])
    saved = load_student(tmp_path / head)
    assert saved.config.head == head and saved.config.num_outputs == 1
    dev = [json.loads(line) for line in toy["dev"].read_text().splitlines()]
    pairs = Pairs.of([r["left"] for r in dev], [r["right"] for r in dev])
    trained, _ = pair_logits(student, pairs, "cpu")
    loaded, _ = pair_logits(saved, pairs, "cpu")
    np.testing.assert_allclose(loaded, trained, atol=1e-6)
    # The recorded best dev AUC is what the saved weights give.
    assert roc_auc(loaded[:, 0], np.array([r["label"] for r in dev])) == pytest.approx(summary.metrics["best_dev"]["auc"])


def test_checkpoint_through_score_pairs_equals_the_trained_model(tmp_path, toy, tiny_encoder_dir):
    """The saved checkpoint is what score_pairs --model loads, and its scores are the trained
    model's own predictions (float16 store tolerance)."""
    output = tmp_path / "student"
    # Without the cosine skip: on this tiny random encoder every pooled cosine is near 0.95, so the
    # fitted skip scale is in the hundreds and amplifies the float16 rounding of the stored pooled
    # embeddings past any useful tolerance. The skip's path through the store is tested with the
    # real MiniLM in tests/jobs/test_score_pairs.py.
    _, student = train(tiny_job(toy, tiny_encoder_dir, output, lr=1e-2, warmup=0.0, stage1_epochs=30, patience=3,
                                cosine_skip=False), argv=[])
    rows = distill_rows()[:30] + [{"left": "a question never seen in training?", "right": "yes an answer"}]
    pairs_file = write_jsonl(tmp_path / "pairs.jsonl", [{"left": r["left"], "right": r["right"]} for r in rows])
    scored = tmp_path / "scored"
    score_pairs_run(ScorePairsJob(pairs=(str(pairs_file),), output=str(scored), model_dir=str(output)), [], argv=[])
    table = pa.concat_tables([pq.read_table(p) for p in (scored / "scores").glob("part-*.parquet")]).to_pylist()
    got = {(r["left_id"], r["right_id"]): r["score"] for r in table}
    logits, _ = pair_logits(student, Pairs.of([r["left"] for r in rows], [r["right"] for r in rows]), "cpu")
    expected = torch.sigmoid(torch.from_numpy(logits[:, 0])).numpy()
    np.testing.assert_allclose([got[(text_id(r["left"]), text_id(r["right"]))] for r in rows], expected, atol=2e-3)
    assert np.ptp(expected) > 0.2   # trained scores far apart, so the tolerance above is a real test


# --------------------------------------------------------------------------- data

def test_bad_rows_are_skipped_and_counted_exactly(tmp_path, tiny_encoder_dir):
    good = distill_rows(12)
    bad = [
        {"left": "", "right": "x", "logit": 0.0, "soft_label": 0.5, "label": "1"},            # left_empty_text
        {"left": "a", "right": None, "logit": 0.0, "soft_label": 0.5, "label": "1"},          # right_null_text
        {"left": "a", "right": "b", "logit": 0.0, "soft_label": None, "label": "1"},          # null_label
        {"left": "a", "right": "b", "logit": 0.0, "soft_label": 1.5, "label": "1"},           # invalid_label
        {"left": "a", "right": "b", "logit": float("nan"), "soft_label": 0.5, "label": "1"},  # invalid_label
        {"left": "a", "right": "b", "logit": 0.0, "soft_label": 0.5, "label": "maybe"},       # invalid_label
        {"left": "a", "right": "b", "logit": 0.0, "soft_label": 0.5, "label": None},          # fine: no human label
    ]
    distill = write_distill(tmp_path / "d", good + bad)
    dev = write_jsonl(tmp_path / "dev.jsonl", dev_rows(good[:6]) + [{"left": "q", "right": "r", "label": 3}])
    output = tmp_path / "o"
    summary = run(TrainStudentJob(max_dead_letter_fraction=1.0,
                                  distill=(str(distill),), dev=(str(dev),), output=str(output), head="de-ffnn",
                                  encoder=tiny_encoder_dir, layers=1, n=2, m=2, dim=8, left_max_length=16,
                                  right_max_length=16, stage1_epochs=1, stage2_epochs=1, human_label_col="label",
                                  swap=True, progress=False), argv=[])
    counts = summary.counts
    assert (counts["distill_rows_read"], counts["distill_pairs_used"], counts["distill_rows_skipped"]) == (19, 13, 6)
    assert counts["distill_pairs_with_human_label"] == 12 and counts["train_examples"] == 26   # --swap doubles
    assert (counts["dev_rows_read"], counts["dev_pairs_used"], counts["dev_rows_skipped"]) == (7, 6, 1)
    assert summary.dead_letters == {"invalid_label": 4, "left_empty_text": 1, "null_label": 1, "right_null_text": 1}
    letters = pq.read_table(output / "_dead_letter").to_pylist()
    assert len(letters) == 7 and any("outside [0, 1]" in l["detail"] for l in letters)
    assert "distill rows read 19 = used 13 + skipped 6" in summary.reconciliation


def test_sets_with_and_without_human_labels_mix(tmp_path, toy, tiny_encoder_dir):
    """Labeled training pairs next to mined pairs (no label column, no logits): both are read."""
    mined = write_distill(tmp_path / "mined", [{"left": r["left"], "right": r["right"] + " mined",
                                                "soft_label": r["soft_label"]} for r in distill_rows(10)])
    summary = run(tiny_job(toy, tiny_encoder_dir, tmp_path / "o", distill=(str(toy["distill"]), str(mined)),
                           human_label_col="label", head="de-ffnn"), argv=[])
    assert summary.counts["distill_pairs_used"] == 48 + 10
    assert summary.counts["distill_pairs_with_human_label"] == 48


def test_k_class_distillation_set_and_mse_loss(tmp_path, tiny_encoder_dir):
    """Soft labels over 3 classes (a k-class teacher) give a 3-output student; dev labels are classes."""
    rows = []
    for i in range(30):
        logits = [float(i % 3 == c) * 2.0 for c in range(3)]
        e = np.exp(logits)
        rows.append({"left": f"is {WORDS[i % 10]} good", "right": f"grade {i % 3} {WORDS[(i + 4) % 10]}",
                     "logits": logits, "soft_labels": (e / e.sum()).tolist()})
    distill = write_distill(tmp_path / "k", rows)
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"left": r["left"], "right": r["right"], "label": i % 3}
                                               for i, r in enumerate(rows[:12])])
    summary = run(TrainStudentJob(distill=(str(distill),), dev=(str(dev),), output=str(tmp_path / "o"), head="dipair",
                                  encoder=tiny_encoder_dir, layers=1, n=3, m=3, dim=8, left_max_length=16,
                                  right_max_length=16, stage1_epochs=1, stage2_epochs=1, loss="mse",
                                  progress=False), argv=[])
    assert summary.metrics["task"]["task"] == "classes" and summary.metrics["task"]["num_classes"] == 3
    assert set(summary.metrics["best_dev"]) == {"accuracy", "log_loss"}
    assert summary.metrics["train_loss_floor"] == 0.0
    assert load_student(tmp_path / "o").config.num_outputs == 3


def test_task_comes_from_the_label_pairs_manifest(tmp_path, tiny_encoder_dir):
    """A graded teacher's set: dev labels are read on its label range (0..5 here), without --task."""
    distill = write_distill(tmp_path / "g", distill_rows(16))
    (distill / "_MANIFEST.json").write_text(json.dumps({
        "format": "pairscore-distillation", "schema_version": 1,
        "task": {"format": "pairscore-teacher", "version": 1, "task": "graded", "loss": "bce",
                 "label_range": [0, 5], "num_classes": None, "max_length": 64}}))
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"left": r["left"], "right": r["right"], "label": 5.0 * (i % 2)}
                                               for i, r in enumerate(distill_rows(8))] + [
        {"left": "a", "right": "b", "label": 7}])                                         # outside 0..5
    summary = run(TrainStudentJob(distill=(str(distill),), dev=(str(dev),), output=str(tmp_path / "o"), head="li",
                                  encoder=tiny_encoder_dir, layers=1, n=2, m=2, dim=8, left_max_length=16,
                                  right_max_length=16, stage1_epochs=1, stage2_epochs=1, progress=False), argv=[])
    assert summary.metrics["task"]["task"] == "graded" and summary.metrics["main_metric"] == "spearman"
    assert summary.dead_letters == {"invalid_label": 1}


# --------------------------------------------------------------------------- the command line

def test_command_line_end_to_end(tmp_path, toy, tiny_encoder_dir):
    output = tmp_path / "cli"
    result = CliRunner().invoke(train_student.main, [
        "--distill", str(toy["distill"]), "--dev", str(toy["dev"]), "--head", "dipair", "--encoder", tiny_encoder_dir,
        "--layers", "2", "--n", "4", "--m", "6", "--dim", "8", "--head-layers", "1",
        "--head-options", '{"ffn": 32}', "--left-max-length", "16", "--right-max-length", "24",
        "--stage1-epochs", "1", "--stage2-epochs", "1", "--stage2-max-pairs", "16", "--human-label-col", "label",
        "--no-progress", "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert "stage1 epoch 1: train loss" in result.output and "stage2 epoch 1" in result.output
    stored = json.loads((output / "_SUMMARY.json").read_text())
    assert stored["job"] == "train_student" and stored["metrics"]["epochs"][-1]["pairs"] == 16
    config = json.loads((output / "config.json").read_text())
    assert config["head_options"] == {"ffn": 32, "layers": 1} and config["left_tokens"] == 4


@pytest.mark.parametrize("extra, message", [
    (["--head", "pooled-cos"], "'pooled-cos' is not one of"),
    (["--head", "de-cos", "--head-layers", "2"], "--head-layers 2 is not allowed for head 'de-cos'"),
    (["--head-options", "{bad"], "--head-options '{bad' is not allowed"),
    (["--head-options", '{"depth": 3}'], "unknown option 'depth' for head 'dipair'"),
    (["--layers", "9"], "--layers 9 is not allowed"),
    (["--n", "40"], "left_tokens=40 exceeds left_max_length=16"),
    (["--stage1-epochs", "0"], "--stage1-epochs 0 is not allowed"),
    (["--warmup", "1"], "--warmup 1.0 is not allowed: give the fraction of a stage's steps spent warming up"),
    (["--stage2-lr", "0"], "--stage2-lr 0.0 is not allowed: give a learning rate > 0"),
    (["--max-grad-norm", "0"], "--max-grad-norm 0.0 is not allowed: give a finite number > 0"),
    (["--human-label-weight", "2"], "--human-label-weight 2.0 is not allowed"),
    (["--human-label-col", "grade"], "--human-label-col 'grade': no --distill file has that column"),
    (["--label-col", "score"], "no column 'score'"),
    (["--encoder", "./no/such/model"], "does not exist"),
    (["--task", "graded"], "needs label_range"),
])
def test_bad_arguments_exit_2_before_training(tmp_path, toy, tiny_encoder_dir, extra, message):
    args = ["--distill", str(toy["distill"]), "--dev", str(toy["dev"]), "--output", str(tmp_path / "out"),
            "--encoder", tiny_encoder_dir, "--head", "dipair", "--n", "4", "--m", "6", "--dim", "8",
            "--left-max-length", "16", "--right-max-length", "24", "--no-progress"]
    result = CliRunner().invoke(train_student.main, args + extra)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_inputs_that_are_not_distillation_sets_are_refused(tmp_path, toy, tiny_encoder_dir):
    plain = write_jsonl(tmp_path / "pairs.jsonl", [{"left": "a", "right": "b", "label": 1}])
    args = ["--dev", str(toy["dev"]), "--output", str(tmp_path / "out"), "--encoder", tiny_encoder_dir, "--head",
            "dipair", "--dim", "8", "--left-max-length", "16", "--right-max-length", "24"]
    result = CliRunner().invoke(train_student.main, ["--distill", str(plain), *args])
    assert result.exit_code == 2 and "--distill is not a distillation set" in result.output
    no_logits = write_distill(tmp_path / "nl", [{k: v for k, v in r.items() if k != "logit"} for r in distill_rows(4)])
    result = CliRunner().invoke(train_student.main, ["--distill", str(no_logits), "--loss", "mse", *args])
    assert result.exit_code == 2 and "--loss mse needs the logits" in result.output
    assert not (tmp_path / "out").exists()


def test_help_explains_every_flag():
    result = CliRunner().invoke(train_student.main, ["--help"])
    assert result.exit_code == 0
    for flag in ("--distill", "--dev", "--label-col", "--head", "--encoder", "--layers", "--n", "--m", "--dim",
                 "--head-layers", "--head-options", "--separate-encoders", "--stages", "--loss", "--swap",
                 "--stage1-epochs", "--patience", "--stage2-epochs", "--stage2-max-pairs", "--lr", "--stage2-lr",
                 "--encoder-lr", "--batch-size", "--warmup", "--seed", "--device", "--cache-dir", "--limit",
                 "--human-label-col", "--human-label-weight", "--output", "--overwrite"):
        assert flag in result.output


def test_cosine_skip_is_fitted_before_training_the_same_from_cache_or_encoder(tmp_path, toy, tiny_encoder_dir):
    """The skip's start (heads/cosine_skip.py) is fitted on the pretrained encoder's cosines:
    stage 1 reads them from its cache, one-stage training encodes them; both give the same fit."""
    two, student = train(tiny_job(toy, tiny_encoder_dir, tmp_path / "two", stage1_epochs=1), argv=[])
    one, _ = train(tiny_job(toy, tiny_encoder_dir, tmp_path / "one", stages=1), argv=[])
    fits = two.metrics["cosine_skip_fit"], one.metrics["cosine_skip_fit"]
    assert fits[0]["pairs"] == fits[1]["pairs"] == len(distill_rows())
    assert fits[0]["scale"][0] == pytest.approx(fits[1]["scale"][0], rel=1e-3)
    assert fits[0]["bias"][0] == pytest.approx(fits[1]["bias"][0], rel=1e-3)
    assert fits[0]["scale"][0] > 0   # toy teacher: more similar texts are more often "yes"
    assert student.config.cosine_skip and student.config.pooled
    no_skip = run(tiny_job(toy, tiny_encoder_dir, tmp_path / "plain", stage1_epochs=1, cosine_skip=False), argv=[])
    assert no_skip.metrics["cosine_skip_fit"] is None and not load_student(tmp_path / "plain").config.pooled


def test_max_pairs_cap_each_epoch_of_both_stages(tmp_path, toy, tiny_encoder_dir):
    summary = run(tiny_job(toy, tiny_encoder_dir, tmp_path / "capped", stage1_epochs=2, patience=5,
                           stage1_max_pairs=20, stage2_max_pairs=12), argv=[])
    assert [(r["stage"], r["pairs"]) for r in summary.metrics["epochs"]] == [("stage1", 20), ("stage1", 20),
                                                                               ("stage2", 12)]


# --------------------------------------------------------------------------- stage 2 on cached lower layers

def test_train_layers_trains_only_the_top_layers_on_cached_states(tmp_path, toy, tiny_encoder_dir):
    """--train-layers 1: stage 2 changes the top encoder layer only; the embeddings and lower layer
    stay as pretrained; dev is ranked per query and the best epoch chosen by MRR@10."""
    rows = distill_rows()[:20]
    dev = write_jsonl(tmp_path / "dev.jsonl", [dict(r, qid=f"q{i % 4}") for i, r in enumerate(dev_rows(rows))])
    summary, student = train(tiny_job(toy, tiny_encoder_dir, tmp_path / "s", dev=(str(dev),), train_layers=1,
                                      stage1_epochs=1, stage2_epochs=2, encoder_lr=5e-3, dev_group_col="qid",
                                      select_metric="mrr@10", cache_dir=str(tmp_path / "cache")), argv=[])
    metrics = summary.metrics
    assert [r["stage"] for r in metrics["epochs"]] == ["stage1", "stage2", "stage2"]
    assert all({"mrr@10", "map", "ndcg@10", "auc"} <= set(r["dev"]) for r in metrics["epochs"])
    assert metrics["select_metric"] == "mrr@10" and "by dev mrr@10" in summary.notes[0]
    lower = metrics["lower_cache"]
    texts = {*(r["left"] for r in distill_rows()), *(r["right"] for r in distill_rows())}
    # Left and right max lengths differ: one cache per side.
    assert lower["train_layers"] == 1 and lower["texts"] == len({r["left"] for r in distill_rows()}) + len(
        {r["right"] for r in distill_rows()}) >= len(texts) and lower["bytes"] > 0
    assert len(list((tmp_path / "cache").glob("lower-states-*.safetensors"))) == 2
    # Train the same again from the end of stage 2 to see which weights moved.
    pretrained = load_pretrained(tiny_encoder_dir, 2)[0].state_dict()
    stage2 = _last_stage2_weights(toy, tiny_encoder_dir, tmp_path / "again", dev)
    for name, tensor in pretrained.items():
        moved = not torch.equal(stage2[name], tensor)
        assert moved == name.startswith("encoder.layer.1."), name
    saved = load_student(tmp_path / "s")
    assert same_weights(encoder_weights(saved), encoder_weights(student))
    assert same_weights(encoder_weights(saved), pretrained) == (metrics["best_stage"] == "stage1")


def _last_stage2_weights(toy, tiny_encoder_dir, output, dev) -> dict[str, torch.Tensor]:
    """The encoder weights at the end of a --train-layers 1 stage 2 (whatever epoch is best)."""
    captured = {}
    original = Trainer.train_stage

    def recording(self, stage, rng):
        records = original(self, stage, rng)
        captured[stage.name] = encoder_weights(self.student)
        return records
    Trainer.train_stage = recording
    try:
        # stage1_epochs=1 and patience: stage 2 keeps its best epoch; a high learning rate moves it.
        train(tiny_job(toy, tiny_encoder_dir, output, dev=(str(dev),), train_layers=1, stage1_epochs=1,
                       stage2_epochs=1, encoder_lr=5e-2), argv=[])
    finally:
        Trainer.train_stage = original
    return captured["stage2"]


@pytest.mark.parametrize("changes, message", [
    (dict(train_layers=1, stages=1), "--train-layers needs --stages 2"),
    (dict(select_metric="mrr@10"), "--select-metric mrr@10 ranks dev's candidates per query: give --dev-group-col"),
    (dict(select_metric="bleu"), "--select-metric 'bleu' is not allowed"),
    (dict(train_layers=0), "--train-layers 0 is not allowed"),
    (dict(stage2_epochs=-1), "--stage2-epochs -1 is not allowed: give an integer >= 0"),
    (dict(stage2_epochs=0, stages=1), "is not allowed with --stages 1: those train the encoder"),
    (dict(stage2_epochs=0, train_layers=2), "is not allowed with --train-layers: those train the encoder"),
])
def test_bad_stage2_settings_are_refused(tmp_path, toy, tiny_encoder_dir, changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        tiny_job(toy, tiny_encoder_dir, tmp_path / "x", **changes).check()


# --------------------------------------------------------------------------- VIRT (encoders/virt.py)

@pytest.mark.parametrize("stage2", [dict(train_layers=1), dict()], ids=["train-layers", "whole-encoder"])
def test_virt_weight_zero_trains_bit_identically(tmp_path, toy, tiny_encoder_dir, tiny_teacher_dir, stage2):
    """--virt-weight 0 (the default) is off: the same seed gives the same weights as without the flag,
    whether --teacher is given or not; a weight > 0 trains on the teacher's attention maps."""
    plain, plain_student = train(tiny_job(toy, tiny_encoder_dir, tmp_path / "plain", **stage2), argv=[])
    zero, zero_student = train(tiny_job(toy, tiny_encoder_dir, tmp_path / "zero", teacher=tiny_teacher_dir,
                                        virt_weight=0.0, **stage2), argv=[])
    assert same_weights(plain_student.state_dict(), zero_student.state_dict())
    assert [r["train_loss"] for r in plain.metrics["epochs"]] == [r["train_loss"] for r in zero.metrics["epochs"]]
    assert zero.metrics["virt"] is None and all("virt_loss" not in r for r in zero.metrics["epochs"])
    on, on_student = train(tiny_job(toy, tiny_encoder_dir, tmp_path / "on", teacher=tiny_teacher_dir,
                                    virt_weight=50.0, encoder_lr=5e-3, **stage2), argv=[])
    virt = on.metrics["virt"]
    # A 2-layer student of the 3-layer teacher: layer 0 -> 0, layer 1 -> 2; only the trained ones.
    assert virt["layers"] == ({"1": 2} if stage2 else {"0": 0, "1": 2})
    assert virt["weight"] == 50.0 and virt["heads"].startswith("2 student <- 2 teacher")
    assert [("virt_loss" in r) for r in on.metrics["epochs"]] == [r["stage"] == "stage2" for r in on.metrics["epochs"]]
    assert all(r["virt_loss"] > 0 for r in on.metrics["epochs"] if "virt_loss" in r)
    assert len(virt["pairs_per_second"]) == 1 and virt["pairs_per_second"][0] > 0
    assert any("VIRT alpha 50.0" in note for note in on.notes)
    # Stage 2 moved the encoder differently (whatever epoch was kept, stage 2's last state differs).
    assert on.metrics["epochs"][-1]["train_loss"] != plain.metrics["epochs"][-1]["train_loss"]


def test_virt_bad_flags_are_refused_before_training(tmp_path, toy, tiny_encoder_dir, tiny_teacher_dir,
                                                    tiny_checkpoint):
    from transformers import AutoTokenizer
    import shutil
    other = tmp_path / "other-vocab-teacher"
    shutil.copytree(tiny_teacher_dir, other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["virtonlytoken"])
    tokenizer.save_pretrained(other)
    args = ["--distill", str(toy["distill"]), "--dev", str(toy["dev"]), "--output", str(tmp_path / "out"),
            "--encoder", tiny_encoder_dir, "--head", "dipair", "--n", "4", "--m", "6", "--dim", "8",
            "--left-max-length", "16", "--right-max-length", "24", "--no-progress"]
    for extra, message in [
        (["--virt-weight", "0.5"], "--virt-weight 0.5 needs --teacher DIR"),
        (["--virt-weight", "-1", "--teacher", tiny_teacher_dir], "--virt-weight -1.0 is not allowed"),
        # The wrong kind of checkpoint is answered by the pre-flight (before torch is imported).
        (["--virt-weight", "0.5", "--teacher", tiny_encoder_dir], f"--teacher {tiny_encoder_dir!r} is not a "
                                                                 "trained cross-encoder: its config.json names BertModel"),
        (["--virt-weight", "0.5", "--teacher", tiny_checkpoint], f"--teacher {tiny_checkpoint!r} is a pairscore "
                                                                "student checkpoint, not a teacher"),
        (["--virt-weight", "2", "--teacher", str(other)], f"--teacher {str(other)!r} has another tokenizer than the "
                                                          "student's encoder"),
    ]:
        result = CliRunner().invoke(train_student.main, args + extra)
        assert result.exit_code == 2, (extra, result.output)
        assert any(message in line for line in result.output.splitlines()), (message, result.output)
        assert not (tmp_path / "out").exists()


def test_help_says_where_virt_acts():
    result = CliRunner().invoke(train_student.main, ["--help"])
    text = " ".join(result.output.split())
    assert "--virt-weight" in text and "--teacher" in text
    assert "Acts in stage 2 only" in text and "0: off, training exactly as without it" in text


def test_a_run_that_trains_to_non_finite_weights_commits_nothing(tmp_path, toy, tiny_encoder_dir):
    # A learning rate of 1e30 overflows the weights to infinity and NaN in the first steps.
    from pipeline.errors import RefusedToCommit

    with pytest.raises(RefusedToCommit, match=r"training produced weights that are not finite numbers \(NaN or "
                                              r"infinity\) in \d+ tensors? \(.*\); nothing was committed"):
        run(tiny_job(toy, tiny_encoder_dir, tmp_path / "o", lr=1e30, stage2_lr=1e30, stage1_epochs=1,
                     max_dead_letter_fraction=1.0))
    assert not (tmp_path / "o").exists()
