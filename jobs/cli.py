"""The command line of every job: ``pairscore <job> ...`` and ``python -m jobs.<name> ...``.

Light on purpose: this module imports click and the standard library only, so ``--help``, a bad
argument and a bad choice answer at once. A command imports its job module (Beam, torch,
transformers: seconds) only after its flags have parsed, and runs it with ``jobs.common.run_job``
(progress, logging, errors as one line and exit status 2).

``python -m jobs.<name>`` runs the job module as ``__main__``; its first lines hand over to
``main_module`` here before its own imports run.
"""
from __future__ import annotations

import os
import sys

import click

from jobs.common import (ARGV_KEY, BEAM_EPILOG, BEAM_JOB_CONTEXT, PLAIN_JOB_CONTEXT, JobCommand,
                         beam_args_for_run, count_from_process_start, device_option, output_option,
                         overwrite_option, parse_head_options, parse_label_range, run_job, run_options,
                         split_list)

# Choices the flags offer, spelled here so that --help needs no heavy import. Each is defined in
# the library (named in the comment); tests/jobs/test_cli.py checks that the two agree.
FORMATS = ("parquet", "jsonl", "csv", "tsv")              # pipeline.readers.FORMATS
DTYPES = ("float16", "int8")                              # pipeline.store.DTYPES
JOINS = ("auto", "broadcast", "shuffle")                  # jobs.score_pairs.JOINS
TASKS = ("binary", "graded", "classes")                   # encoders.teacher.TASKS
TEACHER_LOSSES = ("bce", "ce", "mse")                     # every loss of encoders.teacher.LOSSES
STUDENT_LOSSES = ("ce", "mse")                            # jobs.train_student.LOSSES
STUDENT_HEADS = ("dipair", "dipair-ffnn", "li", "de-ffnn", "de-cos")  # jobs.train_student.TRAINABLE_HEADS
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"  # encoders.sources.DEFAULT_ENCODER


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def pairscore() -> None:
    """pairscore: score very large sets of text pairs with DiPair-style distilled students.

    Each command is also `python -m jobs.<name>` (e.g. `python -m jobs.score_pairs`); `pairscore
    <command> --help` explains its flags.
    """


# The directory holding pairscore's packages (jobs/, pipeline/, encoders/, heads/).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def console_main() -> None:
    """The ``pairscore`` console script (setup.py entry point)."""
    _shield_beam_workers()
    count_from_process_start()
    pairscore(prog_name="pairscore")


def main_module(name: str) -> None:
    """``python -m jobs.<name>``: run the command, then exit.

    ``python -m`` puts the current directory first on ``sys.path``, so a user's ``pipeline.py``
    (or ``heads.py`` ...) there would shadow pairscore's package of that name once the job
    imports it; the current directory moves to the end unless it is where pairscore lives.
    """
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) != PACKAGE_ROOT:
        sys.path.append(sys.path.pop(0))
    _shield_beam_workers()
    count_from_process_start()
    COMMANDS[name].main(prog_name=f"python -m jobs.{name}")


def _shield_beam_workers() -> None:
    """Beam's multi-process workers start as ``python -m ...`` in the current directory, which
    would put a user's ``pipeline.py`` there ahead of pairscore's when they load the pipeline's
    functions. PYTHONSAFEPATH (Python 3.11+) keeps the current directory off their path; a
    checkout that is not installed goes on their PYTHONPATH instead (an installed one is found
    in site-packages as usual)."""
    import site

    os.environ["PYTHONSAFEPATH"] = "1"
    installed = {os.path.abspath(p) for p in site.getsitepackages() + [site.getusersitepackages()]}
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if PACKAGE_ROOT not in installed and PACKAGE_ROOT not in (os.path.abspath(p) for p in paths):
        os.environ["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT] + paths)


@pairscore.command("encode-texts", cls=JobCommand, context_settings=BEAM_JOB_CONTEXT, epilog=BEAM_EPILOG)
@click.option("--input", "inputs", multiple=True, required=True, metavar="PATH",
              help="Input table: a path, glob or Beam filesystem path (gs://, s3://); repeat for more. "
                   "Format from the extension: .parquet, .jsonl, .csv, .tsv, the last three optionally .zst.")
@click.option("--format", type=click.Choice(FORMATS), default=None,
              help="Read every input as this format, whatever its extension.")
@click.option("--text-col", default="text", show_default=True, help="Column holding the text.")
@click.option("--id-col", default=None,
              help="Column holding the text's id. Without it, a text's id is a stable hash of its content.")
@click.option("--side", type=click.Choice(["left", "right"]), default="left", show_default=True,
              help="Which side of the pairs these texts are: left keeps N tokens, right keeps M.")
@click.option("--model", "model_dir", default=None, metavar="DIR",
              help="Student checkpoint directory. Default: the zero-training baseline on the packaged "
                   "all-MiniLM-L6-v2.")
@output_option("Store directory to create: part-*.parquet, _MANIFEST.json, _dead_letter/, _SUMMARY.json, _SUCCESS.",
               metavar="STORE_DIR")
@overwrite_option
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True,
              help="Texts per encoder batch (texts are sorted by length first, so padding stays small).")
