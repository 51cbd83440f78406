"""``jobs.build_candidates``: exact top-k against brute force, random pairs, self-pairs, bad rows, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from encoders.checkpoint import build_student
from encoders.config import baseline_config
from jobs import build_candidates
from encoders import neighbours
from encoders.neighbours import sample_random, top_k_neighbours
from jobs.build_candidates import BuildCandidatesJob, run
from pipeline.text_ids import text_id


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return path


def candidates_of(output: Path) -> list[dict]:
    return pq.read_table(output / "part-00000-of-00001.parquet").to_pylist()


def test_top_k_equals_brute_force_across_blocks():
    generator = torch.Generator().manual_seed(0)
    left = torch.nn.functional.normalize(torch.randn(37, 16, generator=generator), dim=1)
    right = torch.nn.functional.normalize(torch.randn(53, 16, generator=generator), dim=1)
    exclude = torch.full((37,), -1, dtype=torch.long)
    exclude[::3] = torch.arange(0, 37, 3) % 53
    # 4 * 53 * 5 bytes: blocks of 5 left rows, so several blocks and a short last one.
    values, indices = top_k_neighbours(left, right, 6, exclude, block_bytes=4 * 53 * 5)
    sims = (left @ right.T).numpy()
    for i in range(37):
        order = [j for j in np.argsort(-sims[i], kind="stable") if j != exclude[i]][:6]
        assert indices[i].tolist() == order
        np.testing.assert_allclose(values[i].numpy(), sims[i, order], rtol=1e-6)


def test_top_k_larger_than_the_pool_leaves_empty_slots():
    left = torch.eye(3)
    right = torch.eye(3)
    values, indices = top_k_neighbours(left, right, 5, torch.tensor([0, -1, 2]))
    assert indices.shape == (3, 3)
    assert (indices[0] == -1).sum() == 1 and 0 not in indices[0].tolist()
    assert sorted(indices[1].tolist()) == [0, 1, 2]


def test_random_pairs_avoid_the_excluded_and_repeat_nothing():
    rng = np.random.default_rng(0)
    excluded = [{0, 1, 2}, {5}, set(range(9)), set()]
    picks = sample_random(10, 3, excluded, rng)
    assert [len(p) for p in picks] == [3, 3, 1, 3]
    for banned, chosen in zip(excluded, picks):
        assert len(set(chosen.tolist())) == len(chosen) and not banned & set(chosen.tolist())
    big = sample_random(100_000, 4, [{1, 2}] * 50, rng)  # the rejection-sampling path
    assert all(len(set(p.tolist())) == 4 and not {1, 2} & set(p.tolist()) for p in big)


TOPICS = ["cooking pasta at home", "learning the violin", "fixing a bicycle chain", "growing tomatoes",
          "training for a marathon", "writing a cover letter", "saving money for a house", "baking sourdough bread",
          "choosing a laptop", "planning a trip to Japan", "painting with watercolours", "keeping a cat healthy"]


@pytest.fixture(scope="module")
def mined(tmp_path_factory, tiny_encoder_dir):
    tmp = tmp_path_factory.mktemp("mine")
    lefts = [{"text": f"How do I get better at {t}?"} for t in TOPICS]
    lefts += [{"text": ""}, {"text": None}, {"text": 5}, b"{broken", {"text": lefts[0]["text"]}]
    rights = [{"text": f"Tips for {t}"} for t in TOPICS] + [{"text": f"Is {t} hard?"} for t in TOPICS]
    rights += [{"text": lefts[1]["text"]}, {"text": lefts[2]["text"]}, {"text": "Tips for growing tomatoes"}]
    left_file, right_file = write_jsonl(tmp / "left.jsonl", lefts), write_jsonl(tmp / "right.jsonl", rights)
    output = tmp / "candidates"
    summary = run(BuildCandidatesJob(left_texts=(str(left_file),), right_texts=(str(right_file),), output=str(output),
                                     top_k=4, random_per_left=2, encoder=tiny_encoder_dir, batch_size=5,
                                     progress=False), argv=["test"])
    return output, summary, [r["text"] for r in lefts[:len(TOPICS)]], [r["text"] for r in rights[:-1]]


def test_counts_and_bad_rows_exactly(mined):
    output, summary, lefts, rights = mined
    stored = json.loads((output / "_SUMMARY.json").read_text())
    assert stored["counts"] == {
        "left_rows_read": 17, "left_rows_kept": 12, "left_rows_duplicate": 1, "left_rows_dead_lettered": 4,
        "left_texts": 12, "right_rows_read": 27, "right_rows_kept": 26, "right_rows_duplicate": 1,
        "right_rows_dead_lettered": 0, "right_texts": 26, "self_pairs_excluded": 2, "pairs_knn": 48,
        "pairs_random": 24, "pairs_written": 72}
    assert stored["dead_letters"] == {"left.empty_text": 1, "left.invalid_json": 1, "left.non_string_text": 1,
                                      "left.null_text": 1}
    assert len(pq.read_table(output / "_dead_letter").to_pylist()) == 4
    assert "left rows read 17 = kept 12 + duplicates 1 + dead-lettered 4" in stored["reconciliation"]


def test_summary_names_the_encoder_by_fingerprint(mined, tiny_encoder_dir):
    _, summary, _, _ = mined
    assert summary.model_fingerprints["encoder"] == build_student(
        baseline_config().replace(encoder=tiny_encoder_dir)).fingerprint


def test_knn_pairs_are_the_true_top_k(mined, tiny_encoder_dir):
    """Brute force with the plain-PyTorch reference encoder (input order, no length sorting)."""
    output, _, lefts, rights = mined
    encoder = build_student(baseline_config().replace(encoder=tiny_encoder_dir)).encoder.left
    left_emb = encoder.encode(lefts).pooled.numpy()
    right_emb = encoder.encode(rights).pooled.numpy()
    sims = left_emb @ right_emb.T
    rows = candidates_of(output)
    for i, left in enumerate(lefts):
        expected = [rights[j] for j in np.argsort(-sims[i]) if rights[j] != left][:4]
        knn = sorted((r for r in rows if r["left"] == left and r["source"] == "knn"), key=lambda r: r["rank"])
        assert [r["right"] for r in knn] == expected
        assert [r["rank"] for r in knn] == [1, 2, 3, 4]
        np.testing.assert_allclose([r["similarity"] for r in knn], sorted(sims[i][[rights.index(t) for t in expected]],
                                                                         reverse=True), atol=1e-5)


def test_one_pool_on_both_sides_is_encoded_once(tmp_path, tiny_encoder_dir, monkeypatch):
    """Questions x questions: the same texts on both sides are embedded once, and each text's
    neighbours are the true top-k of the others (never itself)."""
    texts = [f"How do I get better at {t}?" for t in TOPICS]
    pool = write_jsonl(tmp_path / "q.jsonl", [{"text": t} for t in texts])
    calls = []
    real = neighbours.embed_texts
    monkeypatch.setattr(neighbours, "embed_texts", lambda *a, **k: calls.append(1) or real(*a, **k))
    run(BuildCandidatesJob(left_texts=(str(pool),), right_texts=(str(pool),), output=str(tmp_path / "o"), top_k=3,
                           random_per_left=0, encoder=tiny_encoder_dir, progress=False), argv=["test"])
    assert len(calls) == 1
    embedded = build_student(baseline_config().replace(encoder=tiny_encoder_dir)).encoder.left.encode(texts).pooled
    sims = (embedded @ embedded.T).numpy()
    rows = candidates_of(tmp_path / "o")
    for i, text in enumerate(texts):
        expected = [texts[j] for j in np.argsort(-sims[i]) if j != i][:3]
        assert [r["right"] for r in sorted((r for r in rows if r["left"] == text), key=lambda r: r["rank"])] == expected


def test_random_pairs_self_pairs_and_duplicates(mined, tiny_encoder_dir):
    output, _, lefts, rights = mined
    rows = candidates_of(output)
    assert all(r["left"] != r["right"] for r in rows)
    assert len({(r["left"], r["right"]) for r in rows}) == len(rows) == 72
    for left in lefts:
        random_rows = [r for r in rows if r["left"] == left and r["source"] == "random"]
        assert len(random_rows) == 2 and all(r["rank"] is None for r in random_rows)
    assert all(r["left_id"] == text_id(r["left"]) and r["right_id"] == text_id(r["right"]) for r in rows)
    encoder = build_student(baseline_config().replace(encoder=tiny_encoder_dir)).encoder.left
    sample = [r for r in rows if r["source"] == "random"][:5]
    cosine = (encoder.encode([r["left"] for r in sample]).pooled * encoder.encode([r["right"] for r in sample]).pooled
              ).sum(dim=1).numpy()
    np.testing.assert_allclose([r["similarity"] for r in sample], cosine, atol=1e-5)


def test_given_ids_are_used_and_shared_texts_appear_once(tmp_path, tiny_encoder_dir):
    left = write_jsonl(tmp_path / "l.jsonl", [{"id": "b", "text": "same question"}, {"id": "a", "text": "same question"},
                                              {"id": "c", "text": "other question"}, {"id": None, "text": "x"}])
    right = write_jsonl(tmp_path / "r.jsonl", [{"id": 1, "text": "an answer"}, {"id": 2, "text": "a reply"}])
    summary = run(BuildCandidatesJob(max_dead_letter_fraction=1.0,
                                     left_texts=(str(left),), right_texts=(str(right),), output=str(tmp_path / "o"),
                                     top_k=1, random_per_left=1, texts_id_col="id", encoder=tiny_encoder_dir,
                                     progress=False), argv=[])
    rows = candidates_of(tmp_path / "o")
    assert summary.counts["left_texts"] == 2 and summary.dead_letters == {"left.null_id": 1}
    assert sorted({r["left_id"] for r in rows}) == ["a", "c"] and {r["right_id"] for r in rows} == {"1", "2"}
    assert len(rows) == 4


def test_real_qqp_questions_with_the_packaged_encoder(tmp_path, shared_data):
    """Real questions, the default encoder: a duplicate question is its partner's nearest neighbour."""
    pairs = [json.loads(l) for l in (shared_data / "qqp" / "dev.jsonl").read_text().splitlines()[:40]]
    left = write_jsonl(tmp_path / "l.jsonl", [{"question": p["left"]} for p in pairs])
    right = write_jsonl(tmp_path / "r.jsonl", [{"question": p["right"]} for p in pairs])
    output = tmp_path / "o"
    result = CliRunner().invoke(build_candidates.main, [
        "--left-texts", str(left), "--right-texts", str(right), "--texts-text-col", "question", "--top-k", "3",
        "--random-per-left", "1", "--no-progress", "--output", str(output)])
    assert result.exit_code == 0, result.output
    rows = candidates_of(output)
    top1 = {r["left"]: r["right"] for r in rows if r["rank"] == 1}
    duplicates = [p for p in pairs if p["label"] == 1 and p["left"] != p["right"]]
    hits = sum(top1.get(p["left"]) == p["right"] for p in duplicates)
    assert hits >= 0.8 * len(duplicates)
    stored = json.loads((output / "_SUMMARY.json").read_text())
    knn, rand = stored["metrics"]["sources"]["knn"], stored["metrics"]["sources"]["random"]
    assert knn["mean_similarity"] > rand["mean_similarity"]


