"""The jobs: one module per job, ``python -m jobs.<name>`` and ``pairscore <job>`` (jobs/cli.py).

Each module is a recipe that reads top to bottom: its flags (``main``, a click command), the job
record they build, and ``run``: flags -> configs -> library calls (``pipeline/beam``,
``pipeline``, ``encoders``) -> summary. A job module imports only click, the standard library
and ``jobs.common`` at import, so ``--help`` and a bad flag answer at once; its library imports
run inside its functions. No job imports another job.

Light on purpose (standard library only): every entry point imports this package first.
"""
import logging
import os
import time


def _process_start_time() -> float:
    """Wall-clock time this process started, interpreter start-up included: from /proc on Linux,
    else now (this package is the first of pairscore's modules any entry point imports)."""
    now = time.time()
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            # Field 22, starttime in clock ticks after boot; the command name (field 2) may hold spaces.
            start_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return now
    return now - age if age >= 0 else now


PROCESS_STARTED = _process_start_time()


class _DropImportNoise(logging.Filter):
    """Beam warns at import that optional Google Cloud clients are missing; irrelevant here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
for _handler in logging.getLogger().handlers:
    _handler.addFilter(_DropImportNoise())
