"""Stage two's hot path: how many pairs per second the DiPair-TSF head scores on this CPU,
against the machine's GEMM roofline.

    python benchmarks/head_speed.py [--batch-size 4096] [--seconds 4] [--no-baseline]
    python benchmarks/head_speed.py --variants-only   # fp32 vs --compile vs --head-quantize int8

Prints, for DiPair-TSF with N=4, M=12, D=128, L=2, 1 attention head, FFN 1024 (eval mode,
``torch.inference_mode``, batch 4096):

* the machine's GEMM rate: fp32 2048^3 (measured before and after the heads, averaged) and
  bf16 (2048^3, or 1024^3 where the CPU has no native bf16 and the fallback is very slow);
* the head's FLOPs per pair (see ``dipair_flops_per_pair``) and the roofline, GEMM rate /
  FLOPs per pair, counting the textbook last-layer shortcut;
* pairs/s in fp32 and under bf16 autocast with no padding, and the fraction of the roofline;
* pairs/s in fp32 with 30% of the positions after the first padded (padded positions skip the
  layers, so this is faster than the roofline for full sequences);
* unless --no-baseline, the same architecture as a plain ``nn.TransformerEncoder`` (every
  layer at every position), fp32.

Timings are medians over repeats of one random batch. On shared or virtual machines they
drift by tens of percent from minute to minute: compare figures from the same run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from heads import build_head  # noqa: E402

FLOP_VARIANTS = ("full", "shortcut", "executed")


def dipair_flops_per_pair(n: int, m: int, dim: int, layers: int, ffn: int, *,
                          variant: str = "shortcut", num_outputs: int = 1) -> float:
    """FLOPs (2 x multiply-adds) of one DiPair-TSF head forward for one pair.

    Counts the matrix products only (projections, attention scores and weighted sums,
    feed-forward, classifier); LayerNorm, softmax, GELU, residual adds and the embedding add
    are O(S*D) or O(S*F) and left out. With S = n + m, D = dim, F = ffn, every layer but the
    last costs (independent of the number of attention heads)::

        2 * (3*S*D*D    QKV projection
             + 2*S*S*D  scores and attention-weighted values
             + S*D*D    attention output projection
             + 2*S*D*F) feed-forward

    The last layer depends on ``variant``:

    ``full``      as every other layer (what nn.TransformerEncoder computes).
    ``shortcut``  the textbook shortcut, only position 0's output is needed: keys and values for
                  all S positions, query, output projection and feed-forward for position 0 only:
                  2 * (2*S*D*D + D*D + 2*S*D + D*D + 2*D*F).
    ``executed``  what heads/dipair.py computes: the query is pulled back through W_k and W_v is
                  applied to the attended input, so no projection touches all S positions:
                  2 * (D*D [W_q] + D*D [W_k^T q] + 2*S*D + D*D [W_v] + D*D [out] + 2*D*F).

    Plus the classifier, 2 * D * num_outputs. N=4, M=12, D=128, L=2, F=1024: full 21.23M,
    shortcut 12.26M, executed 11.28M.
    """
    if variant not in FLOP_VARIANTS:
        raise ValueError(f"variant={variant!r} is not allowed: choose one of {', '.join(FLOP_VARIANTS)}")
    s, d, f = n + m, dim, ffn
    full_layer = 2 * (3 * s * d * d + 2 * s * s * d + s * d * d + 2 * s * d * f)
    if variant == "full":
        last_layer = full_layer
    elif variant == "shortcut":
        last_layer = 2 * (2 * s * d * d + d * d + 2 * s * d + d * d + 2 * d * f)
    else:
        last_layer = 2 * (4 * d * d + 2 * s * d + 2 * d * f)
    return float((layers - 1) * full_layer + last_layer + 2 * d * num_outputs)


def _median_seconds(call: Callable[[], object], seconds: float, min_repeats: int = 3,
                    max_repeats: int = 50) -> tuple[float, int]:
    """Median wall time of ``call`` after one warm-up call, repeated for about ``seconds``
    (at least ``min_repeats`` times unless one call alone takes longer than ``seconds``)."""
    start = time.perf_counter()
    call()
    warmup = time.perf_counter() - start
    times: list[float] = []
    needed = 1 if warmup > seconds else min_repeats
    deadline = time.perf_counter() + seconds
    while len(times) < max_repeats and not (len(times) >= needed and time.perf_counter() > deadline):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


def measure_gemm_gflops(dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    """GFLOP/s of a ``size`` x ``size`` x ``size`` matmul in ``dtype`` (median over repeats)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    with torch.inference_mode():
        median, _ = _median_seconds(lambda: a @ b, seconds, min_repeats=1)
    return 2 * size ** 3 / median / 1e9


