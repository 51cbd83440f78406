"""Train only the upper encoder layers, on cached outputs of the frozen lower ones.

A stage two that fine-tunes the whole encoder pays a full forward and backward pass per text per
step. Freezing the lower ``L - k`` layers changes nothing for them from step to step, so their
output for every token of every unique text is computed once (``LowerStates``) and each step runs
only the upper ``k`` layers, the projection and the head (``upper_forward``): about k / L of the
forward cost and no backward through the lower layers.

What it costs: one float16 vector of H values per token of every unique text, 2 H bytes per token
(MiniLM: 768 bytes; 20k WikiQA sentences of ~35 tokens: ~0.5 GB), in memory, optionally saved once
as safetensors so runs that differ only in the head reuse it. ``LowerStates.bytes`` reports it.

Works with BERT-style encoders (``embeddings`` + ``encoder.layer``, such as MiniLM). Shapes: B texts
in a batch, T tokens (padded to the batch's longest), H hidden size, U unique texts, S the total
tokens of all U texts.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers.masking_utils import create_bidirectional_mask

from encoders.fingerprint import tokenizer_identity
from encoders.dual_encoder import EncodedSide, SideEncoder
from encoders.errors import FlagError, ModelError

CACHE_FORMAT = "pairscore-lower-states-v1"


def encoder_layers(side: SideEncoder) -> torch.nn.ModuleList:
    """The side's transformer layers (BERT-style models only), ValueError otherwise."""
    layers = getattr(getattr(side.transformer, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList) or not hasattr(side.transformer, "embeddings"):
        raise ModelError(f"{type(side.transformer).__name__} is not a BERT-style encoder (embeddings + encoder.layer): "
                         "training only its upper layers on cached states is not supported for it")
    return layers


def run_layers(side: SideEncoder, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int,
               stop: int | None = None, inputs: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Hidden states (B, T, H) entering layer ``start`` -> the states leaving layer ``stop - 1``
    (all remaining layers when ``stop`` is None), with the same attention mask the full model builds.
    ``inputs``: when given, the states entering each layer run are appended to it (for VIRT)."""
    layers = encoder_layers(side)
    mask = create_bidirectional_mask(config=side.transformer.config, inputs_embeds=hidden,
                                     attention_mask=attention_mask)
    for layer in layers[start:stop]:
        if inputs is not None:
            inputs.append(hidden)
        hidden = layer(hidden, mask)
    return hidden


def upper_parameters(side: SideEncoder, train_layers: int) -> list[tuple[str, torch.nn.Parameter]]:
    """The named parameters of the top ``train_layers`` layers of the side's transformer."""
    layers = encoder_layers(side)
    if not 1 <= train_layers <= len(layers):
        raise FlagError(f"--train-layers {train_layers} is not allowed: the encoder has {len(layers)} layers, "
                        f"choose 1..{len(layers)}")
    first = len(layers) - train_layers
    return [(f"encoder.layer.{first + i}.{name}", p) for i, layer in enumerate(layers[first:])
            for name, p in layer.named_parameters()]


def upper_forward(side: SideEncoder, states: torch.Tensor, attention_mask: torch.Tensor, train_layers: int,
                  inputs: list[torch.Tensor] | None = None) -> EncodedSide:
    """Cached lower states (B, T, H) and their mask (B, T) -> the side's EncodedSide, running the
    top ``train_layers`` layers, token selection, projection and pooling: equal (up to float16
    rounding of the cache) to ``side(input_ids, attention_mask)``. ``inputs``: see ``run_layers``."""
    layers = encoder_layers(side)
    last = run_layers(side, states, attention_mask, len(layers) - train_layers, inputs=inputs)
    return side.from_states(last, attention_mask)


@dataclass
class LowerStates:
    """The states leaving the frozen lower layers for every token of U unique texts of one side.

    flat: (S, H) float16, the texts' tokens one after another; offsets, lengths: (U,) int64, where
    text u's tokens start in ``flat`` and how many it has (special tokens included, after
    truncation); rows: text -> u. ``train_layers`` is k: the states enter layer L - k.
    """
    flat: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    rows: dict[str, int]
    train_layers: int
    seconds: float = 0.0
    reused: str | None = None

    @property
    def bytes(self) -> int:
        return self.flat.numel() * self.flat.element_size() + 16 * len(self.lengths)

    @classmethod
    def build(cls, side: SideEncoder, texts: Sequence[str], train_layers: int, batch_size: int, device: str,
              cache_dir: str | None = None) -> "LowerStates":
        """Run the frozen embeddings and lower ``L - k`` layers over each unique text once (eval mode,
        no gradients, length-sorted batches), or load the same from ``cache_dir``."""
        started = time.perf_counter()
        texts = sorted(set(texts))
        layers = encoder_layers(side)
        lower = len(layers) - train_layers
        upper_parameters(side, train_layers)             # checks k
        path = _cache_path(cache_dir, side, lower, texts) if cache_dir else None
        if path and os.path.exists(path):
            tensors = load_file(path)
            return cls(tensors["flat"], tensors["offsets"], tensors["lengths"],
                       {t: i for i, t in enumerate(texts)}, train_layers, time.perf_counter() - started, path)
        tokenized = side.tokenize(texts)
        lengths = torch.tensor([t.num_tokens for t in tokenized], dtype=torch.int64)
        offsets = torch.cumsum(lengths, 0) - lengths
        flat = torch.zeros(int(lengths.sum()), side.transformer.config.hidden_size, dtype=torch.float16)
        was_training = side.training
        side.eval()
        try:
            with torch.inference_mode():
                order = np.argsort(lengths.numpy(), kind="stable")
                for start in range(0, len(order), batch_size):
                    index = order[start:start + batch_size]
                    batch = side.collate([tokenized[i] for i in index]).to(device)
                    hidden = side.transformer.embeddings(input_ids=batch.input_ids)
                    hidden = run_layers(side, hidden, batch.attention_mask, 0, lower).float().cpu()
                    for row, i in enumerate(index):
                        flat[offsets[i]:offsets[i] + lengths[i]] = hidden[row, :lengths[i]].to(torch.float16)
        finally:
            side.train(was_training)
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            temporary = f"{path}.tmp-{os.getpid()}"
            save_file({"flat": flat, "offsets": offsets, "lengths": lengths}, temporary,
                      metadata={"format": CACHE_FORMAT})
            os.replace(temporary, path)                   # never a half-written cache file
        return cls(flat, offsets, lengths, {t: i for i, t in enumerate(texts)}, train_layers,
                   time.perf_counter() - started)

    def rows_of(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (len(texts),) int64 rows; KeyError naming a text that was not cached."""
        try:
            return np.fromiter((self.rows[t] for t in texts), np.int64, len(texts))
        except KeyError as err:
            raise KeyError(f"text {str(err)[:80]} is not in the lower-layer cache") from None

    def batch(self, rows: np.ndarray, device: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) rows -> padded states (B, T, H) float32 and attention mask (B, T) int64, T the
        longest of these texts (so a length-sorted batch pads little)."""
        rows_t = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        lengths = self.lengths[rows_t]
        longest = int(lengths.max())
        positions = torch.arange(longest)
        mask = positions[None, :] < lengths[:, None]                                  # (B, T)
        index = (self.offsets[rows_t][:, None] + positions[None, :]).clamp(max=len(self.flat) - 1)
        states = self.flat[index].float() * mask[:, :, None]                          # (B, T, H)
        return states.to(device), mask.to(torch.int64).to(device)


def _cache_path(directory: str, side: SideEncoder, lower: int, texts: Sequence[str]) -> str:
    """A file named by all its contents depend on: the tokenizer, max length, the weights of the
    embeddings and of the lower layers, and the exact texts."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": CACHE_FORMAT, "max_length": side.max_length, "lower": lower}).encode())
    digest.update(tokenizer_identity(side.tokenizer).encode())
    modules = [side.transformer.embeddings, *encoder_layers(side)[:lower]]
    for number, module in enumerate(modules):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{number}.{name}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return os.path.join(directory, f"lower-states-{digest.hexdigest()[:32]}.safetensors")