@click.option("--dtype", type=click.Choice(DTYPES), default="float16", show_default=True,
              help="Embedding storage: float16, or int8 with a per-row scale (half the bytes).")
@device_option("Where the encoder runs; auto = CUDA when present (with mixed precision).")
@run_options
@click.pass_context
def encode_texts(ctx: click.Context, quiet: bool, verbose: bool, **flags) -> None:
    """Encode every unique text once and write an embedding store (stage one)."""
    def go() -> str:
        from jobs import encode_texts as module
        job = module.EncodeTextsJob(inputs=tuple(flags.pop("inputs")), **flags)
        summary = module.run(job, beam_args_for_run(ctx.args, verbose), ctx.meta[ARGV_KEY])
        return summary.table()
    run_job(go, name="encode_texts", quiet=quiet, verbose=verbose, beam_args=ctx.args)


@pairscore.command("score-pairs", cls=JobCommand, context_settings=BEAM_JOB_CONTEXT, epilog=BEAM_EPILOG)
@click.option("--pairs", multiple=True, required=True, metavar="PATH",
              help="Pair table: path, glob or Beam filesystem path; repeat for more. Format from the extension "
                   "(.parquet, .jsonl, .csv, .tsv, the last three optionally .zst).")
@click.option("--format", type=click.Choice(FORMATS), default=None, help="Read the pair tables as this format.")
@click.option("--left-col", default="left", show_default=True, help="Left text column (pairs of texts).")
@click.option("--right-col", default="right", show_default=True, help="Right text column (pairs of texts).")
@click.option("--left-id-col", default=None, help="Left id column (pairs of ids; needs --left-texts).")
@click.option("--right-id-col", default=None, help="Right id column (pairs of ids; needs --right-texts).")
@click.option("--left-texts", multiple=True, metavar="PATH", help="Id/text table of the left texts.")
@click.option("--right-texts", multiple=True, metavar="PATH", help="Id/text table of the right texts.")
@click.option("--texts-id-col", default="id", show_default=True, help="Id column of the text tables.")
@click.option("--texts-text-col", default="text", show_default=True, help="Text column of the text tables.")
@click.option("--keep-cols", callback=split_list, default=None, metavar="A,B",
              help="Pair columns copied to the output as they are.")
@click.option("--model", "model_dir", default=None, metavar="DIR",
              help="Student checkpoint. Default: zero-training baseline (cosine of the packaged MiniLM's "
                   "mean-pooled sentence embeddings).")
@click.option("--store", default=None, metavar="DIR",
              help="Stores of an earlier run (DIR/left, DIR/right, e.g. last night's OUTPUT/store): texts "
                   "already there are reused, not re-encoded. Refused if written by another model.")
@output_option("Directory to create: scores/ (the scores table), store/{left,right}/ (tomorrow's --store), "
               "_dead_letter/, _SUMMARY.json, _SUCCESS.")
@overwrite_option
@click.option("--join", type=click.Choice(JOINS), default="auto", show_default=True,
              help="broadcast: stores held in each worker's memory; shuffle: CoGroupByKey, scales past memory; "
                   "auto: broadcast when the stores fit --broadcast-limit-mb.")
