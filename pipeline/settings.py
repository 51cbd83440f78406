"""The settings every job shares, declared once (``encoders/settings.py`` says how): the input
tables (data), the output, and the run (device, progress, quiet/verbose) and engine (stall
timeout, torch threads).

A job's settings class inherits the concerns it has and redeclares a field only to say it in
its own words (``--output``'s help names what it writes). Standard library only: ``--help`` and
the pre-flight read these before Beam or torch is imported.
"""
from __future__ import annotations

from dataclasses import dataclass

from encoders.choices import DEVICES
from encoders.errors import FlagError
from encoders.settings import FRACTION, POSITIVE_INT, Range, setting
from pipeline.choices import FORMATS

LITERAL_OUTPUT = " A literal path (never a pattern), without *, ? or [."
OVERWRITE_HELP = ("Replace an earlier pairscore output in --output (one whose _SUMMARY.json lists its files) when this "
                  "run commits; until then it stays whole, and a failed run leaves it as it was. Refused for a "
                  "directory holding anything pairscore did not write.")
DEAD_LETTER_HELP = ("Refuse to commit (exit 3, nothing written, the previous output stays) when more than this "
                    "fraction of the rows read is dead-lettered; a run whose every row is dead-lettered always fails.")


# --------------------------------------------------------------------------- flag values

def parse_label_range(text: str | tuple[float, float] | None) -> tuple[float, float] | None:
    """``"LOW,HIGH"`` -> (low, high); ValueError naming the value otherwise."""
    if text is None or isinstance(text, tuple):
        return text
    try:
        low, high = (float(p) for p in text.split(","))
    except ValueError:
        raise FlagError(f"--label-range {text!r} is not allowed: give two numbers LOW,HIGH, e.g. 0,5") from None
    return low, high


# --------------------------------------------------------------------------- the concerns

@dataclass(frozen=True, kw_only=True)
class PairData:
    """Labeled pair tables: their format and columns, and how much of them to read."""
    format: str | None = setting(None, "Read every input as this format, whatever its extension.", choices=FORMATS)
    left_col: str = setting("left", "Column holding the left text.")
    right_col: str = setting("right", "Column holding the right text.")
    label_col: str = setting("label", "Column holding the label.")


@dataclass(frozen=True, kw_only=True)
class Output:
    """Where a job commits (pipeline/output/): a literal directory, replaced only with
    --overwrite, refused when too many rows were dead-lettered."""
    output: str = setting(help="Directory to create." + LITERAL_OUTPUT, metavar="DIR", required=True)
    overwrite: bool = setting(False, OVERWRITE_HELP, switch=True)
    max_dead_letter_fraction: float = setting(0.1, DEAD_LETTER_HELP, range=FRACTION, metavar="F")


@dataclass(frozen=True, kw_only=True)
class Run:
    """Where models run and how much a run says while it runs."""
    device: str = setting("auto", "Where models run; auto = CUDA when present (mixed precision on GPU).",
                          choices=DEVICES)
    quiet: bool = setting(False, "No progress output (errors and the final summary still print).", switch=True)
    verbose: bool = setting(False, "Show the log messages of Beam and its workers (hidden by default).", switch=True)


@dataclass(frozen=True, kw_only=True)
class TrainingRun(Run):
    """A training or mining run in this process: a progress bar besides the run's line."""
    progress: bool = setting(True, "Show a progress bar with the loss and pairs/s.", negatable=True)

    def bars(self):
        """The progress callback the trainer draws its bars with (``pipeline.progress.tqdm_bars``),
        None for no bars (--no-progress, --quiet)."""
        from pipeline.progress import tqdm_bars

        return tqdm_bars() if self.progress and not self.quiet else None


@dataclass(frozen=True, kw_only=True)
class Engine:
    """How an engine's workers run: their torch threads and the stall watchdog."""
    stall_timeout: float = setting(
        300.0, "End the run (exit 3, one line saying what is missing) when Beam has asked for workers, none has "
               "connected and nothing has progressed for this long; 0: wait forever. Watches the runners whose "
               "workers connect to this process (multi-process, PortableRunner with --job_endpoint=embed).",
        range=Range(float, 0), metavar="SECONDS")
    torch_threads: int | None = setting(
        None, "Torch threads per worker process. Default: the slot's CPUs where the engine says (Spark's task CPUs; "
              "1 per Dataflow SDK process), else this process's share of the CPUs it may run on (taskset/cpuset) "
              "among the local worker processes.", range=POSITIVE_INT, metavar="N")