@pytest.mark.parametrize("extra, message", [
    (["--top-k", "0", "--random-per-left", "0"], "would mine nothing"),
    (["--top-k", "-1"], "--top-k -1 is not allowed"),
    (["--top-k", "2", "--texts-text-col", "body"], "no column 'body'"),
    (["--top-k", "2", "--encoder", "./missing/encoder"], "does not exist"),
])
def test_bad_arguments_exit_2(tmp_path, extra, message):
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "b"}])
    result = CliRunner().invoke(build_candidates.main, ["--left-texts", str(texts), "--right-texts", str(texts),
                                                        "--output", str(tmp_path / "o"), *extra])
    assert result.exit_code == 2 and message in result.output, result.output


def test_help_explains_every_flag():
    result = CliRunner().invoke(build_candidates.main, ["--help"])
    assert result.exit_code == 0
    for flag in ("--left-texts", "--right-texts", "--texts-text-col", "--texts-id-col", "--left-texts-text-col",
                 "--top-k", "--random-per-left", "--encoder", "--output", "--overwrite", "--device", "--seed"):
        assert flag in result.output


def test_each_pool_is_read_with_its_own_columns(tmp_path, tiny_encoder_dir):
    left = write_jsonl(tmp_path / "queries.jsonl", [{"query_id": "q1", "query": "how to bake bread"},
                                                    {"query_id": "q2", "query": "fix a bike chain"}])
    right = write_jsonl(tmp_path / "products.jsonl", [{"sku": 7, "title": "bread flour"},
                                                      {"sku": 8, "title": "chain lube"}])
    result = CliRunner().invoke(build_candidates.main, [
        "--left-texts", str(left), "--right-texts", str(right), "--left-texts-id-col", "query_id",
        "--left-texts-text-col", "query", "--right-texts-id-col", "sku", "--right-texts-text-col", "title",
        "--top-k", "1", "--random-per-left", "0", "--encoder", tiny_encoder_dir, "--no-progress",
        "--output", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    rows = candidates_of(tmp_path / "o")
    assert {(r["left_id"], r["left"]) for r in rows} == {("q1", "how to bake bread"), ("q2", "fix a bike chain")}
    assert {(r["right_id"], r["right"]) for r in rows} <= {("7", "bread flour"), ("8", "chain lube")}