@click.option("--broadcast-limit-mb", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Memory a worker may spend on both stores for the broadcast join.")
@click.option("--dedupe-pairs", is_flag=True,
              help="Score each (left id, right id) once and count repeats as duplicates. Default: every "
                   "row is scored and written, so outputs line up one-to-one with inputs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8192, show_default=True,
              help="Pairs per head batch (and per chunk of pairs).")
@click.option("--encode-batch-size", type=click.IntRange(min=1), default=128, show_default=True,
              help="Texts per encoder batch for texts not yet in a store.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float16", show_default=True,
              help="Storage of newly encoded embeddings (an existing --store keeps its own).")
@device_option("Where models run; auto = CUDA when present (mixed precision on GPU).")
@click.option("--accelerator", default=None, metavar="HINT",
              help="Beam resource hint for the scoring step, e.g. "
                   "'type:nvidia-l4;count:1;install-nvidia-driver' (Dataflow); the join stays on CPU workers.")
@run_options
@click.pass_context
def score_pairs(ctx: click.Context, quiet: bool, verbose: bool, **flags) -> None:
    """Score pairs with a student (stage two), running stage one for texts not yet stored."""
    def go() -> str:
        from jobs import score_pairs as module
        for name in ("pairs", "left_texts", "right_texts"):
            flags[name] = tuple(flags[name])
        summary = module.run(module.ScorePairsJob(**flags), beam_args_for_run(ctx.args, verbose), ctx.meta[ARGV_KEY])
        return summary.table()
    run_job(go, name="score_pairs", quiet=quiet, verbose=verbose, beam_args=ctx.args)


@pairscore.command("label-pairs", cls=JobCommand, context_settings=BEAM_JOB_CONTEXT, epilog=BEAM_EPILOG)
@click.option("--pairs", multiple=True, required=True, metavar="PATH",
              help="Pairs to label: a path, glob or Beam filesystem path (gs://, s3://); repeat for more. Format "
                   "from the extension: .parquet, .jsonl, .csv, .tsv, the last three optionally .zst.")
@click.option("--format", type=click.Choice(FORMATS), default=None,
              help="Read every input as this format, whatever its extension.")
@click.option("--left-col", default="left", show_default=True, help="Column holding the left text.")
@click.option("--right-col", default="right", show_default=True, help="Column holding the right text.")
@click.option("--left-id-col", default=None,
              help="Column holding the left text's id (with --right-id-col). Without them an id is a stable hash "
                   "of the text.")
@click.option("--right-id-col", default=None, help="Column holding the right text's id.")
@click.option("--keep-cols", callback=split_list, default=None, metavar="A,B",
              help="Input columns to copy to the output (Parquet types kept; text formats as strings).")
@click.option("--teacher", required=True, metavar="DIR",
              help="Teacher checkpoint: a train_teacher output, or any Hugging Face sequence-classification "
                   "cross-encoder (path or cached hub id) with its trained head.")
@click.option("--temperature", type=float, default=1.0, show_default=True,
              help="T of the soft labels: sigmoid(logit / T), or softmax(logits / T) for k classes.")
@click.option("--previous", default=None, metavar="DIR",
              help="A previous label_pairs output from the same teacher: pairs it holds (same left and right "
                   "text) are not labeled again, and all its rows are copied into --output, which is then the "
                   "complete distillation set.")
@output_option("Directory to create: part-*.parquet, _dead_letter/, _MANIFEST.json, _SUMMARY.json, _SUCCESS.")
@overwrite_option
@click.option("--batch-size", type=int, default=64, show_default=True,
              help="Pairs per teacher batch (pairs are sorted by length first, so padding stays small).")
@click.option("--max-length", type=int, default=None,
              help="Tokens per pair; default: the teacher's own (teacher.json, else the tokenizer's, at most 512). "
                   "Changing it changes the teacher fingerprint.")
@device_option("Where the teacher runs; auto = CUDA when present (with mixed precision).")
@run_options
@click.pass_context
def label_pairs(ctx: click.Context, quiet: bool, verbose: bool, **flags) -> None:
    """Label pairs with a teacher cross-encoder and write the distillation set."""
    def go() -> str:
        from jobs import label_pairs as module
        job = module.LabelPairsJob(pairs=tuple(flags.pop("pairs")), keep_cols=flags.pop("keep_cols"), **flags)
        summary = module.run(job, beam_args_for_run(ctx.args, verbose), ctx.meta[ARGV_KEY])
        return summary.table()
    run_job(go, name="label_pairs", quiet=quiet, verbose=verbose, beam_args=ctx.args)


@pairscore.command("build-candidates", cls=JobCommand, context_settings=PLAIN_JOB_CONTEXT)
@click.option("--left-texts", multiple=True, required=True, metavar="PATH",
              help="Pool of left texts: a path, glob or Beam filesystem path; repeat for more. Format from the "
                   "extension: .parquet, .jsonl, .csv, .tsv, the last three optionally .zst.")
@click.option("--right-texts", multiple=True, required=True, metavar="PATH",
              help="Pool of right texts (may be the same files as --left-texts).")
@click.option("--format", type=click.Choice(FORMATS), default=None,
              help="Read every input as this format, whatever its extension.")
@click.option("--texts-text-col", default="text", show_default=True, help="Column holding the text.")
@click.option("--texts-id-col", default=None,
              help="Column holding the text's id. Without it, a text's id is a stable hash of its content.")
@click.option("--top-k", type=int, required=True, metavar="K",
              help="Nearest right texts per left text (exact cosine search), the text itself excluded.")
@click.option("--random-per-left", type=int, default=1, show_default=True, metavar="R",
              help="Random right texts per left text, as easy negatives (never a neighbour or the text itself).")
@click.option("--encoder", default=DEFAULT_ENCODER, show_default=True, metavar="MODEL",
              help="Sentence encoder (Hugging Face directory or hub id), mean pooled and normalised; the default "
                   "is the packaged all-MiniLM-L6-v2, no download.")
@click.option("--max-length", type=int, default=128, show_default=True, help="Tokens per text for the encoder.")
@click.option("--batch-size", type=int, default=128, show_default=True,
              help="Texts per encoder batch (sorted by length first).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the random pairs.")
@device_option("Where encoding and search run; auto = CUDA when present.")
@output_option("Directory to create: part-00000-of-00001.parquet, _dead_letter/, _SUMMARY.json, _SUCCESS.")
@overwrite_option
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show encoding progress bars.")
@run_options
@click.pass_context
def build_candidates(ctx: click.Context, quiet: bool, verbose: bool, progress: bool, **flags) -> None:
    """Mine candidate pairs (top-k neighbours + random pairs) for teacher labeling."""
    def go() -> str:
        from jobs import build_candidates as module
        job = module.BuildCandidatesJob(left_texts=tuple(flags.pop("left_texts")),
                                        right_texts=tuple(flags.pop("right_texts")), progress=progress and not quiet,
                                        **flags)
        summary = module.run(job, ctx.meta[ARGV_KEY])
        return summary.table()
    run_job(go, name="build_candidates", quiet=quiet, verbose=verbose)


@pairscore.command("train-teacher", cls=JobCommand, context_settings=PLAIN_JOB_CONTEXT)
@click.option("--train", multiple=True, required=True, metavar="PATH",
              help="Labeled training pairs: a path, glob or Beam filesystem path; repeat for more. Format from "
                   "the extension: .parquet, .jsonl, .csv, .tsv, the last three optionally .zst.")
@click.option("--dev", multiple=True, required=True, metavar="PATH",
              help="Labeled dev pairs, evaluated after every epoch; the best epoch is kept.")
@click.option("--format", type=click.Choice(FORMATS), default=None,
              help="Read every input as this format, whatever its extension.")
@click.option("--left-col", default="left", show_default=True, help="Column holding the left text.")
@click.option("--right-col", default="right", show_default=True, help="Column holding the right text.")
@click.option("--label-col", default="label", show_default=True, help="Column holding the label.")
@click.option("--task", type=click.Choice(TASKS), default="binary", show_default=True,
              help="binary: labels 0/1, BCE on the logit. graded: numeric labels in --label-range, mapped to "
                   "[0, 1] (BCE or MSE). classes: labels 0..K-1, softmax cross-entropy.")
@click.option("--label-range", default=None, metavar="LOW,HIGH",
              help="graded only: the label range mapped to [0, 1], e.g. 0,5 for STS-B. Labels outside are skipped.")
@click.option("--num-classes", type=int, default=None, metavar="K", help="classes only: the number of classes.")
@click.option("--loss", type=click.Choice(TEACHER_LOSSES), default=None,
              help="bce (binary, graded; the default), mse on the sigmoid (graded), ce (classes; the default).")
@click.option("--base", default=DEFAULT_ENCODER, show_default=True, metavar="MODEL",
              help="Pretrained encoder to fine-tune: a local Hugging Face directory or hub id (offline: from the "
                   "local cache). The default is the packaged all-MiniLM-L6-v2, no download.")
@click.option("--swap", is_flag=True,
              help="Also train on every pair with left and right exchanged (symmetric tasks, e.g. duplicate "
                   "questions): doubles the training examples.")
@click.option("--epochs", type=int, default=2, show_default=True, help="Passes over the training pairs.")
@click.option("--lr", type=float, default=3e-5, show_default=True, help="Peak AdamW learning rate.")
@click.option("--batch-size", type=int, default=32, show_default=True,
              help="Pairs per optimizer step (batches are grouped by length, so padding stays small).")
@click.option("--max-length", type=int, default=128, show_default=True,
              help="Tokens per pair, both texts and special tokens included; longer pairs lose tokens from the "
                   "longer text. Stored in the checkpoint; label_pairs uses it.")
@click.option("--warmup", type=float, default=0.1, show_default=True,
              help="Fraction of all steps over which the learning rate rises linearly from 0; it then decays "
                   "linearly to 0.")
@click.option("--weight-decay", type=float, default=0.01, show_default=True, help="AdamW weight decay.")
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True, help="Gradient clipping norm.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the head initialisation, dropout and batch order.")
@device_option("Where to train; auto = CUDA when present (with mixed precision).")
@click.option("--limit", type=int, default=None, metavar="N",
              help="Read at most N rows from each of --train and --dev (quick runs).")
