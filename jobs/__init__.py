"""Command-line entry points: ``python -m jobs.<name>``. Each builds one frozen config
object from its flags and hands each transform only its own part."""
import logging


class _DropImportNoise(logging.Filter):
    """Beam warns at import that optional Google Cloud clients are missing; irrelevant here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
for _handler in logging.getLogger().handlers:
    _handler.addFilter(_DropImportNoise())
