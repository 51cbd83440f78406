"""Ids mode against a catalogue: texts encoded and time, before vs after the semi-join
(docs/benchmarks.md, "Ids mode: only the ids the pairs use").

    python benchmarks/ids_semijoin.py --pairs 100000 --rows 1000000 --used 10000   # the issue's scale
    python benchmarks/ids_semijoin.py --pairs 10000 --rows 100000 --used 1000      # a 2-core machine
    python benchmarks/ids_semijoin.py --after-only                                 # the issue's scale, after only

Each side has a text table of ``--rows`` id/text rows (Parquet, distinct synthetic texts); the
``--pairs`` pairs name ``--used`` ids of each side (drawn at random). The same ``score_pairs``
command runs on this checkout ("after") and on ``--before`` (a commit exported with ``git
archive`` into a temporary directory: the code before the semi-join, which encodes the whole
tables), each a fresh process on the in-process DirectRunner, with a tiny random student (3-layer,
32-wide BERT with MiniLM's tokenizer, built here: no download) so that the whole-table run stays
affordable; the encoder's cost per text is then small, so the time ratio understates what a real
encoder gains (that gain is the ratio of texts encoded). Prints both runs side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
BEFORE = "de027c7"   # main before this change (the last commit without the semi-join)


def tiny_student(directory: Path) -> str:
    """A tiny random student (as tests/conftest.py builds), saved to ``directory``."""
    sys.path.insert(0, str(REPO))
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from encoders.checkpoint import build_student, save_student
    from encoders.config import StudentConfig
    from encoders.sources import DEFAULT_ENCODER, resolve_encoder

    encoder = directory / "encoder"
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder(DEFAULT_ENCODER))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=256)).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    config = StudentConfig(encoder=str(encoder), encoder_layers=2, left_tokens=4, right_tokens=6, left_max_length=16,
                           right_max_length=24, dim=8, pooled=True, head="dipair", head_options={})
    student = directory / "student"
    save_student(build_student(config, seed=1), student)
    return str(student)


def write_inputs(directory: Path, pairs: int, rows: int, used: int, seed: int = 0) -> dict[str, Path]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    paths = {}
    for side, words in (("left", "question about item"), ("right", "product listing number")):
        ids = pa.array([f"{side[0]}{i}" for i in range(rows)])
        texts = pa.array([f"{words} {i} of the catalogue" for i in range(rows)])
        paths[side] = directory / f"{side}.parquet"
        pq.write_table(pa.table({"id": ids, "text": texts}), paths[side], row_group_size=1 << 16)
    chosen = {side: rng.choice(rows, size=used, replace=False) for side in ("left", "right")}
    # Every chosen id appears at least once (pairs >= used), the rest drawn at random among them.
    picks = {side: np.concatenate([np.arange(used), rng.integers(0, used, size=pairs - used)]) for side in chosen}
    table = pa.table({"q": [f"l{i}" for i in chosen["left"][picks["left"]]],
                      "p": [f"r{i}" for i in chosen["right"][rng.permutation(picks["right"])]]})
    paths["pairs"] = directory / "pairs.parquet"
    pq.write_table(table, paths["pairs"])
    return paths


def run_job(code: Path, inputs: dict[str, Path], model: str, output: Path) -> dict:
    argv = [sys.executable, "-m", "jobs.score_pairs", "--pairs", str(inputs["pairs"]), "--left-id-col", "q",
            "--right-id-col", "p", "--left-texts", str(inputs["left"]), "--right-texts", str(inputs["right"]),
            "--model", model, "--output", str(output), "--quiet", "--runner", "DirectRunner"]
    env = dict(os.environ, PYTHONPATH=str(code))
    tic = time.perf_counter()
    done = subprocess.run(argv, cwd=code, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - tic
    if done.returncode != 0:
        raise SystemExit(f"{code}: exit {done.returncode}\n{done.stderr[-3000:]}")
    counts = json.loads((output / "_SUMMARY.json").read_text())["counts"]
    return {"seconds": seconds, "encoded": counts["left_texts_encoded"] + counts["right_texts_encoded"],
            "scored": counts["pairs_scored"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of each side's text table")
    parser.add_argument("--used", type=int, default=10_000, help="distinct ids of each side the pairs name")
    parser.add_argument("--before", default=BEFORE, help="commit of the code before the semi-join")
    parser.add_argument("--after-only", action="store_true",
                        help="run this checkout only (the before encodes every row of both tables: 2 x --rows)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ids-semijoin-") as tmp:
        tmp = Path(tmp)
        before = tmp / "before"
        before.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
        model = tiny_student(tmp)
        inputs = write_inputs(tmp, args.pairs, args.rows, args.used)
        results = {}
        for name, code in (("before", before), ("after", REPO)):
            if name == "before" and args.after_only:
                continue
            results[name] = run_job(code, inputs, model, tmp / f"out-{name}")
            print(f"{name}: {results[name]}", flush=True)
    a = results["after"]
    print(f"\n{args.pairs:,} pairs naming {args.used:,} ids per side, text tables of {args.rows:,} rows per side")
    print("| code | texts encoded | seconds | pairs scored |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['encoded']:,} | {r['seconds']:.1f} | {r['scored']:,} |")
    if "before" in results:
        b = results["before"]
        print(f"| before / after | {b['encoded'] / max(a['encoded'], 1):.1f}x | {b['seconds'] / a['seconds']:.2f}x | |")
    else:
        print(f"| before (not run: every row of both tables) | {2 * args.rows:,} | | |")
        print(f"| before / after, texts encoded | {2 * args.rows / max(a['encoded'], 1):.1f}x | | |")


if __name__ == "__main__":
    main()