@output_option("Checkpoint directory to create: config.json, model.safetensors, tokenizer, teacher.json, "
               "_dead_letter/, _SUMMARY.json, _SUCCESS (the checkpoint is committed when training ends).")
@overwrite_option
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar with the loss and pairs/s.")
@run_options
@click.pass_context
def train_teacher(ctx: click.Context, quiet: bool, verbose: bool, progress: bool, **flags) -> None:
    """Fine-tune a cross-encoder teacher on labeled pairs and save it for label_pairs."""
    def go() -> str:
        label_range = parse_label_range(flags.pop("label_range"))
        from jobs import train_teacher as module
        job = module.TrainTeacherJob(train=tuple(flags.pop("train")), dev=tuple(flags.pop("dev")),
                                     label_range=label_range, progress=progress and not quiet, **flags)
        summary = module.run(job, ctx.meta[ARGV_KEY])
        lines = [summary.table()]
        for record in summary.metrics["epochs"]:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in record["dev"].items())
            lines.append(f"  epoch {record['epoch']}: train loss {record['train_loss']:.4f}, dev {shown}")
        return "\n".join(lines)
    run_job(go, name="train_teacher", quiet=quiet, verbose=verbose)


@pairscore.command("train-student", cls=JobCommand, context_settings=PLAIN_JOB_CONTEXT)
@click.option("--distill", multiple=True, required=True, metavar="PATH",
              help="The distillation set: a label_pairs output directory (or its files, a glob, a Beam filesystem "
                   "path); repeat for more. Columns left, right, soft_label and logit (soft_labels and logits for "
                   "k-class teachers).")
