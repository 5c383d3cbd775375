"""GEMV microbenchmark: the Triton batch-1 GEMV (`kernels/gemm/gemv_triton.py`) against cuBLAS at the
Llama-3-8B linear shapes (bf16, one row of x).

    python -m benchmarks.kernels_gemv [--no-sweep] --out FILE

For each weight `[N, K]` (qkv 6144 x 4096, o 4096 x 4096, gate_up 28672 x 4096, down 4096 x 14336
with SiLU-and-mul fused in, LM head 128256 x 4096) it times CUDA-graph replays of calls that rotate
over enough weight copies to exceed 4x L2, as the decode graph reads each layer's weights once:

- cuBLAS: `F.linear` (for down: the `silu_and_mul` kernel, then `F.linear`), as the model ran before;
- Triton with the configuration `pick_config` chooses, with programmatic dependent launch (each call
  overlaps the end of the one before, as the layers of a decode graph do) and without (`SLUICE_PDL=0`);
- unless `--no-sweep`, every configuration of a grid of (BLOCK_N, BLOCK_K, num_warps, STAGES), with PDL.

A tile that is fastest alone need not be fastest inside the decode graph, where each GEMV overlaps
the norm or attention kernel before it: confirm a choice with `benchmarks.ablate_decode`'s `gemv=`.

GB/s = (W + x + y bytes) / time; `pct_of_copy` compares it with the device-to-device copy bandwidth
(read + write), the ceiling a streaming kernel can reach. Prints a table; `--out` writes JSON.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os

import torch

from benchmarks.kernels import L2_BYTES, copy_bandwidth, graph_time_ms, print_table
from kernels.elementwise import activation
from kernels.gemm.gemv_triton import gemv_triton, pick_config

DTYPE = torch.bfloat16
SHAPES = {"qkv": (6144, 4096, False), "o": (4096, 4096, False), "gate_up": (28672, 4096, False),
          "down": (4096, 14336, True), "lm_head": (128256, 4096, False)}
SWEEP = list(itertools.product((2, 4, 8, 16), (512, 1024, 2048), (4, 8), (1, 2)))


def weight_copies(n: int, k: int) -> list[torch.Tensor]:
    count = max(1, math.ceil(4 * L2_BYTES / (n * k * 2)))
    return [torch.randn(n, k, device="cuda", dtype=DTYPE) / k ** 0.5 for _ in range(count)]


def time_us(fn, weights: list[torch.Tensor]) -> float:
    return graph_time_ms([lambda w=w: fn(w) for w in weights], target_ms=3.0) * 1e3


def shape_row(name: str, sweep: bool) -> dict:
    n, k, gated = SHAPES[name]
    weights = weight_copies(n, k)
    x = torch.randn(1, 2 * k if gated else k, device="cuda", dtype=DTYPE)

    def cublas(w):
        return torch.nn.functional.linear(activation.silu_and_mul(x) if gated else x, w)

    want = cublas(weights[0])
    moved = n * k * 2 + x.numel() * 2 + n * 2
    row = {"shape": name, "n": n, "k": k, "gated": gated, "cublas_us": time_us(cublas, weights)}
    default = pick_config(n, k, gated)
    os.environ["SLUICE_PDL"] = "0"  # read at every launch
    row["no_pdl_us"] = time_us(lambda w: gemv_triton(x, w, None, gated), weights)
    os.environ["SLUICE_PDL"] = "1"
    candidates = [default] + ([c for c in SWEEP if c != default] if sweep else [])
    timings = {}
    for config in candidates:
        try:
            got = gemv_triton(x, weights[0], None, gated, config=config)
            torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
            timings[config] = time_us(lambda w, c=config: gemv_triton(x, w, None, gated, config=c), weights)
        except Exception as error:  # noqa: BLE001 (a config out of resources is skipped, and said)
            print(f"  {name} {config}: {type(error).__name__}: {str(error)[:120]}")
    best = min(timings, key=timings.get)
    row.update(default_config=list(default), default_us=timings[default], best_config=list(best),
               best_us=timings[best], gb_per_s=moved / (timings[best] * 1e-6) / 1e9,
               speedup_vs_cublas=row["cublas_us"] / timings[best],
               sweep={"/".join(map(str, c)): t for c, t in sorted(timings.items(), key=lambda kv: kv[1])[:12]})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--out", help="write every row as JSON")
    args = parser.parse_args()
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth: {bandwidth / 1e9:.0f} GB/s")
    rows = []
    for name in args.shapes:
        row = shape_row(name, not args.no_sweep)
        row["pct_of_copy"] = 100 * row["gb_per_s"] * 1e9 / bandwidth
        rows.append(row)
        print(f"  {name}: cublas {row['cublas_us']:.1f} us, triton without PDL {row['no_pdl_us']:.1f}, "
              f"default {row['default_us']:.1f}, best {row['best_us']:.1f} {row['best_config']} "
              f"({row['pct_of_copy']:.0f}% of copy)", flush=True)
    print_table("GEMV, one row (bf16)", rows, ["shape", "cublas_us", "no_pdl_us", "default_us", "best_us",
                                               "best_config", "gb_per_s", "pct_of_copy", "speedup_vs_cublas"])
    layer = [r for r in rows if r["shape"] != "lm_head"]
    print("\nper decoder layer (qkv + o + gate_up + down): " + ", ".join(
        f"{key} {sum(r[key] for r in layer):.1f}" for key in ("cublas_us", "no_pdl_us", "default_us", "best_us")))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"what": "kernel_gemv", "copy_gb_per_s": bandwidth / 1e9, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
