"""End to end: ``jobs.score_pairs`` equals the student run directly in PyTorch, for every head,
both joins, in-process and multi-process; bad inputs with exact counts."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from encoders.checkpoint import build_student, load_or_build_student, load_student, save_student
from encoders.config import StudentConfig, baseline_config
from heads import HEAD_NAMES
from jobs import score_pairs
from jobs.score_pairs import ScorePairsJob, run
from pipeline.text_ids import text_id

MULTI_PROCESS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def read_scores(output: Path) -> dict[tuple[str, str], dict]:
    tables = [pq.read_table(p) for p in sorted((output / "scores").glob("part-*.parquet"))]
    return {(r["left_id"], r["right_id"]): r for r in pa.concat_tables(tables).to_pylist()}


def summary_of(output: Path) -> dict:
    return json.loads((output / "_SUMMARY.json").read_text())


def dead_letters(output: Path) -> list[dict]:
    return pa.concat_tables([pq.read_table(p) for p in (output / "_dead_letter").glob("*.parquet")]).to_pylist()


@pytest.fixture(scope="module")
def qqp_pairs(shared_data) -> list[dict]:
    """60 real QQP dev pairs, with a few texts repeated across pairs."""
    pairs = []
    with open(shared_data / "qqp" / "dev.jsonl", encoding="utf-8") as handle:
        for line in handle:
            pair = json.loads(line)
            pairs.append({"left": pair["left"], "right": pair["right"], "label": pair["label"]})
            if len(pairs) == 50:
                break
    pairs += [{"left": pairs[i]["left"], "right": pairs[i + 1]["right"], "label": 0} for i in range(10)]
    return pairs


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory, qqp_pairs) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in qqp_pairs))
    return path


@pytest.fixture(scope="module")
def head_checkpoints(tmp_path_factory, tiny_student_config) -> dict[str, str]:
    """One tiny student per head (pooled on, so pooled-cos works too)."""
    checkpoints = {}
    for head in HEAD_NAMES:
        directory = tmp_path_factory.mktemp(f"student-{head}")
        save_student(build_student(tiny_student_config.replace(head=head), seed=7), directory)
        checkpoints[head] = str(directory)
    return checkpoints


def reference_scores(student, pairs: list[dict]) -> np.ndarray:
    logits = student.score_texts([p["left"] for p in pairs], [p["right"] for p in pairs])
    score, _ = student.scores_from_logits(logits)
    return score.numpy()


@pytest.mark.parametrize("mode", ["in-process", "multi-process"])
@pytest.mark.parametrize("join", ["broadcast", "shuffle"])
@pytest.mark.parametrize("head", HEAD_NAMES)
def test_pipeline_scores_equal_plain_pytorch(tmp_path, pairs_file, qqp_pairs, head_checkpoints, head, join, mode):
    output = tmp_path / "out"
    run(ScorePairsJob(pairs=(str(pairs_file),), output=str(output), model_dir=head_checkpoints[head], join=join,
                      keep_cols=("label",), batch_size=16),
        MULTI_PROCESS if mode == "multi-process" else [], argv=[])
    scores = read_scores(output)
    assert summary_of(output)["counts"]["pairs_scored"] == len(qqp_pairs)
    expected = reference_scores(load_student(head_checkpoints[head]), qqp_pairs)
    got = np.array([scores[(text_id(p["left"]), text_id(p["right"]))]["score"] for p in qqp_pairs])
    # Stores hold float16 tokens; the reference keeps float32 all the way.
    np.testing.assert_allclose(got, expected, atol=2e-3)
    labels = [scores[(text_id(p["left"]), text_id(p["right"]))]["label"] for p in qqp_pairs]
    assert labels == [p["label"] for p in qqp_pairs]  # JSON ints keep their type (int64), issue 12


def test_cosine_skip_student_scores_equal_plain_pytorch(tmp_path, pairs_file, qqp_pairs):
    """A student with a cosine skip (heads/cosine_skip.py) on the real MiniLM: the store keeps the
    pooled embeddings next to the tokens and score_pairs adds the skip exactly as the model does."""
    config = StudentConfig(encoder_layers=2, left_tokens=4, right_tokens=6, pooled=True, cosine_skip=True)
    student = build_student(config, seed=3)
    with torch.no_grad():   # a realistic fitted skip (QQP: about 13 * cos - 11)
        student.head.scale.fill_(13.0)
        student.head.bias.fill_(-11.0)
    save_student(student, tmp_path / "student")
    output = tmp_path / "out"
    run(ScorePairsJob(pairs=(str(pairs_file),), output=str(output), model_dir=str(tmp_path / "student")), [], argv=[])
    scores = read_scores(output)
    assert (output / "store" / "left").exists()
    expected = reference_scores(load_student(tmp_path / "student"), qqp_pairs)
    got = np.array([scores[(text_id(p["left"]), text_id(p["right"]))]["score"] for p in qqp_pairs])
    np.testing.assert_allclose(got, expected, atol=3e-3)
    assert np.ptp(expected) > 0.3   # the skip spreads the scores: the tolerance above is a real test


def test_baseline_without_model_is_the_minilm_cosine(tmp_path, pairs_file, qqp_pairs):
    output = tmp_path / "out"
    summary = run(ScorePairsJob(pairs=(str(pairs_file),), output=str(output)), [], argv=[])
    assert any("zero-training baseline" in note for note in summary.notes)
    student = load_or_build_student(None, baseline_config())
    left = student.encoder.left.encode([p["left"] for p in qqp_pairs]).pooled
    right = student.encoder.right.encode([p["right"] for p in qqp_pairs]).pooled
    expected = torch.nn.functional.cosine_similarity(left, right).numpy()
    scores = read_scores(output)
    got = np.array([scores[(text_id(p["left"]), text_id(p["right"]))]["score"] for p in qqp_pairs])
    np.testing.assert_allclose(got, expected, atol=2e-3)
    # The baseline ranks real duplicates above non-duplicates on this sample.
    from sklearn.metrics import roc_auc_score
    labelled = qqp_pairs[:50]
    assert roc_auc_score([p["label"] for p in labelled], got[:50]) > 0.7


def test_store_is_reused_by_the_same_model_and_refused_by_another(tmp_path, pairs_file, qqp_pairs, head_checkpoints):
    first = tmp_path / "night1"
    run(ScorePairsJob(pairs=(str(pairs_file),), output=str(first), model_dir=head_checkpoints["dipair"]), [], argv=[])
    unique_left = len({p["left"] for p in qqp_pairs})
    assert summary_of(first)["counts"]["left_texts_encoded"] == unique_left
    more = tmp_path / "more.jsonl"
    more.write_text(pairs_file.read_text() + json.dumps({"left": "a brand new question?", "right": qqp_pairs[0]["right"],
                                                         "label": 0}) + "\n")
    second = tmp_path / "night2"
    run(ScorePairsJob(pairs=(str(more),), output=str(second), model_dir=head_checkpoints["dipair"],
                      store=str(first / "store")), [], argv=[])
    counts = summary_of(second)["counts"]
    assert (counts["left_texts_encoded"], counts["left_texts_reused"]) == (1, unique_left)
    assert counts["right_texts_encoded"] == 0
    assert json.loads((second / "store" / "left" / "_MANIFEST.json").read_text())["rows"] == unique_left + 1
    np.testing.assert_allclose(
        [r["score"] for r in read_scores(second).values() if (r["left_id"], r["right_id"]) in read_scores(first)],
        [read_scores(first)[k]["score"] for k in read_scores(second) if k in read_scores(first)], atol=1e-6)
    with pytest.raises(ValueError, match="written by another model: model fingerprint"):
        run(ScorePairsJob(pairs=(str(pairs_file),), output=str(tmp_path / "other"), model_dir=head_checkpoints["li"],
                          store=str(first / "store")), [], argv=[])


def test_pairs_of_ids_with_text_tables_and_bad_rows(tmp_path, head_checkpoints):
    left = tmp_path / "left.jsonl"
    left.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "q1", "text": "how do I bake bread?"}, {"id": "q2", "text": "what is a sourdough starter?"},
        {"id": "q3", "text": ""},                           # dead-lettered text: pairs with q3 cannot score
        {"id": "q4", "text": "one"}, {"id": "q4", "text": "two"}]))  # conflicting id
    right = tmp_path / "right.csv"
    right.write_text("id,text\np1,bread flour 1kg\np2,rye sourdough starter kit\n")
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({
        "q": ["q1", "q2", "q1", "q3", "q9", "q1", None, "q4", "q1"],
        "p": ["p1", "p2", "p2", "p1", "p1", "p7", "p1", "p1", "p1"],
        "rank": [1, 2, 3, 4, 5, 6, 7, 8, 9]}), pairs)
    output = tmp_path / "out"
    run(ScorePairsJob(max_dead_letter_fraction=1.0,
                      pairs=(str(pairs),), output=str(output), left_id_col="q", right_id_col="p",
                      left_texts=(str(left),), right_texts=(str(right),), keep_cols=("rank",),
                      model_dir=head_checkpoints["dipair"]), [], argv=[])
    summary = summary_of(output)
    counts = summary["counts"]
    # 9 pairs: 4 scored (q1-p1 twice: duplicate rows are scored once per row by default), 5 dead letters.
    assert (counts["pairs_read"], counts["pairs_scored"], counts["pairs_dead_lettered"]) == (9, 4, 5)
    assert summary["dead_letters"] == {"left_null_id": 1, "left_text_missing": 3, "right_text_missing": 1,
                                       "left_texts:conflicting_id": 2, "left_texts:empty_text": 1}
    assert counts["left_text_rows_read"] == 5 and counts["left_text_rows_dead_lettered"] == 3
    ranks = sorted(r["rank"] for r in read_scores_all(output))
    assert ranks == [1, 2, 3, 9]  # Parquet kept columns keep their type
    missing = {json.loads(d["row"])["q"] for d in dead_letters(output) if d["reason"] == "left_text_missing"}
    assert missing == {"q3", "q9", "q4"}


def test_integer_pair_ids_meet_text_tables_ids_in_one_canonical_form(tmp_path, head_checkpoints):
    """Integer ids in a pair table (JSONL numbers, Parquet int64) name the same texts as the text
    tables' integer (JSONL) or string (CSV) ids: every pair scores, with the string-id run's scores."""
    left = tmp_path / "left.jsonl"
    left.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": 1, "text": "how do I bake bread?"}, {"id": 2, "text": "what is a sourdough starter?"},
        {"id": 30, "text": "is rye flour gluten free?"}]))
    right = tmp_path / "right.csv"
    right.write_text("id,text\n7,bread flour 1kg\n8,rye sourdough starter kit\n-9,a bread knife\n")
    q, p = [1, 2, 30, 1, 30, 2], [7, 8, -9, 8, 7, -9]
    as_jsonl = tmp_path / "pairs.jsonl"
    as_jsonl.write_text("".join(json.dumps({"q": a, "p": b}) + "\n" for a, b in zip(q, p)))
    as_parquet = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"q": pa.array(q, pa.int64()), "p": pa.array(p, pa.int32())}), as_parquet)
    as_strings = tmp_path / "strings.jsonl"
    as_strings.write_text("".join(json.dumps({"q": str(a), "p": str(b)}) + "\n" for a, b in zip(q, p)))
    scores = {}
    for name, pairs in (("jsonl", as_jsonl), ("parquet", as_parquet), ("strings", as_strings)):
        output = tmp_path / name
        summary = run(ScorePairsJob(pairs=(str(pairs),), output=str(output), left_id_col="q", right_id_col="p",
                                    left_texts=(str(left),), right_texts=(str(right),),
                                    model_dir=head_checkpoints["dipair"]), [], argv=[])
        assert summary.counts["pairs_scored"] == len(q) and not summary.dead_letters, (name, summary.dead_letters)
        scores[name] = {k: v["score"] for k, v in read_scores(output).items()}
    assert set(scores["strings"]) == {(str(a), str(b)) for a, b in zip(q, p)}
    assert scores["jsonl"] == scores["strings"] == scores["parquet"]


@pytest.mark.parametrize("join", ["broadcast", "shuffle"])
def test_ids_that_differ_only_in_nul_bytes_are_different_texts(tmp_path, head_checkpoints, join):
    """``L0`` and ``L0\\x00`` (and ``L0\\x00\\x00``) name three texts: each pair gets its own text's
    score, as when the ids are plainly different."""
    texts = ["how do I bake bread?", "what is a sourdough starter?", "is rye flour gluten free?"]
    nul_ids, plain_ids = ["L0", "L0\x00", "L0\x00\x00"], ["A", "B", "C"]
    right = tmp_path / "right.jsonl"
    right.write_text(json.dumps({"id": "p", "text": "bread flour 1kg"}) + "\n")
    scores = {}
    for name, ids in (("nul", nul_ids), ("plain", plain_ids)):
        left = tmp_path / f"left-{name}.jsonl"
        left.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip(ids, texts)))
        pairs = tmp_path / f"pairs-{name}.jsonl"
        pairs.write_text("".join(json.dumps({"q": i, "p": "p", "k": n}) + "\n" for n, i in enumerate(ids)))
        output = tmp_path / name
        summary = run(ScorePairsJob(pairs=(str(pairs),), output=str(output), left_id_col="q", right_id_col="p",
                                    left_texts=(str(left),), right_texts=(str(right),), keep_cols=("k",),
                                    model_dir=head_checkpoints["dipair"], join=join), [], argv=[])
        assert summary.counts["pairs_scored"] == 3 and summary.counts["left_texts_encoded"] == 3
        rows = sorted(read_scores_all(output), key=lambda r: r["k"])
        assert [r["left_id"] for r in rows] == ids
        scores[name] = [r["score"] for r in rows]
    assert scores["nul"] == scores["plain"] and len(set(scores["nul"])) == 3


def read_scores_all(output: Path) -> list[dict]:
    return pa.concat_tables([pq.read_table(p) for p in (output / "scores").glob("part-*.parquet")]).to_pylist()


def read_scores_table(output: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in (output / "scores").glob("part-*.parquet")])


def test_missing_sides_and_dedupe_flag(tmp_path, head_checkpoints):
    rows = [{"left": "a question", "right": "an answer"}, {"left": "a question", "right": "an answer"},
            {"left": "", "right": "x"}, {"left": "y"}, {"left": None, "right": "z"}, {"left": 5, "right": "w"}]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plain, deduped = tmp_path / "plain", tmp_path / "deduped"
    run(ScorePairsJob(max_dead_letter_fraction=1.0,
                      pairs=(str(source),), output=str(plain), model_dir=head_checkpoints["de-ffnn"]), [], argv=[])
    run(ScorePairsJob(max_dead_letter_fraction=1.0,
                      pairs=(str(source),), output=str(deduped), model_dir=head_checkpoints["de-ffnn"],
                      dedupe_pairs=True), [], argv=[])
    assert summary_of(plain)["counts"]["pairs_scored"] == 2
    assert summary_of(deduped)["counts"]["pairs_scored"] == 1
    assert summary_of(deduped)["counts"]["pairs_duplicate"] == 1
    assert summary_of(plain)["dead_letters"] == {"left_empty_text": 1, "left_non_string_text": 1,
                                                 "left_null_text": 1, "right_null_text": 1}


def test_bad_checkpoints_fail_before_the_pipeline(tmp_path, pairs_file, head_checkpoints):
    broken = tmp_path / "broken"
    shutil.copytree(head_checkpoints["dipair"], broken)
    (broken / "student.safetensors").unlink()
    runner = CliRunner()
    result = runner.invoke(score_pairs.main, ["--pairs", str(pairs_file), "--model", str(broken),
                                              "--output", str(tmp_path / "o1")])
    assert result.exit_code == 2 and "incomplete: missing student.safetensors" in result.output
    config = json.loads((Path(head_checkpoints["dipair"]) / "config.json").read_text())
    config["head"] = "transformer-xl"
    unknown = tmp_path / "unknown"
    shutil.copytree(head_checkpoints["dipair"], unknown)
    (unknown / "config.json").write_text(json.dumps(config))
    result = runner.invoke(score_pairs.main, ["--pairs", str(pairs_file), "--model", str(unknown),
                                              "--output", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "unknown head 'transformer-xl'" in result.output
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("args, message", [
    (["--left-id-col", "q"], "--left-id-col and --right-id-col go together"),
    (["--left-id-col", "q", "--right-id-col", "p"],
     "need --left-texts and --right-texts (id/text tables) or a --store"),
    (["--left-texts", "x.jsonl"], "are for pairs of ids"),
    (["--left-col", "question"], "question"),
    (["--keep-cols", "score"], "would overwrite output columns"),
])
def test_bad_arguments_are_named(tmp_path, pairs_file, args, message):
    result = CliRunner().invoke(score_pairs.main, ["--pairs", str(pairs_file), "--output", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and message in result.output


def test_help_explains_every_flag():
    result = CliRunner().invoke(score_pairs.main, ["--help"])
    assert result.exit_code == 0
    for flag in ("--pairs", "--left-col", "--right-col", "--left-id-col", "--left-texts", "--texts-id-col",
                 "--left-texts-id-col", "--right-texts-text-col",
                 "--keep-cols", "--model", "--store", "--output", "--join", "--broadcast-limit-mb",
                 "--dedupe-pairs", "--batch-size", "--device", "--accelerator", "--runner"):
        assert flag in result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none)")
def test_cuda_scores_match_cpu(tmp_path, pairs_file, head_checkpoints):
    outputs = {}
    for device in ("cpu", "cuda"):
        outputs[device] = tmp_path / device
        run(ScorePairsJob(pairs=(str(pairs_file),), output=str(outputs[device]), model_dir=head_checkpoints["dipair"],
                          device=device), [], argv=[])
    cpu, cuda = read_scores(outputs["cpu"]), read_scores(outputs["cuda"])
    assert cpu.keys() == cuda.keys()
    # bf16 autocast on GPU: close, not equal.
    np.testing.assert_allclose([cuda[k]["score"] for k in cpu], [cpu[k]["score"] for k in cpu], atol=2e-2)


def test_jsonl_kept_columns_keep_json_types_and_misfits_are_dead_letters(tmp_path, head_checkpoints):
    # Types are decided from the first 1000 lines; the misfit comes after them.
    rows = [{"left": f"question {i % 6}", "right": f"answer {i % 6}", "n": i, "w": i / 2, "ok": i % 2 == 0,
             "tag": f"t{i}", "meta": {"i": i}} for i in range(1000)]
    rows.append({"left": "late", "right": "row", "n": "seven", "w": 1, "ok": True, "tag": 7, "meta": [1]})
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "out"
    summary = run(ScorePairsJob(pairs=(str(source),), output=str(output), model_dir=head_checkpoints["de-cos"],
                                keep_cols=("n", "w", "ok", "tag", "meta")), [], argv=[])
    table = read_scores_table(output)
    assert [table.schema.field(n).type for n in ("n", "w", "ok", "tag", "meta")] == [
        pa.int64(), pa.float64(), pa.bool_(), pa.string(), pa.string()]
    assert sorted(table.column("n").to_pylist()) == list(range(1000))
    assert sorted(table.column("meta").to_pylist())[0] == '{"i": 0}'
    # "seven" does not fit int64: dead-lettered with the row as read, never turned into something else.
    assert summary.dead_letters == {"kept_column_type": 1} and summary.counts["pairs_scored"] == 1000
    letter = dead_letters(output)[0]
    assert json.loads(letter["row"])["n"] == "seven" and "'n'" in letter["detail"]
    # Inputs that disagree on a kept column's type fail before the pipeline starts, naming both files.
    other = tmp_path / "more.csv"
    other.write_text("left,right,n\na,b,1\n")
    with pytest.raises(ValueError, match=r"kept column 'n' is string in .*more\.csv but int64 in .*pairs\.jsonl"):
        run(ScorePairsJob(pairs=(str(source), str(other)), output=str(tmp_path / "o2"),
                          model_dir=head_checkpoints["de-cos"], keep_cols=("n",)), [], argv=[])
    assert not (tmp_path / "o2").exists()


def test_an_integer_beyond_2_53_in_a_float_kept_column_is_dead_lettered(tmp_path, head_checkpoints):
    # ints and floats in the first objects: the column is float64; 2**53 + 1 has no exact double.
    rows = [{"left": f"question {i}", "right": f"answer {i}", "w": w}
            for i, w in enumerate([0.5, 3, 2 ** 53 + 1, 2 ** 53, -1.25])]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "out"
    summary = run(ScorePairsJob(max_dead_letter_fraction=1.0,
                                pairs=(str(source),), output=str(output), model_dir=head_checkpoints["de-cos"],
                                keep_cols=("w",)), [], argv=[])
    assert summary.dead_letters == {"kept_column_type": 1} and summary.counts["pairs_scored"] == 4
    assert sorted(read_scores_table(output).column("w").to_pylist()) == [-1.25, 0.5, 3.0, float(2 ** 53)]
    letter = dead_letters(output)[0]
    assert json.loads(letter["row"])["w"] == 2 ** 53 + 1 and letter["source"] == f"{source}:3"


def test_one_parquet_file_in_row_group_slices_scores_every_pair_once_on_two_workers(tmp_path, head_checkpoints):
    """A single Parquet file of many row groups is cut into slices that different workers read;
    every pair is scored once, with the same score as the in-process run."""
    rows = 40_000
    texts = [f"text number {i}" for i in range(50)]
    pairs = tmp_path / "one.parquet"
    index = np.arange(rows)
    pq.write_table(pa.table({"left": pa.array(texts).take(pa.array(index % 50)),
                             "right": pa.array(texts).take(pa.array(index // 50 % 50)),
                             "row": pa.array(index, pa.int32())}), pairs, row_group_size=4_000)
    outputs = {}
    for mode, args in (("in-process", []), ("multi-process", MULTI_PROCESS)):
        outputs[mode] = tmp_path / mode
        summary = run(ScorePairsJob(pairs=(str(pairs),), output=str(outputs[mode]), model_dir=head_checkpoints["de-cos"],
                                    keep_cols=("row",), batch_size=2048), args, argv=[])
        assert summary.counts["pairs_read"] == summary.counts["pairs_scored"] == rows
    tables = {mode: read_scores_table(out).sort_by("row") for mode, out in outputs.items()}
    assert tables["multi-process"].column("row").to_pylist() == list(range(rows))
    np.testing.assert_allclose(tables["multi-process"].column("score").to_numpy(),
                               tables["in-process"].column("score").to_numpy(), atol=1e-6)


@pytest.mark.parametrize("dedupe", [False, True])
def test_shuffle_join_equals_broadcast_with_missing_ids_and_repeats(tmp_path, head_checkpoints, dedupe):
    left = tmp_path / "left.jsonl"
    left.write_text("".join(json.dumps({"id": f"q{i}", "text": f"question {i}"}) + "\n" for i in range(6)))
    right = tmp_path / "right.jsonl"
    right.write_text("".join(json.dumps({"id": f"p{i}", "text": f"product {i}"}) + "\n" for i in range(5)))
    q = [f"q{i % 8}" for i in range(60)]            # q6, q7: no text
    p = [f"p{(i * 7) % 6}" for i in range(60)]      # p5: no text
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"q": q, "p": p, "n": list(range(60))}), pairs)
    results = {}
    for join in ("broadcast", "shuffle"):
        output = tmp_path / join
        summary = run(ScorePairsJob(max_dead_letter_fraction=1.0,
                                    pairs=(str(pairs),), output=str(output), left_id_col="q", right_id_col="p",
                                    left_texts=(str(left),), right_texts=(str(right),), join=join,
                                    dedupe_pairs=dedupe, model_dir=head_checkpoints["dipair"], batch_size=8,
                                    keep_cols=() if dedupe else ("n",)), [], argv=[])
        rows = read_scores_all(output)
        results[join] = (summary.counts, summary.dead_letters,
                         sorted((r["left_id"], r["right_id"], round(r["score"], 6)) for r in rows))
    assert results["shuffle"] == results["broadcast"]
    counts, letters, rows = results["shuffle"]
    missing = sum(1 for a, b in zip(q, p) if a in ("q6", "q7"))
    right_missing = sum(1 for a, b in zip(q, p) if a not in ("q6", "q7") and b == "p5")
    if dedupe:
        assert counts["pairs_duplicate"] == 60 - len(set(zip(q, p)))
        assert len(rows) == len({(a, b) for a, b in zip(q, p) if a not in ("q6", "q7") and b != "p5"})
    else:
        assert letters == {"left_text_missing": missing, "right_text_missing": right_missing}
        assert counts["pairs_scored"] == 60 - missing - right_missing == len(rows)


def test_each_side_reads_its_text_table_with_its_own_columns(tmp_path, head_checkpoints):
    """A query table (query_id, query_text) and a product table (sku, title) are read as they are:
    each id's store row holds the hash of that side's text, every pair scores."""
    queries = {"q1": "how do I bake bread?", "q2": "what is a sourdough starter?"}
    products = {"s1": "bread flour 1kg", "s2": "rye sourdough starter kit"}
    left = tmp_path / "queries.csv"
    left.write_text("query_id,query_text,id\n" + "".join(f"{k},{v},x{k}\n" for k, v in queries.items()))
    right = tmp_path / "products.jsonl"
    right.write_text("".join(json.dumps({"sku": k, "title": v, "text": "not this"}) + "\n"
                             for k, v in products.items()))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"q": q, "p": p}) + "\n" for q in queries for p in products))
    output = tmp_path / "out"
    result = CliRunner().invoke(score_pairs.main, [
        "--pairs", str(pairs), "--left-id-col", "q", "--right-id-col", "p", "--left-texts", str(left),
        "--right-texts", str(right), "--left-texts-id-col", "query_id", "--left-texts-text-col", "query_text",
        "--right-texts-id-col", "sku", "--right-texts-text-col", "title", "--model", head_checkpoints["dipair"],
        "--output", str(output), "--quiet"])
    assert result.exit_code == 0, result.output
    assert summary_of(output)["counts"]["pairs_scored"] == 4
    for side, texts in (("left", queries), ("right", products)):
        stored = pq.read_table(output / "store" / side).to_pylist()
        assert {r["id"]: r["text_hash"] for r in stored} == {k: text_id(v) for k, v in texts.items()}


@pytest.mark.parametrize("mode", ["in-process", "multi-process"])
def test_only_the_ids_the_pairs_use_are_encoded(tmp_path, head_checkpoints, mode):
    """Text tables larger than the night's pairs: only the ids some pair names are encoded (a
    semi-join inside the pipeline); rows no pair uses are counted as unused, not dead-lettered,
    even when their text is bad; ids no table gives stay ``{side}_text_missing``."""
    left_rows = [{"id": f"q{i}", "text": f"question number {i}"} for i in range(30)]
    left_rows += [{"id": "q5", "text": "question number 5"},   # a duplicate row of a used id
                  {"id": "q40", "text": "   "},                 # bad text, but no pair uses q40
                  {"id": None, "text": "no id"}]                # no pair could name it: dead letter
    right_rows = [{"id": f"p{i}", "text": f"product number {i}"} for i in range(20)] + [{"id": "p30", "text": ""}]
    left, right = tmp_path / "left.jsonl", tmp_path / "right.jsonl"
    left.write_text("".join(json.dumps(r) + "\n" for r in left_rows))
    right.write_text("".join(json.dumps(r) + "\n" for r in right_rows))
    q = [f"q{i % 10}" for i in range(40)] + ["q99", "q99"]
    p = [f"p{i % 5}" for i in range(40)] + ["p1", "p2"]
    q, p = q + ["q3"], p + ["p30"]
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"q": q, "p": p}), pairs)
    output = tmp_path / "out"
    summary = run(ScorePairsJob(pairs=(str(pairs),), output=str(output), left_id_col="q", right_id_col="p",
                                left_texts=(str(left),), right_texts=(str(right),), join="shuffle",
                                model_dir=head_checkpoints["dipair"]), MULTI_PROCESS if mode == "multi-process" else [],
                  argv=[])
    counts = summary.counts
    used_left, used_right = {f"q{i}" for i in range(10)}, {f"p{i}" for i in range(5)}
    assert (counts["left_texts_encoded"], counts["right_texts_encoded"]) == (len(used_left), len(used_right))
    assert {r["id"] for r in pq.read_table(output / "store" / "left").to_pylist()} == used_left
    assert {r["id"] for r in pq.read_table(output / "store" / "right").to_pylist()} == used_right
    assert (counts["left_text_rows_read"], counts["left_text_rows_kept"], counts["left_text_rows_duplicate"],
            counts["left_text_rows_unused"], counts["left_text_rows_dead_lettered"]) == (33, 10, 1, 21, 1)
    assert (counts["right_text_rows_read"], counts["right_text_rows_kept"], counts["right_text_rows_unused"],
            counts["right_text_rows_dead_lettered"]) == (21, 5, 15, 1)
    assert summary.dead_letters == {"left_text_missing": 2, "right_text_missing": 1,
                                    "left_texts:null_id": 1, "right_texts:empty_text": 1}
    assert counts["pairs_scored"] == 40
    assert "left text rows read 33 = kept 10 + duplicates 1 + unused 21 + dead-lettered 1" in summary.reconciliation


def test_pairs_of_ids_score_from_the_store_alone(tmp_path, head_checkpoints):
    """Last night's store holds the ids: tonight's pairs of ids need no text tables. Their scores
    are last night's, nothing is encoded, and an id the store lacks is dead-lettered as missing."""
    left, right = tmp_path / "left.jsonl", tmp_path / "right.jsonl"
    left.write_text("".join(json.dumps({"id": f"q{i}", "text": f"question {i}"}) + "\n" for i in range(4)))
    right.write_text("".join(json.dumps({"id": f"p{i}", "text": f"product {i}"}) + "\n" for i in range(3)))
    q, p = [f"q{i % 4}" for i in range(12)], [f"p{i % 3}" for i in range(12)]
    first = tmp_path / "night1"
    pq.write_table(pa.table({"q": q, "p": p}), tmp_path / "night1.parquet")
    run(ScorePairsJob(pairs=(str(tmp_path / "night1.parquet"),), output=str(first), left_id_col="q",
                      right_id_col="p", left_texts=(str(left),), right_texts=(str(right),),
                      model_dir=head_checkpoints["dipair"]), [], argv=[])
    pq.write_table(pa.table({"q": q + ["q7"], "p": p + ["p0"]}), tmp_path / "night2.parquet")
    second = tmp_path / "night2"
    result = CliRunner().invoke(score_pairs.main, [
        "--pairs", str(tmp_path / "night2.parquet"), "--left-id-col", "q", "--right-id-col", "p",
        "--store", str(first / "store"), "--model", head_checkpoints["dipair"], "--output", str(second), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = summary_of(second)
    assert summary["counts"]["pairs_scored"] == 12 and summary["dead_letters"] == {"left_text_missing": 1}
    assert summary["counts"]["left_texts_encoded"] == summary["counts"]["right_texts_encoded"] == 0
    assert read_scores(second) == read_scores(first)
