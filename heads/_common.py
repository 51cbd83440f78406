"""What every head shares: the call, its checks, config handling, a small FFNN.

The call (every head)::

    logits = head(left, left_mask, right, right_mask, left_pooled=None, right_pooled=None)

    left        (B, N, D) float   projected left token embeddings (position 0 = [CLS])
    left_mask   (B, N)    bool    True = real token; position 0 is always real
    right       (B, M, D) float   projected right token embeddings
    right_mask  (B, M)    bool
    left_pooled / right_pooled  (B, H) float or None: pooled sentence embeddings; only
                the ``pooled-cos`` head (and a ``CosineSkip`` around any head) reads them;
                every other head accepts and ignores them
    logits      (B, num_outputs) float

Padded positions may hold any garbage: every head drops them (dipair) or zeroes them with
``torch.where`` (so not even a NaN leaks through a multiplication by zero) before any
arithmetic, or reads only the first tokens, and attention masks them as keys, so logits do
not depend on them at all.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn


def check_positive_int(name: str, value: Any) -> None:
    """ValueError unless ``value`` is an int >= 1 (bools are not sizes)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} is not allowed: use a positive integer")


def check_probability(name: str, value: Any) -> None:
    """ValueError unless ``value`` is a number in [0, 1)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value!r} is not allowed: use a number in [0, 1)")


def check_hidden_sizes(name: str, value: Any) -> tuple[int, ...]:
    """The FFNN hidden sizes as a tuple of positive ints (a JSON list is accepted)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise ValueError(f"{name}={value!r} is not allowed: use a list of positive integers, e.g. [128, 128]")
    for size in value:
        check_positive_int(f"{name} entry", size)
    return tuple(value)


class PairHead(nn.Module):
    """Base of every head: the sizes it was built for, its frozen config, input checks.

    Subclasses set ``name`` (the registry name) and ``config_class`` (a frozen dataclass whose
    defaults are the head's defaults) and implement ``forward`` with the common call.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    # What the first logit column means for the scoring job: "logits" (apply sigmoid/softmax)
    # or "cosine" (already a similarity in [-1, 1]; report it as is).
    score_kind: ClassVar[str] = "logits"

    def __init__(self, config: Any, *, dim: int, left_tokens: int, right_tokens: int, num_outputs: int = 1):
        super().__init__()
        for size_name, size in (("dim", dim), ("left_tokens", left_tokens),
                                ("right_tokens", right_tokens), ("num_outputs", num_outputs)):
            check_positive_int(size_name, size)
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.dim = dim
        self.left_tokens = left_tokens
        self.right_tokens = right_tokens
        self.num_outputs = num_outputs

    def check_inputs(self, left: torch.Tensor, left_mask: torch.Tensor,
                     right: torch.Tensor, right_mask: torch.Tensor) -> None:
        """ValueError naming the first argument whose shape or dtype does not fit this head."""
        batch = left.shape[0] if left.dim() == 3 else "B"
        for side, tokens, mask, count in (("left", left, left_mask, self.left_tokens),
                                          ("right", right, right_mask, self.right_tokens)):
            expected = (batch, count, self.dim)
            if tokens.dim() != 3 or tuple(tokens.shape) != expected:
                raise ValueError(f"{side} has shape {tuple(tokens.shape)}; expected {expected}: this head "
                                 f"was built for {count} {side} tokens of dimension {self.dim} "
                                 f"(and both sides need the same batch size)")
            if not tokens.is_floating_point():
                raise ValueError(f"{side} has dtype {tokens.dtype}; token embeddings must be floating point")
            if tuple(mask.shape) != expected[:2]:
                raise ValueError(f"{side}_mask has shape {tuple(mask.shape)}; expected {expected[:2]}")
            if mask.dtype != torch.bool:
                raise ValueError(f"{side}_mask has dtype {mask.dtype}; it must be torch.bool "
                                 f"(True = real token), e.g. mask.bool()")
            # A value check reads the data (a graph break under torch.compile): eager mode only.
            if batch and not compiling() and not bool(mask[:, 0].all()):
                raise ValueError(f"{side}_mask[:, 0] is False for some pairs; position 0 (the [CLS] "
                                 f"token) must be real for every pair")

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, left_tokens={self.left_tokens}, right_tokens={self.right_tokens}, "
                f"num_outputs={self.num_outputs}, config={self.config}")


def compiling() -> bool:
    """True while ``torch.compile`` traces the head: code that reads tensor values to decide
    (``bool(mask.all())``) would break the graph there, so the heads take a value-independent
    path instead. ``torch.compiler.is_compiling`` from torch 2.3, ``torch._dynamo``'s before."""
    check = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if check is None:
        from torch._dynamo import is_compiling as check
    return bool(check())


def linear_parameters(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (out, in), bias (out,) or None) of a linear layer as float tensors: an ``nn.Linear``'s
    own parameters, or a dynamically quantized one's int8 weight dequantized (:func:`quantize_int8`).
    For the few products that use a layer's weights other than as ``layer(x)`` (DiPair's last
    layer pulls the query back through W_k)."""
    if isinstance(layer, nn.Linear):
        return layer.weight, layer.bias
    return layer.weight().dequantize(), layer.bias()


def quantize_int8(head: nn.Module) -> nn.Module:
    """The head with every ``nn.Linear`` replaced by a dynamically quantized int8 one (weights int8
    per tensor, activations quantized per batch on the fly; CPU only). The result scores within
    rounding of the float head (tests/heads/test_compile_quantize.py states the bound)."""
    import warnings

    if not any(isinstance(m, nn.Linear) for m in head.modules()):
        raise ValueError(f"head {getattr(head, 'name', type(head).__name__)!r} has no linear layers to quantize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch 2.10+ deprecates quantized tensors in favour of torchao
        return torch.ao.quantization.quantize_dynamic(head, {nn.Linear}, dtype=torch.qint8)


def zero_padding(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``tokens`` (B, T, D) with padded positions (``mask`` (B, T) False) set to exactly 0."""
    return torch.where(mask.unsqueeze(-1), tokens, tokens.new_zeros(()))


def ffnn(in_features: int, hidden: tuple[int, ...], out_features: int, dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> Dropout for each hidden size, then a final Linear to the logits."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(in_features, size), nn.ReLU(), nn.Dropout(dropout)]
        in_features = size
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


def config_from_options(config_class: type, head_name: str, options: dict[str, Any]) -> Any:
    """``config_class(**options)``, with a ValueError that names an unknown option and the
    allowed ones (the dataclass would raise a bare TypeError)."""
    allowed = [field.name for field in dataclasses.fields(config_class)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} for head {head_name!r}; "
                         f"allowed options: {', '.join(allowed) if allowed else '(none)'}")
    return config_class(**options)
