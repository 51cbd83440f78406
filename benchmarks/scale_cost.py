"""Inputs of the cost model in docs/scale.md: CPU-seconds per pair and per text, shuffle bytes.

    python benchmarks/scale_cost.py [--seconds 3] [--texts 256] [--pairs 40000] [--write-doc]

``--write-doc`` writes the measured table (and the CPU the scenarios need) into docs/scale.md
between ``<!-- scale_cost:begin -->`` and ``<!-- scale_cost:end -->``.

Measures, on one thread (``torch.set_num_threads(1)``, so the figures are per core and add up
across the cores of a worker), with ``time.process_time`` (CPU time, which a busy shared machine
inflates less than wall time):

* head only: CPU-seconds per pair of the default student head (``dipair``, N=4, M=12, D=128,
  L=2, FFN 1024), fp32, batch 4096, no padding;
* stage one: CPU-seconds per unique text through the packaged all-MiniLM-L6-v2 (6 layers), real
  QQP questions when ../shared/data is there (else a fixed English sentence set), sorted by
  length into batches of 128 as ``encode_texts`` does;
* stage two end to end: the marginal CPU-seconds per pair of ``jobs.score_pairs`` (in-process
  runner, pairs of ids, stores already written so no text is encoded), for each join: the CPU
  time of a run over ``--pairs`` pairs minus that of a run over a quarter of them, divided by
  the difference, so start-up and model loading cancel out;
* the bytes Beam's default coder writes for the elements of the shuffle join in
  ``pipeline/beam/score.py`` (a pair keyed by its left id; a pair with its left store entry keyed by
  its right id; a store entry keyed by its id), next to the store row sizes they come from.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def cpu_seconds_per_item(call, items: int, seconds: float) -> float:
    """Median CPU-seconds per item over repeats of ``call`` (which handles ``items`` items)."""
    call()  # warm-up
    runs, spent = [], 0.0
    while spent < seconds or len(runs) < 3:
        start = time.process_time()
        call()
        runs.append(time.process_time() - start)
        spent += runs[-1]
    return float(np.median(runs)) / items


def head_cost(seconds: float, batch: int = 4096) -> float:
    from heads import build_head
    head = build_head("dipair", dim=128, left_tokens=4, right_tokens=12, num_outputs=1).eval()
    generator = torch.Generator().manual_seed(0)
    left, right = torch.randn(batch, 4, 128, generator=generator), torch.randn(batch, 12, 128, generator=generator)
    left_mask, right_mask = torch.ones(batch, 4, dtype=torch.bool), torch.ones(batch, 12, dtype=torch.bool)

    @torch.inference_mode()
    def run():
        head(left, left_mask, right, right_mask)
    return cpu_seconds_per_item(run, batch, seconds)


def texts_for_encoding(count: int) -> list[str]:
    qqp = REPO.parent / "shared" / "data" / "qqp" / "dev.jsonl"
    texts: list[str] = []
    if qqp.is_file():
        with open(qqp, encoding="utf-8") as handle:
            for line in handle:
                texts.append(json.loads(line)["left"])
                if len(texts) == count:
                    break
    while len(texts) < count:
        texts.append(f"what is the best way to learn a new language number {len(texts)} quickly")
    return texts


def encoder_cost(seconds: float, count: int) -> tuple[float, float]:
    """(CPU-seconds per text, mean tokens per text) for the packaged MiniLM, 6 layers."""
    from encoders.checkpoint import build_student
    from encoders.config import baseline_config
    side = build_student(baseline_config()).encoder.left
    texts = texts_for_encoding(count)
    tokenized = side.tokenize(texts)
    ordered = [texts[i] for i in sorted(range(len(texts)), key=lambda i: tokenized[i].num_tokens)]

    @torch.inference_mode()
    def run():  # tokenize + encode, sorted by length into batches of 128, as encode_texts does
        for start in range(0, len(ordered), 128):
            batch = side.collate(side.tokenize(ordered[start:start + 128]))
            side(batch.input_ids, batch.attention_mask)
    lengths = float(np.mean([t.num_tokens for t in tokenized]))
    return cpu_seconds_per_item(run, len(texts), seconds), lengths


def _cpu_seconds() -> float:
    import resource
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def end_to_end_cost(pairs: int) -> dict[str, float]:
    """join -> marginal CPU-seconds per pair of score_pairs (see the module docstring)."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from encoders.checkpoint import build_student, save_student
    from encoders.config import StudentConfig
    from jobs.encode_texts import EncodeTextsJob
    from jobs.encode_texts import run as encode
    from jobs.score_pairs import ScorePairsJob
    from jobs.score_pairs import run as score

    side_texts = 200
    texts = texts_for_encoding(2 * side_texts)
    config = StudentConfig(left_tokens=4, right_tokens=12, dim=128, head="dipair",
                           head_options={"layers": 2, "heads": 1, "ffn": 1024})
    costs = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = str(save_student(build_student(config), work / "student"))
        for side, part in (("left", texts[:side_texts]), ("right", texts[side_texts:])):
            rows = "".join(json.dumps({"id": f"{side[0]}{i}", "text": t}) + "\n" for i, t in enumerate(part))
            (work / f"{side}.jsonl").write_text(rows, encoding="utf-8")
            encode(EncodeTextsJob(inputs=(str(work / f"{side}.jsonl"),), id_col="id", side=side, model_dir=model,
                                  output=str(work / "store" / side)), [], [])
        sizes = (pairs // 4, pairs)
        for size in sizes:
            pq.write_table(pa.table({"q": [f"l{i % side_texts}" for i in range(size)],
                                     "p": [f"r{(i // side_texts + i) % side_texts}" for i in range(size)]}),
                           work / f"pairs-{size}.parquet")
        for join in ("broadcast", "shuffle"):
            spent = []
            for size in sizes:
                before = _cpu_seconds()
                summary = score(ScorePairsJob(
                    pairs=(str(work / f"pairs-{size}.parquet"),), left_id_col="q", right_id_col="p",
                    left_texts=(str(work / "left.jsonl"),), right_texts=(str(work / "right.jsonl"),),
                    model_dir=model, store=str(work / "store"), output=str(work / f"out-{join}-{size}"), join=join),
                    [], [])
                spent.append(_cpu_seconds() - before)
                assert summary.counts["pairs_scored"] == size and summary.counts["left_texts_encoded"] == 0
            costs[join] = (spent[1] - spent[0]) / (sizes[1] - sizes[0])
    return costs


def shuffle_bytes() -> dict[str, int]:
    """Encoded bytes of one element at each shuffle of the join (Beam's default coder)."""
    from apache_beam.coders.typecoders import registry
    from apache_beam.typehints import Any

    from pipeline.readers import SourcedRow
    from pipeline.beam.score import Pair, StoreEntry
    from pipeline.text_ids import text_id

    coder = registry.get_coder(Any)  # what a PCollection without type hints is shuffled with
    left, right = "how do i learn python quickly", "what is the fastest way to learn python"
    row = SourcedRow("/data/pairs/part-00000.parquet:123456", {"left": left, "right": right})
    pair = Pair(text_id(left), text_id(right), (), row)
    left_entry = StoreEntry(bytes(4 * 128 * 2), 4, None, None)
    right_entry = StoreEntry(bytes(12 * 128 * 2), 12, None, None)
    sizes = {
        "join_left_pair": len(coder.encode((pair.left_id, pair))),
        "join_right_pair_with_left_entry": len(coder.encode((pair.right_id, (pair, left_entry)))),
        "left_store_entry": len(coder.encode((pair.left_id, left_entry))),
        "right_store_entry": len(coder.encode((pair.right_id, right_entry))),
        "pair_row_fields": len(coder.encode(row)),
    }
    return sizes


BEGIN, END = "<!-- scale_cost:begin -->", "<!-- scale_cost:end -->"
DOC = REPO / "docs" / "scale.md"
# The scenarios of docs/scale.md: (pairs, unique texts); 8-vCPU workers, all busy.
SCENARIOS = {"10⁹ pairs": (1e9, 1.1e7), "10¹² pairs": (1e12, 2e8)}
WORKER_VCPUS = 8


def _hours(cpu_seconds: float) -> str:
    vcpu = cpu_seconds / 3600
    return f"{vcpu:,.0f} vCPU-hours = **{vcpu / WORKER_VCPUS:,.0f} worker-hours**"


def cost_table(figures: dict) -> str:
    """The block ``scale_cost.py --write-doc`` puts between the markers of docs/scale.md: the
    figures as JSON (so the table can be re-rendered and checked), the measured table, and the
    CPU the scenarios need. ``figures``: command, date, machine, head_us (list: one per run),
    encode_ms, tokens, join_us (join -> µs), shuffle (element -> bytes)."""
    head = figures["head_us"]
    low, high = min(head), max(head)
    head_text = f"{low:,.0f}" if round(low) == round(high) else f"{low:,.0f}–{high:,.0f}"
    rate = (f"{1e6 / high:,.0f}" if round(low) == round(high) else f"{1e6 / high:,.0f}–{1e6 / low:,.0f}")
    shuffle = figures["shuffle"]
    lines = [BEGIN,
             f"<!-- scale_cost:figures {json.dumps(figures, sort_keys=True, ensure_ascii=False)} -->",
             f"Measured by `{figures['command']}`, {figures['date']}, {figures['machine']}.",
             "",
             "| what | figure |",
             "|---|---|",
             f"| stage two, head only: `dipair` N=4, M=12, D=128, L=2, fp32, batch 4096, no padding | "
             f"**{head_text} CPU-µs per pair** ({rate} pairs per CPU-second) |"]
    for join, label in (("shuffle", "stage two end to end, `score_pairs --join shuffle`: pairs of ids, stores "
                                     "already written, in-process runner, marginal cost (start-up and model "
                                     "loading cancel out)"),
                        ("broadcast", "the same, `--join broadcast`")):
        if join in figures.get("join_us", {}):
            value = figures["join_us"][join]
            lines.append(f"| {label} | **{value:,.0f} CPU-µs per pair** ({1e6 / value:,.0f} pairs per CPU-second) |")
    lines.append(f"| stage one: packaged MiniLM, 6 layers, {figures['tokens']:.1f} tokens per text on average, "
                 f"length-sorted batches of 128 | **{figures['encode_ms']:.1f} CPU-ms per text** "
                 f"({1e3 / figures['encode_ms']:,.0f} texts per CPU-second) |")
    if shuffle:
        lines.append("| shuffle join, bytes of one element (Beam's default coder) | " + "; ".join(
            f"{name.replace('_', ' ')}: **{size:,} B**" for name, size in sorted(shuffle.items())) + " |")
    lines += ["", "CPU at scale (extrapolated: the figures above × the scenarios below, "
                  f"{WORKER_VCPUS}-vCPU workers, all busy):", "",
              "| | " + " | ".join(SCENARIOS) + " |", "|---|" + "---|" * len(SCENARIOS)]
    for join in ("shuffle", "broadcast"):
        if join in figures.get("join_us", {}):
            value = figures["join_us"][join]
            lines.append(f"| stage two CPU, {join} join ({value:,.0f} µs per pair) | " + " | ".join(
                _hours(pairs * value / 1e6) for pairs, _ in SCENARIOS.values()) + " |")
    lines.append(f"| stage one CPU ({figures['encode_ms']:.1f} ms per text) | " + " | ".join(
        _hours(texts * figures["encode_ms"] / 1e3) for _, texts in SCENARIOS.values()) + " |")
    lines.append(END)
    return "\n".join(lines)


def committed_block(text: str) -> str:
    """The block between (and with) the markers of a document."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def figures_of(block: str) -> dict:
    line = next(line for line in block.splitlines() if line.startswith("<!-- scale_cost:figures "))
    return json.loads(line[len("<!-- scale_cost:figures "):-len(" -->")])


def write_doc(path: Path, figures: dict) -> None:
    """Replace the block between the markers of ``path`` by :func:`cost_table` of ``figures``."""
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace(committed_block(text), cost_table(figures)), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="CPU time per measurement")
    parser.add_argument("--texts", type=int, default=256, help="texts for the stage-one measurement")
    parser.add_argument("--pairs", type=int, default=40_000, help="pairs of the larger end-to-end run (0: skip)")
    parser.add_argument("--head-runs", type=int, default=3, help="head-only measurements (the table gives their range)")
    parser.add_argument("--write-doc", action="store_true", help=f"write the table into {DOC.relative_to(REPO)}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread")
    head_runs = [head_cost(args.seconds) for _ in range(args.head_runs)]
    head = float(np.median(head_runs))
    print(f"head only (dipair N=4 M=12 D=128 L=2, fp32, batch 4096): {head * 1e6:.1f} CPU-us/pair "
          f"= {1 / head:,.0f} pairs per CPU-second")
    per_text, tokens = encoder_cost(args.seconds, args.texts)
    print(f"stage one (packaged MiniLM, 6 layers, {tokens:.1f} tokens/text): {per_text * 1e3:.2f} CPU-ms/text "
          f"= {1 / per_text:,.0f} texts per CPU-second")
    joins = end_to_end_cost(args.pairs) if args.pairs else {}
    for join, per_pair in joins.items():
        print(f"score_pairs end to end, --join {join} (marginal, {args.pairs // 4:,} -> {args.pairs:,} pairs): "
              f"{per_pair * 1e6:.1f} CPU-us/pair = {1 / per_pair:,.0f} pairs per CPU-second "
              f"= {head / per_pair:.2f} x head only")
    shuffle = shuffle_bytes()
    for name, size in shuffle.items():
        print(f"shuffle element {name}: {size:,} bytes")
    if args.write_doc:
        import datetime
        import os
        import platform

        command = "python benchmarks/scale_cost.py " + " ".join(sys.argv[1:])
        write_doc(DOC, {"command": command, "date": datetime.date.today().isoformat(),
                        "machine": f"{os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__}, one thread",
                        "head_us": [round(h * 1e6, 1) for h in head_runs], "encode_ms": round(per_text * 1e3, 2),
                        "tokens": round(tokens, 1), "join_us": {j: round(v * 1e6, 1) for j, v in joins.items()},
                        "shuffle": shuffle})
        print(f"wrote the table into {DOC}")


if __name__ == "__main__":
    main()
