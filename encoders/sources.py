"""Where pretrained encoders come from, without touching the network unless asked to, and
without ever running Python code that a model directory ships.

Every model, config and tokenizer in pairscore is loaded with ``trust_remote_code=False``, and
:func:`refuse_checkpoint_code` refuses, before anything is loaded, a local directory that
carries code transformers could run (an ``auto_map`` entry, or any ``*.py`` file). Without that,
transformers asks on the terminal whether to run such code, and a ``y`` on stdin runs it.
"""
from __future__ import annotations

import transformers
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from encoders.config import DEFAULT_ENCODER  # noqa: F401  (re-exported: encoders.sources.DEFAULT_ENCODER)
from encoders.errors import ModelError
# Where an encoder's files are and the refusal of shipped code are standard library only (the
# launcher and the head's load use them without transformers): re-exported from here.
from encoders.locations import AUTO_MAP_FILES, refuse_checkpoint_code, resolve_encoder  # noqa: F401

# Model loading prints a table of unused weights when layers are dropped (K < all);
# that is expected here, so keep the library quiet.
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


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