@click.option("--dev", multiple=True, required=True, metavar="PATH",
              help="Labeled dev pairs (--label-col), evaluated after every epoch; the best epoch is kept.")
@click.option("--format", type=click.Choice(FORMATS), default=None,
              help="Read every input as this format, whatever its extension.")
@click.option("--left-col", default="left", show_default=True, help="Column holding the left text.")
@click.option("--right-col", default="right", show_default=True, help="Column holding the right text.")
@click.option("--label-col", default="label", show_default=True, help="Column holding the dev label.")
@click.option("--task", type=click.Choice(TASKS), default=None,
              help="How dev (and human) labels are read. Default: the teacher's task from the distillation set's "
                   "_MANIFEST.json; without one, binary (classes for k-class soft labels).")
@click.option("--label-range", default=None, metavar="LOW,HIGH",
              help="graded only: the label range mapped to [0, 1], e.g. 0,5 for STS-B.")
@click.option("--human-label-col", default=None, metavar="COL",
              help="A column of the distillation set with human labels (e.g. label_pairs --keep-cols label). Pairs "
                   "with one learn from both; pairs without (mined pairs) from the teacher alone.")
@click.option("--human-label-weight", type=float, default=0.5, show_default=True,
              help="Weight w of the human label where a pair has one: loss = (1 - w) * teacher loss + w * human loss.")
