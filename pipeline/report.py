"""The evaluation report: ``report.md`` with PNG plots, readable without pairscore.

``jobs.evaluate`` computes everything (``metrics.json``); this module only draws and writes:

* ``roc.png``           ROC curves of every model (binary labels);
* ``histograms.png``    each model's score histogram per class (binary), or score against grade (graded);
* ``quality_speed.png`` quality against pairs/s for every model on one plot (log scale): end to end on
                        the evaluated pairs, and for students the head alone (pairs >> texts).

matplotlib runs with the Agg backend (no display needed).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from encoders.metrics import roc_curve  # noqa: E402

REPORT_FILE = "report.md"
ROC_PLOT = "roc.png"
HISTOGRAM_PLOT = "histograms.png"
SCATTER_PLOT = "scores.png"
SPEED_PLOT = "quality_speed.png"
METRIC_NAMES = {"auc": "ROC-AUC", "spearman": "Spearman"}


def write_report(directory: str, metrics: dict[str, Any], scores: dict[str, np.ndarray], targets: np.ndarray
                 ) -> str:
    """Draw the plots and write ``report.md`` into ``directory``; returns the report's path.

    metrics: what evaluate writes to metrics.json; scores: model name -> (P,) scores;
    targets: (P,) labels (0/1) or grades.
    """
    binary = metrics["task"] == "binary"
    plots = []
    if binary:
        plot_roc(os.path.join(directory, ROC_PLOT), scores, targets, metrics)
        plot_histograms(os.path.join(directory, HISTOGRAM_PLOT), scores, targets, metrics)
        plots += [("ROC curves", ROC_PLOT), ("Scores per class", HISTOGRAM_PLOT)]
    else:
        plot_scatter(os.path.join(directory, SCATTER_PLOT), scores, targets)
        plots.append(("Scores against the grade", SCATTER_PLOT))
    plot_quality_speed(os.path.join(directory, SPEED_PLOT), metrics)
    plots.append(("Quality against speed", SPEED_PLOT))
    path = os.path.join(directory, REPORT_FILE)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(markdown(metrics, plots))
    return path


# --------------------------------------------------------------------------- text

def write_metrics(path: str, metrics: dict[str, Any]) -> None:
    """``metrics.json``: strict JSON (see :func:`strict_json`), indented."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(strict_json(metrics), handle, indent=2, allow_nan=False)
        handle.write("\n")


