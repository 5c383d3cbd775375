"""GPU microbenchmark of the decode-size linear layers (`kernels/gemv.py`) against cuBLAS.

`python -m benchmarks.kernels_gemv [--rows 1 2 4] [--sweep] [--out FILE]` times, at the Llama-3-8B
projection shapes in bfloat16, each projection as the decode step runs it:

- `cublas`: `F.linear`, preceded by the separate elementwise kernel where the layer has one
  (RMSNorm + residual before qkv and gate_up, SiLU-and-mul before down);
- `triton`: the fused one-launch entry point (`rms_norm_linear`, `linear`, `silu_and_mul_linear`).

To time weights streamed from HBM, as in a model where 32 layers' weights pass through a 50 MB L2,
each case holds enough distinct weight copies to exceed 600 MB, captures one CUDA graph that runs
the case over every copy in turn, and reports the replay time divided by the copies (median of 20
replays). GB/s = weight bytes / that time. `--sweep` also times every tile config of the Triton
kernel (prologue `none`, one row) and prints the best per shape. `--out` writes a JSON list
(`what: "kernel_gemv"`). About a minute on an H200 (five with `--sweep`).
"""
from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from kernels import activation, gemv, rmsnorm
from kernels.gemv_triton import gemv_triton

HIDDEN, INTER, Q, KV = 4096, 14336, 4096, 1024
SHAPES = {"qkv_proj": (Q + 2 * KV, HIDDEN, "rms_norm"), "o_proj": (HIDDEN, Q, "none"),
          "gate_up_proj": (2 * INTER, HIDDEN, "rms_norm"), "down_proj": (HIDDEN, INTER, "silu_and_mul")}
DTYPE = torch.bfloat16
TARGET_BYTES = 600 << 20


def graph_time_us(fns: list[Callable[[], object]], replays: int = 20) -> float:
    """Median microseconds per function of one CUDA graph running every function of `fns` in turn."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in fns[:2]:
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(fns))
    return sorted(times)[len(times) // 2]


def case_fns(n: int, k: int, prologue: str, rows: int, fused: bool,
             config: tuple[int, int, int, int] | None = None) -> list[Callable[[], object]]:
    copies = max(2, -(-TARGET_BYTES // (n * k * 2)))
    weights = [torch.randn(n, k, device="cuda", dtype=DTYPE) for _ in range(copies)]
    width = 2 * k if prologue == "silu_and_mul" else k
    x = torch.randn(rows, width, device="cuda", dtype=DTYPE)
    residual = torch.randn(rows, k, device="cuda", dtype=DTYPE)
    norm_w = torch.ones(k, device="cuda", dtype=DTYPE)
    if config is not None:
        return [lambda w=w: gemv_triton(prologue, x, w, None, config=config) for w in weights]
    if prologue == "rms_norm":
        if fused:
            return [lambda w=w: gemv.rms_norm_linear(x, residual, norm_w, 1e-5, w) for w in weights]
        return [lambda w=w: F.linear(rmsnorm.rms_norm(x, norm_w, 1e-5, residual)[0], w) for w in weights]
    if prologue == "silu_and_mul":
        if fused:
            return [lambda w=w: gemv.silu_and_mul_linear(x, w) for w in weights]
        return [lambda w=w: F.linear(activation.silu_and_mul(x), w) for w in weights]
    if fused:
        return [lambda w=w: gemv.linear(x, w) for w in weights]
    return [lambda w=w: F.linear(x, w) for w in weights]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = []
    for name, (n, k, prologue) in SHAPES.items():
        weight_bytes = n * k * 2
        for rows in args.rows:
            for impl in ("cublas", "triton"):
                us = graph_time_us(case_fns(n, k, prologue, rows, fused=impl == "triton"))
                gbps = weight_bytes / us / 1e3
                results.append({"what": "kernel_gemv", "projection": name, "prologue": prologue, "rows": rows,
                                "impl": impl, "us": us, "gb_s": gbps})
                print(f"{name:13s} rows {rows} {impl:7s} ({prologue:12s}) {us:7.2f} us {gbps:6.0f} GB/s")
                torch.cuda.empty_cache()
        if args.sweep:
            best = None
            for config in itertools.product([4, 8, 16], [512, 1024], [4, 8], [4]):
                us = graph_time_us(case_fns(n, k, "none", 1, fused=True, config=config))
                results.append({"what": "kernel_gemv_sweep", "projection": name, "config": list(config), "us": us,
                                "gb_s": weight_bytes / us / 1e3})
                best = min(best or (us, config), (us, config))
                torch.cuda.empty_cache()
            print(f"{name:13s} sweep best {best[1]} {best[0]:.2f} us {weight_bytes / best[0] / 1e3:.0f} GB/s")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