@click.option("--head", type=click.Choice(STUDENT_HEADS), required=True,
              help="The head, from heads/: dipair (DiPair-TSF), dipair-ffnn, li (late interaction), de-ffnn, de-cos.")
@click.option("--encoder", default=DEFAULT_ENCODER, show_default=True, metavar="MODEL",
              help="Pretrained encoder: a local Hugging Face directory or hub id (offline: from the local cache). "
                   "The default is the packaged all-MiniLM-L6-v2, no download.")
@click.option("--layers", type=int, default=None, metavar="K",
              help="Encoder layers kept (DiPair's K, 1-4 there). Default: all.")
@click.option("--n", "n", type=int, default=4, show_default=True, metavar="N", help="Left token embeddings kept.")
@click.option("--m", "m", type=int, default=12, show_default=True, metavar="M", help="Right token embeddings kept.")
@click.option("--dim", type=int, default=128, show_default=True, metavar="D", help="Projected dimension.")
@click.option("--head-layers", type=int, default=None, metavar="L",
              help="Head depth: transformer layers of dipair (default 2), or hidden layers of 128 units of the FFNN "
                   "heads dipair-ffnn, de-ffnn, li (default 2). de-cos has none.")
@click.option("--head-options", default=None, metavar="JSON",
              help="Other head options as a JSON object, e.g. '{\"ffn\": 512, \"dropout\": 0.1}' (see the head's "
                   "*Config in heads/).")
@click.option("--cosine-skip/--no-cosine-skip", default=True, show_default=True,
              help="Add a learned scale * cos(pooled sentence embeddings) + bias to the head's logits, fitted to "
                   "the teacher before training, so the student starts from the zero-shot cosine and the head "
                   "learns the rest (heads/cosine_skip.py). The store then also keeps each text's pooled "
                   "embedding. --no-cosine-skip: the plain DiPair head.")
@click.option("--separate-encoders", is_flag=True,
              help="One encoder per side (default: one shared encoder; the projections are per side either way).")
@click.option("--left-max-length", type=int, default=64, show_default=True,
              help="Left tokenizer max length, special tokens included.")
@click.option("--right-max-length", type=int, default=128, show_default=True,
              help="Right tokenizer max length, special tokens included.")
@click.option("--token-selection", type=click.Choice(["first", "last"]), default="first", show_default=True,
              help="Keep the first N / M output tokens ([CLS] first) or the last ones.")
@click.option("--stages", type=click.IntRange(1, 2), default=2, show_default=True,
              help="2: DiPair's schedule, stage 1 with the encoder frozen (early stop on dev), then stage 2 with "
                   "everything. 1: everything from the first step (the ablation).")
@click.option("--loss", type=click.Choice(STUDENT_LOSSES), default="ce", show_default=True,
              help="ce: cross-entropy on the soft labels (DiPair eq. 1). mse: squared error on the teacher's logits.")
@click.option("--swap", is_flag=True,
              help="Also train on every pair with left and right exchanged (symmetric tasks): doubles the examples.")
@click.option("--stage1-epochs", type=int, default=10, show_default=True,
              help="Most epochs of stage 1 (it stops early after --patience epochs without dev improvement).")
@click.option("--patience", type=int, default=2, show_default=True,
              help="Stage 1 stops after this many epochs without a better dev score.")
@click.option("--stage2-epochs", type=int, default=1, show_default=True,
              help="Epochs of stage 2 (and of --stages 1).")
@click.option("--stage1-max-pairs", type=int, default=None, metavar="P",
              help="At most P pairs per stage-1 epoch (a new random sample each epoch), for distillation sets "
                   "larger than an epoch needs to be: dev is then evaluated, and early stopping decided, every P "
                   "pairs.")