def strict_json(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers, NaN (an undefined correlation or AUC) as null
    and infinities (a threshold above every score: nothing predicted positive) as the strings
    "inf" / "-inf", so metrics.json is JSON every parser reads."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


# What the score:NAME columns of scores.parquet mean (its pairscore.score metadata).
EVALUATED_SCORES = ("score:NAME, one column per model: a probability in [0, 1] for teachers and students, "
                    "a cosine in [-1, 1] for the baseline")


def write_scores(path: str, labeled, scores: dict[str, np.ndarray], provenance: dict[str, str] | None = None,
                 group_col: str | None = None) -> None:
    """Every model's score per evaluated pair (``labeled``: pipeline.datasets.LabeledPairs), next to
    the texts, the target and (with ``group_col``) the query: one Parquet file anyone can load to
    dig into disagreements (``provenance``: its key-value metadata)."""
    import pyarrow as pa
    from pipeline.writers import write_parquet_file

    columns = {"left": labeled.lefts, "right": labeled.rights, "target": labeled.targets}
    if group_col is not None:
        columns["group"] = labeled.groups
    columns.update({f"score:{name}": s.astype(np.float32) for name, s in scores.items()})
    table = pa.table(columns).replace_schema_metadata(provenance)
    write_parquet_file(path, table.schema, [table])


def markdown(metrics: dict[str, Any], plots: list[tuple[str, str]]) -> str:
    pairs, machine = metrics["pairs"], metrics["machine"]
    lines = ["# Evaluation report", ""]
    positives = f", {pairs['label_rate']:.1%} positive" if pairs.get("label_rate") is not None else ""
    lines.append(f"**Pairs**: {', '.join(f'`{p}`' for p in pairs['paths'])} — {pairs['count']:,} pairs{positives}, "
                 f"{pairs['unique_left_texts']:,} unique left + {pairs['unique_right_texts']:,} unique right texts: "
                 f"**{pairs['pairs_per_unique_text']:.2f} pairs per unique text** (the regime of the end-to-end "
                 "speeds).")
    lines.append("")
    if metrics["threshold_source"] == "dev":
        dev = metrics["dev"]
        lines.append(f"**Threshold** for accuracy and F1: each model's best-accuracy threshold on the dev pairs "
                     f"{', '.join(f'`{p}`' for p in dev['paths'])} ({dev['count']:,} pairs), applied to these pairs.")
    elif metrics["threshold_source"]:
        lines.append("**Threshold** for accuracy and F1: each model's best-accuracy threshold on *these same pairs* "
                     "(no `--dev` was given), so accuracy and F1 are optimistic.")
    lines.append("")
    lines.append(f"**Machine**: {machine['device']}, {machine['torch_threads']} torch threads of {machine['cpus']} "
                 f"CPUs, torch {machine['torch']}, {machine['platform']}. Speeds are single runs in one process "
                 "(plain PyTorch, no Beam); small sets give noisy speeds.")
    lines += ["", "## Results", "", results_table(metrics), ""]
    ranking = ranking_table(metrics)
    if ranking:
        lines += ["", ranking, ""]
    lines += column_notes(metrics)
    for title, file in plots:
        lines += ["", f"## {title}", "", f"![{title}]({file})"]
    lines += ["", "## Models", ""]
    for name, result in metrics["models"].items():
        lines.append(f"- **{name}** ({result['kind']}): {result['description']}; `{result['source']}`, fingerprint "
                     f"`{result['fingerprint'][:16]}`")
    return "\n".join(lines) + "\n"


def results_table(metrics: dict[str, Any]) -> str:
    """The Markdown table of every model's quality, agreement and speed (DiPair tables 2-4)."""
    main = metrics["main_metric"]
    binary = metrics["task"] == "binary"
    has_teacher = metrics["reference_teacher"] is not None
    header = ["model", "kind", METRIC_NAMES[main]]
    if has_teacher:
        header.append("vs teacher")
    header += ["accuracy", "F1", "threshold"] if binary else ["Pearson"]
    if has_teacher:
        header += ["logit r with teacher", "AUC on teacher labels"]
    header += ["pairs/s end to end", "head pairs/s"]
    if has_teacher:
        header += ["speedup", "head speedup"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in metrics["models"].items():
        quality, speed = result["quality"], result["speed"]
        agreement = result.get("agreement", {})
        cells = [name, result["kind"], _number(quality[main])]
        if has_teacher:
            cells.append(_percent(result.get("relative_quality")))
        cells += ([_percent(quality["accuracy"]), _number(quality["f1"]), _number(quality["threshold"], 3)]
                  if binary else [_number(quality["pearson"])])
        if has_teacher:
            cells += (["—", "—"] if name == metrics["reference_teacher"] else
                      [_number(agreement.get("teacher_logit_pearson")), _number(agreement.get("teacher_label_auc"))])
        cells += [_rate(speed["pairs_per_second"]), _rate(speed.get("head_pairs_per_second"))]
        if has_teacher:
            cells += [_times(result.get("speedup")), _times(result.get("speedup_head"))]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def ranking_table(metrics: dict[str, Any]) -> str:
    """With ``--group-col``: every model's MRR@10, MAP and nDCG@10, then every ``--compare``
    difference with its 95% paired-bootstrap interval. Empty without either."""
    rows = []
    ranked = {name: r["ranking"] for name, r in metrics["models"].items() if "ranking" in r}
    if ranked:
        first = next(iter(ranked.values()))
        rows += [f"Ranking by `{metrics.get('group_col')}`: {first['queries']:,} of {first['queries_total']:,} queries "
                 "have a positive and a negative candidate (the others cannot be ranked and are left out).", "",
                 "| model | MRR@10 | MAP | nDCG@10 |", "|---|---|---|---|"]
        rows += [f"| {name} | {_number(r['mrr@10'])} | {_number(r['map'])} | {_number(r['ndcg@10'])} |"
                 for name, r in ranked.items()]
    for comparison in metrics.get("comparisons") or []:
        rows += ["", f"{comparison['a']} − {comparison['b']}, 95% paired bootstrap:", "",
                 "| metric | difference | interval | resampled | verdict |", "|---|---|---|---|---|"]
        for metric, d in comparison["differences"].items():
            rows.append(f"| {metric} | {d['difference']:+.4f} | [{d['low']:+.4f}, {d['high']:+.4f}] | "
                        f"{d['count']:,} {d['unit']} | {d['verdict'].replace('a better', comparison['a'] + ' better').replace('b better', comparison['b'] + ' better')} |")
    return "\n".join(rows)


def column_notes(metrics: dict[str, Any]) -> list[str]:
    notes = []
    if metrics["reference_teacher"]:
        notes.append(f"- *vs teacher*: the model's {METRIC_NAMES[metrics['main_metric']]} as a share of the teacher "
                     f"`{metrics['reference_teacher']}`'s. *logit r with teacher*: Pearson correlation of the model's "
                     "logit (the baseline's cosine) with the teacher's; *AUC on teacher labels*: how well the model's "
                     "scores rank the teacher's own decisions (teacher probability >= 0.5).")
    notes.append(f"- *pairs/s end to end*: teachers read every pair; students encode each unique text once and run "
                 f"the head per pair, here at {metrics['pairs']['pairs_per_unique_text']:.2f} pairs per unique text. "
                 "*head pairs/s*: the head alone on stored tokens, the limit when pairs far outnumber texts "
                 "(DiPair's setting). *Speedups* are over the teacher's pairs/s.")
    return notes


def _number(value: Any, digits: int = 4) -> str:
    if isinstance(value, str):   # metrics.json writes infinities as "inf" / "-inf"
        value = float(value)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—" if value is None or math.isnan(value) else ("∞" if value > 0 else "−∞")
    return f"{value:.{digits}f}"


def _percent(value: Any) -> str:
    return "—" if value is None else f"{value:.1%}"


def _rate(value: Any) -> str:
    return "—" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _times(value: Any) -> str:
    return "—" if value is None else f"{value:,.1f}×"


# --------------------------------------------------------------------------- pictures

def plot_roc(path: str, scores: dict[str, np.ndarray], labels: np.ndarray, metrics: dict[str, Any]) -> None:
    figure, axes = plt.subplots(figsize=(6.5, 6))
    for name, values in scores.items():
        fpr, tpr, _ = roc_curve(values, labels)
        axes.plot(fpr, tpr, label=f"{name} (AUC {metrics['models'][name]['quality']['auc']:.3f})", linewidth=1.4)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
             title=f"ROC curves, {len(labels):,} pairs")
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    _save(figure, path)


def plot_histograms(path: str, scores: dict[str, np.ndarray], labels: np.ndarray, metrics: dict[str, Any]) -> None:
    names = list(scores)
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    labels = labels.astype(bool)
    for axes, name in zip(grid.flat, names):
        values = scores[name]
        bins = np.linspace(values.min(), values.max(), 41) if values.max() > values.min() else 10
        axes.hist(values[~labels], bins=bins, alpha=0.6, density=True, label="label 0", color="tab:blue")
        axes.hist(values[labels], bins=bins, alpha=0.6, density=True, label="label 1", color="tab:orange")
        threshold = metrics["models"][name]["quality"]["threshold"]
        if math.isfinite(threshold):
            axes.axvline(threshold, color="black", linestyle="--", linewidth=1, label="threshold")
        axes.set_title(name, fontsize=10)
        axes.set_xlabel("score", fontsize=8)
        axes.set_yticks([])   # densities of different models are not comparable; the shapes are
        axes.tick_params(labelsize=7)
        axes.legend(fontsize=7)
    for axes in list(grid.flat)[len(names):]:
        axes.axis("off")
    figure.suptitle("Score distribution per class (density)", fontsize=11)
    _save(figure, path)


def plot_scatter(path: str, scores: dict[str, np.ndarray], targets: np.ndarray) -> None:
    names = list(scores)
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for axes, name in zip(grid.flat, names):
        axes.scatter(targets, scores[name], s=4, alpha=0.4)
        axes.set_title(name, fontsize=10)
        axes.set_xlabel("label", fontsize=8)
        axes.set_ylabel("score", fontsize=8)
        axes.tick_params(labelsize=7)
    for axes in list(grid.flat)[len(names):]:
        axes.axis("off")
    _save(figure, path)


def plot_quality_speed(path: str, metrics: dict[str, Any]) -> None:
    """One point per model at its end-to-end pairs/s; students also at their head-only pairs/s
    (triangle), joined by a line: how far the student gets as pairs outnumber texts."""
    main = metrics["main_metric"]
    figure, axes = plt.subplots(figsize=(9, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, (name, result) in enumerate(metrics["models"].items()):
        color = colors[number % len(colors)]
        value = result["quality"][main]
        end_to_end, head = result["speed"]["pairs_per_second"], result["speed"].get("head_pairs_per_second")
        marker = "s" if result["kind"] == "teacher" else "o"
        axes.scatter([end_to_end], [value], color=color, marker=marker, s=50, zorder=3, label=name)
        if head is not None:
            axes.plot([end_to_end, head], [value, value], color=color, linewidth=1, alpha=0.6)
            axes.scatter([head], [value], color=color, marker="^", s=50, zorder=3)
        axes.annotate(name, (end_to_end, value), textcoords="offset points", xytext=(4, 5), fontsize=7)
    axes.set_xscale("log")
    axes.set(xlabel="pairs per second (log scale)", ylabel=METRIC_NAMES[main],
             title=f"Quality against speed: ● end to end at {metrics['pairs']['pairs_per_unique_text']:.2f} pairs per "
                   "unique text, ▲ head only, ■ teacher")
    axes.title.set_fontsize(9)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))   # outside: points stay visible
    _save(figure, path)


def _save(figure, path: str) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