def measure_head_throughput(head: nn.Module, batch_size: int = 4096, n: int = 4, m: int = 12,
                            dim: int = 128, seconds: float = 6.0, padding: float = 0.25,
                            seed: int = 0, precisions: tuple[str, ...] = ("fp32", "bf16")) -> dict:
    """Pairs per second of ``head`` (switched to eval mode) on one random batch.

    Inputs: left (B, n, dim), right (B, m, dim) standard normal; each non-first position is
    padding with probability ``padding``. Each variant is timed as the median of repeated
    calls for about ``seconds`` in ``torch.inference_mode``: fp32, and bf16 autocast (inputs
    stay fp32, autocast casts per op, as a scoring job would run it).

    Returns {"batch_size", and for each of ``precisions``: "<p>_pairs_per_s",
    "<p>_seconds_per_batch", "<p>_repeats"}.
    """
    generator = torch.Generator().manual_seed(seed)
    left = torch.randn(batch_size, n, dim, generator=generator)
    right = torch.randn(batch_size, m, dim, generator=generator)
    left_mask = torch.rand(batch_size, n, generator=generator) >= padding
    right_mask = torch.rand(batch_size, m, generator=generator) >= padding
    left_mask[:, 0] = True
    right_mask[:, 0] = True
    head.eval()
    result: dict = {"batch_size": batch_size}

    def fp32() -> None:
        head(left, left_mask, right, right_mask)

    def bf16() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            head(left, left_mask, right, right_mask)

    with torch.inference_mode():
        for label, call in (("fp32", fp32), ("bf16", bf16)):
            if label not in precisions:
                continue
            median, repeats = _median_seconds(call, seconds)
            result.update({f"{label}_pairs_per_s": batch_size / median,
                           f"{label}_seconds_per_batch": median, f"{label}_repeats": repeats})
    return result