@click.option("--stage2-max-pairs", type=int, default=None, metavar="P",
              help="At most P pairs per stage-2 epoch (a new random sample each epoch): stage 2 runs the encoder "
                   "and costs far more per pair than stage 1.")
@click.option("--lr", type=float, default=5e-4, show_default=True,
              help="Peak learning rate of projection + head in stage 1 (and in --stages 1).")
@click.option("--stage2-lr", type=float, default=1e-4, show_default=True,
              help="Peak learning rate of projection + head in stage 2.")
@click.option("--encoder-lr", type=float, default=2e-5, show_default=True,
              help="Peak learning rate of the encoder when it trains (stage 2, --stages 1).")
@click.option("--batch-size", type=int, default=32, show_default=True,
              help="Pairs per step when the encoder trains (stage 2, --stages 1).")
@click.option("--stage1-batch-size", type=int, default=128, show_default=True, help="Pairs per step in stage 1.")
@click.option("--encode-batch-size", type=int, default=128, show_default=True,
              help="Texts per batch when encoding without gradients (stage-1 cache, dev).")
@click.option("--warmup", type=float, default=0.1, show_default=True,
              help="Fraction of each stage's steps over which its learning rates rise linearly from 0; they then "
                   "decay linearly to 0 at the stage's last epoch.")
@click.option("--weight-decay", type=float, default=0.01, show_default=True, help="AdamW weight decay.")
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True, help="Gradient clipping norm.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the projection and head initialisation, dropout and batch order.")
@device_option("Where to train; auto = CUDA when present (with mixed precision).")
@click.option("--cache-dir", default=None, metavar="DIR",
              help="Keep stage 1's frozen encoder states here (one safetensors file per encoder, length and text "
                   "set) and reuse them: runs that differ only in the head encode the texts once.")
@click.option("--train-layers", type=int, default=None, metavar="K",
              help="Stage 2 trains only the top K encoder layers (with projection and head), on the frozen lower "
                   "layers' outputs computed once per unique text (float16, in memory; kept in --cache-dir when "
                   "given). Default: the whole encoder trains, each batch encoded in full.")
@click.option("--dev-group-col", default=None, metavar="COL",
              help="Dev's query column (e.g. qid): every epoch also reports MRR@10, MAP and nDCG@10 over dev's "
                   "queries.")
@click.option("--select-metric", type=click.Choice(["auc", "spearman", "accuracy", "mrr@10", "map", "ndcg@10"]),
              default=None, help="The dev metric that picks the best epoch (default: auc for binary, spearman for "
                                 "graded, accuracy for classes); the ranking ones need --dev-group-col.")
@click.option("--limit", type=int, default=None, metavar="N",
              help="Read at most N rows from each of --distill and --dev (quick runs).")
@output_option("Student checkpoint directory to create: config.json, student.safetensors, encoder/, "
               "_dead_letter/, _SUMMARY.json, _SUCCESS (the checkpoint is committed when training ends).")
@overwrite_option
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar with the loss and pairs/s.")
@run_options
@click.pass_context
def train_student(ctx: click.Context, quiet: bool, verbose: bool, progress: bool, **flags) -> None:
    """Distil a teacher into a DiPair student (two-stage training) and save the checkpoint."""
    def go() -> str:
        label_range = parse_label_range(flags.pop("label_range"))
        head_options = parse_head_options(flags.pop("head_options"))
        from jobs import train_student as module
        job = module.TrainStudentJob(distill=tuple(flags.pop("distill")), dev=tuple(flags.pop("dev")),
                                     label_range=label_range, head_options=head_options,
                                     progress=progress and not quiet, **flags)
        summary = module.run(job, ctx.meta[ARGV_KEY])
        lines = [summary.table()]
        for record in summary.metrics["epochs"]:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in record["dev"].items())
            lines.append(f"  {record['stage']} epoch {record['epoch']}: train loss {record['train_loss']:.4f}, "
                         f"dev {shown}")
        lines.append(f"  train loss floor (entropy of the targets): {summary.metrics['train_loss_floor']:.4f}")
        return "\n".join(lines)
    run_job(go, name="train_student", quiet=quiet, verbose=verbose)