class TransformerEncoderBaseline(nn.Module):
    """The same architecture as DiPair-TSF done the plain way: ``nn.TransformerEncoder`` over
    all positions in every layer, first position -> Linear. For comparison only."""

    def __init__(self, dim: int, left_tokens: int, right_tokens: int, layers: int, heads: int, ffn: int):
        super().__init__()
        self.position = nn.Parameter(torch.randn(left_tokens + right_tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, ffn, dropout=0.1, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.classifier = nn.Linear(dim, 1)

    def forward(self, left, left_mask, right, right_mask, **_):
        x = torch.cat([left, right], dim=1) + self.position
        mask = torch.cat([left_mask, right_mask], dim=1)
        return self.classifier(self.encoder(x, src_key_padding_mask=~mask)[:, 0])


def variants(batch_size: int, seconds: float, padding: float = 0.3) -> None:
    """The dipair head in fp32 against its opt-in variants, interleaved (eager, int8, compiled,
    eager again), and each variant's largest score difference against fp32 on the same batch."""
    from heads._common import quantize_int8

    n, m, dim = 4, 12, 128
    torch.manual_seed(0)
    head = build_head("dipair", dim=dim, left_tokens=n, right_tokens=m).eval()
    generator = torch.Generator().manual_seed(1)
    left, right = torch.randn(batch_size, n, dim, generator=generator), torch.randn(batch_size, m, dim, generator=generator)
    left_mask = torch.rand(batch_size, n, generator=generator) >= padding
    right_mask = torch.rand(batch_size, m, generator=generator) >= padding
    left_mask[:, 0] = right_mask[:, 0] = True
    heads = {"fp32": head, "int8": quantize_int8(head), "compiled": torch.compile(head, dynamic=True)}
    with torch.inference_mode():
        reference = torch.sigmoid(head(left, left_mask, right, right_mask))
        started = time.perf_counter()
        heads["compiled"](left, left_mask, right, right_mask)
        compile_seconds = time.perf_counter() - started
        rates = {name: [] for name in heads}
        for _ in range(2):   # interleaved, so drift on a shared machine hits every variant alike
            for name, variant in heads.items():
                median, _ = _median_seconds(lambda: variant(left, left_mask, right, right_mask), seconds / 2)
                rates[name].append(batch_size / median)
        print(f"dipair N={n} M={m} D={dim}, batch {batch_size}, {padding:.0%} of positions 1.. padded, "
              f"{torch.get_num_threads()} threads; compiling took {compile_seconds:.0f} s")
        for name, variant in heads.items():
            rate = statistics.mean(rates[name])
            gap = (torch.sigmoid(variant(left, left_mask, right, right_mask)) - reference).abs().max().item()
            print(f"  {name:9s} {rate:>9,.0f} pairs/s = {rate / statistics.mean(rates['fp32']):.2f}x fp32; "
                  f"largest score difference {gap:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=4.0, help="time spent per measurement")
    parser.add_argument("--no-baseline", action="store_true", help="skip the nn.TransformerEncoder baseline")
    parser.add_argument("--variants-only", action="store_true",
                        help="only fp32 against the opt-in variants (score_pairs --compile, --head-quantize int8)")
    args = parser.parse_args()
    if args.variants_only:
        variants(args.batch_size, args.seconds)
        return
    n, m, dim, layers, heads, ffn = 4, 12, 128, 2, 1, 1024

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16 (oneDNN): {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    # The fp32 GEMM rate is measured before and after the heads and averaged: on shared or
    # virtual machines the clock drifts, and the roofline should describe the same minutes.
    gemm_before = measure_gemm_gflops(torch.float32)
    # Without native bf16 (AVX512-BF16 / AMX) PyTorch falls back to a slow generic kernel, under
    # 1 GFLOP/s: a 2048^3 product would take a minute, so measure a 1024^3 one instead.
    bf16_size = 2048 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 1024
    gemm = {"bf16": measure_gemm_gflops(torch.bfloat16, size=bf16_size)}

    head = build_head("dipair", dim=dim, left_tokens=n, right_tokens=m, layers=layers, heads=heads, ffn=ffn)
    dipair = measure_head_throughput(head, args.batch_size, n, m, dim, args.seconds, padding=0.0)
    padded = measure_head_throughput(head, args.batch_size, n, m, dim, args.seconds / 2, padding=0.3,
                                     precisions=("fp32",))
    baseline = None
    if not args.no_baseline:
        baseline = measure_head_throughput(TransformerEncoderBaseline(dim, n, m, layers, heads, ffn),
                                           args.batch_size, n, m, dim, args.seconds / 2, padding=0.0,
                                           precisions=("fp32",))
    gemm["fp32"] = (gemm_before + measure_gemm_gflops(torch.float32)) / 2

    flops = {variant: dipair_flops_per_pair(n, m, dim, layers, ffn, variant=variant) for variant in FLOP_VARIANTS}
    roofline = {precision: gemm[precision] * 1e9 / flops["shortcut"] for precision in gemm}
    print(f"GEMM: fp32 2048^3 {gemm['fp32']:.0f} GFLOP/s (before {gemm_before:.0f}, after "
          f"{2 * gemm['fp32'] - gemm_before:.0f}), bf16 {bf16_size}^3 {gemm['bf16']:.1f} GFLOP/s")
    print(f"DiPair-TSF N={n} M={m} D={dim} L={layers} heads={heads} FFN={ffn}, batch {args.batch_size}: "
          + ", ".join(f"{variant} {value / 1e6:.2f}" for variant, value in flops.items()) + " MFLOP/pair")
    print(f"roofline = GEMM rate / shortcut FLOPs: fp32 {roofline['fp32']:,.0f} pairs/s, "
          f"bf16 {roofline['bf16']:,.0f} pairs/s\n")

    native_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    for precision in ("fp32", "bf16"):
        rate = dipair[f"{precision}_pairs_per_s"]
        if precision == "bf16" and not native_bf16:
            print(f"heads.dipair bf16 autocast, no padding: {rate:,.0f} pairs/s "
                  f"({dipair['bf16_repeats']} repeats); this CPU has no native bf16, autocast runs "
                  f"generic fallback kernels, so no bf16 roofline is meaningful: use fp32 here")
            continue
        print(f"heads.dipair {precision}, no padding: {rate:,.0f} pairs/s "
              f"({dipair[f'{precision}_repeats']} repeats) = {rate / roofline[precision]:.0%} of the "
              f"{precision} roofline; counting full FLOPs {rate * flops['full'] / (gemm[precision] * 1e9):.0%}, "
              f"executed FLOPs run at {rate * flops['executed'] / 1e9:.0f} GFLOP/s "
              f"({rate * flops['executed'] / (gemm[precision] * 1e9):.0%} of GEMM)")
    print(f"heads.dipair fp32, 30% of positions 1.. padded: {padded['fp32_pairs_per_s']:,.0f} pairs/s "
          f"(padded positions are skipped)")
    if baseline is not None:
        rate = baseline["fp32_pairs_per_s"]
        print(f"nn.TransformerEncoder fp32, no padding: {rate:,.0f} pairs/s = "
              f"{rate * flops['full'] / (gemm['fp32'] * 1e9):.0%} of the fp32 GEMM rate on its (full) FLOPs")


if __name__ == "__main__":
    main()