@pairscore.command("evaluate", cls=JobCommand, context_settings=PLAIN_JOB_CONTEXT)
@click.option("--pairs", multiple=True, required=True, metavar="PATH",
              help="Labeled pairs to evaluate on: a path, glob or Beam filesystem path; repeat for more.")
@click.option("--model", "models", multiple=True, required=True, metavar="[NAME=]DIR|baseline",
              help="A model to evaluate; repeat for more: a teacher checkpoint (train_teacher output or any Hugging "
                   "Face sequence-classification cross-encoder), a student checkpoint (train_student output), or "
                   "`baseline` for the zero-training cosine of the packaged MiniLM. NAME=DIR names it in the report "
                   "(default: the directory's name).")
@click.option("--dev", multiple=True, metavar="PATH",
              help="Labeled pairs on which the accuracy/F1 threshold of each model is chosen. Without it the threshold "
                   "is chosen on --pairs themselves (optimistic); the report says which.")
@click.option("--format", type=click.Choice(FORMATS), default=None,
              help="Read every input as this format, whatever its extension.")
@click.option("--left-col", default="left", show_default=True, help="Column holding the left text.")
@click.option("--right-col", default="right", show_default=True, help="Column holding the right text.")
@click.option("--label-col", default="label", show_default=True, help="Column holding the label.")
@click.option("--task", type=click.Choice(["binary", "graded"]), default="binary", show_default=True,
              help="binary: labels 0/1 (AUC, accuracy, F1). graded: numbers in --label-range (Pearson, Spearman).")
@click.option("--label-range", default=None, metavar="LOW,HIGH", help="graded only: the range of the labels.")
@click.option("--group-col", default=None, metavar="COL",
              help="Column naming each pair's query (e.g. qid): also rank each query's candidates and report MRR@10, "
                   "MAP and nDCG@10 over the queries with at least one positive and one negative.")
@click.option("--compare", multiple=True, metavar="A,B",
              help="Report metric(A) - metric(B) for two --model names with a 95%% paired-bootstrap interval (over "
                   "queries for ranking metrics, over pairs otherwise); repeat for more.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Pairs per teacher batch.")
@click.option("--encode-batch-size", type=int, default=128, show_default=True, help="Texts per student encoder batch.")
@click.option("--head-batch-size", type=int, default=8192, show_default=True, help="Pairs per student head batch.")
@device_option("Where models run; auto = CUDA when present (mixed precision). Speeds are of this device.")
@click.option("--limit", type=int, default=None, metavar="N",
              help="Read at most N rows from each of --pairs and --dev (quick runs).")
@output_option("Directory to create: report.md, *.png, metrics.json, scores.parquet, _dead_letter/, _SUMMARY.json, "
               "_SUCCESS.")
@overwrite_option
@run_options
@click.pass_context
def evaluate(ctx: click.Context, quiet: bool, verbose: bool, **flags) -> None:
    """Evaluate teachers, students and the baseline on labeled pairs: quality, agreement, speed, plots."""
    def go() -> str:
        import json

        label_range = parse_label_range(flags.pop("label_range"))
        from jobs import evaluate as module
        from jobs.report import ranking_table, results_table
        job = module.EvaluateJob(pairs=tuple(flags.pop("pairs")), models=tuple(flags.pop("models")),
                                 dev=tuple(flags.pop("dev")), compare=tuple(flags.pop("compare")),
                                 label_range=label_range, **flags)
        summary = module.run(job, ctx.meta[ARGV_KEY])
        with open(os.path.join(job.output, module.METRICS_FILE), encoding="utf-8") as handle:
            metrics = json.load(handle)
        return summary.table() + "\n" + results_table(metrics) + "\n" + ranking_table(metrics)
    run_job(go, name="evaluate", quiet=quiet, verbose=verbose)


# python -m jobs.<name> -> its command.
COMMANDS = {name: pairscore.commands[name.replace("_", "-")] for name in
            ("encode_texts", "score_pairs", "label_pairs", "build_candidates", "train_teacher", "train_student",
             "evaluate")}


if __name__ == "__main__":  # python -m jobs.cli <command> ...: the console script without installing
    console_main()
