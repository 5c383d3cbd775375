"""GPU microbenchmark of the elementwise Triton kernels against their pure-torch references.

`python -m benchmarks.kernels_elementwise [--tokens 1 64 512 8192] [--out FILE]` times, at Llama-3-8B
shapes in bfloat16 (H 4096, 32 query and 8 KV heads of 128, I 14336), for each token count T:

- `write_kv`: K and V `[T, 8, 128]` into a paged cache (torch: `attention_ref.write_kv`, index_copy_);
- `rms_norm`: with the residual add, `[T, 4096]` (torch: the layer's arithmetic);
- `rotary`: q `[T, 32, 128]` and k `[T, 8, 128]` in place, views of a packed qkv (torch: the layer's
  arithmetic plus the copy back);
- `rotary_kv`: `rotary` and `write_kv` fused into one launch: q and k rotated in place, the rotated k
  and v (views of one packed qkv) stored into a paged cache (torch: the `rotary` then the `write_kv`
  reference above);
- `silu_and_mul`: `[T, 28672]` -> `[T, 14336]`.

Each figure is the median of `triton.testing.do_bench` (L2 flushed between calls, so launch latency
shows at small T) and of `do_bench_cudagraph` (launches replayed from a CUDA graph, as the decode step
runs). GB/s = the bytes a kernel must move (each input read once, each output written once) / the
do_bench median. Prints one line per measurement; `--out` writes them as a JSON list of objects with
`what: "kernel_elementwise"`. About 30 s on an H200.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
import triton.testing

from kernels.attention import reference as attention_ref
from kernels.elementwise import activation, kv_write, rmsnorm, rotary, rotary_kv
from services.worker.layers.rotary import get_rope

HIDDEN, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, INTER = 4096, 32, 8, 128, 14336
BLOCK_SIZE, NUM_BLOCKS, MAX_POSITION = 16, 4096, 131072
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}
DTYPE = torch.bfloat16
Case = tuple[Callable[[], object], Callable[[], object], int]  # (triton, torch, bytes moved)


def write_kv_case(num_tokens: int) -> Case:
    key = torch.randn(num_tokens, NUM_KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
    value = torch.randn_like(key)
    k_cache = torch.zeros(NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.randperm(NUM_BLOCKS * BLOCK_SIZE, device="cuda")[:num_tokens]
    moved = 4 * key.numel() * key.element_size() + slots.numel() * slots.element_size()
    return (lambda: kv_write.write_kv(key, value, k_cache, v_cache, slots),
            lambda: attention_ref.write_kv(key, value, k_cache, v_cache, slots), moved)


def rms_norm_case(num_tokens: int) -> Case:
    x = torch.randn(num_tokens, HIDDEN, device="cuda", dtype=DTYPE)
    residual = torch.randn_like(x)
    weight = torch.randn(HIDDEN, device="cuda", dtype=DTYPE)
    moved = 4 * x.numel() * x.element_size() + weight.numel() * weight.element_size()
    return (lambda: rmsnorm.rms_norm(x, weight, 1e-5, residual),
            lambda: rmsnorm._torch_impl(x, weight, 1e-5, residual), moved)


def rotary_case(num_tokens: int) -> Case:
    rope = get_rope(HEAD_DIM, 1.0, MAX_POSITION, 500000.0, LLAMA3_SCALING).cuda()
    qkv = torch.randn(num_tokens, (NUM_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM, device="cuda", dtype=DTYPE)
    q, k, _ = qkv.split([NUM_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM], dim=-1)
    q, k = q.unflatten(-1, (NUM_HEADS, HEAD_DIM)), k.unflatten(-1, (NUM_KV_HEADS, HEAD_DIM))
    positions = torch.randint(0, MAX_POSITION, (num_tokens,), device="cuda")
    cache, rotary_dim = rope.cos_sin_cache, rope.rotary_dim
    moved = (2 * (q.numel() + k.numel()) * q.element_size() + num_tokens * rotary_dim * cache.element_size()
             + positions.numel() * positions.element_size())
    return (lambda: rotary.rotary_embedding(positions, q, k, cache, rotary_dim),
            lambda: rotary._torch_impl(positions, q, k, cache, rotary_dim), moved)


def rotary_kv_case(num_tokens: int) -> Case:
    rope = get_rope(HEAD_DIM, 1.0, MAX_POSITION, 500000.0, LLAMA3_SCALING).cuda()
    qkv = torch.randn(num_tokens, (NUM_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM, device="cuda", dtype=DTYPE)
    q, k, v = qkv.split([NUM_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM], dim=-1)
    q, k, v = (t.unflatten(-1, (-1, HEAD_DIM)) for t in (q, k, v))
    positions = torch.randint(0, MAX_POSITION, (num_tokens,), device="cuda")
    k_cache = torch.zeros(NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.randperm(NUM_BLOCKS * BLOCK_SIZE, device="cuda")[:num_tokens]
    cache, rotary_dim = rope.cos_sin_cache, rope.rotary_dim
    # q read and written; k read, written and stored; v read and stored; cos/sin, positions, slots read.
    moved = ((2 * q.numel() + 5 * k.numel()) * q.element_size() + num_tokens * rotary_dim * cache.element_size()
             + positions.numel() * positions.element_size() + slots.numel() * slots.element_size())

    def torch_fn() -> None:  # not rotary_kv._torch_impl: its negative-slot filter syncs (no graph capture)
        rotary._torch_impl(positions, q, k, cache, rotary_dim)
        attention_ref.write_kv(k, v, k_cache, v_cache, slots)

    return (lambda: rotary_kv.rotary_and_write_kv(positions, q, k, v, k_cache, v_cache, slots, cache, rotary_dim),
            torch_fn, moved)


def silu_and_mul_case(num_tokens: int) -> Case:
    x = torch.randn(num_tokens, 2 * INTER, device="cuda", dtype=DTYPE)
    moved = 3 * num_tokens * INTER * x.element_size()
    return lambda: activation.silu_and_mul(x), lambda: activation._torch_impl(x), moved


CASES = {"write_kv": write_kv_case, "rms_norm": rms_norm_case, "rotary": rotary_case,
         "rotary_kv": rotary_kv_case, "silu_and_mul": silu_and_mul_case}


def measure(kernel: str, num_tokens: int) -> list[dict]:
    """One record per implementation (triton, torch) of `kernel` at `num_tokens`."""
    triton_fn, torch_fn, moved = CASES[kernel](num_tokens)
    records = []
    for impl, fn in (("triton", triton_fn), ("torch", torch_fn)):
        fn()  # compile outside the timed region
        median_ms = triton.testing.do_bench(fn, return_mode="median")
        graph_ms = triton.testing.do_bench_cudagraph(fn, return_mode="median")
        records.append({"what": "kernel_elementwise", "kernel": kernel, "impl": impl,
                        "num_tokens": num_tokens, "dtype": str(DTYPE).removeprefix("torch."), "bytes": moved,
                        "median_us": round(median_ms * 1e3, 2), "graph_median_us": round(graph_ms * 1e3, 2),
                        "GBps": round(moved / (median_ms * 1e-3) / 1e9, 1)})
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 64, 512, 8192], help="token counts T")
    parser.add_argument("--kernels", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--out", type=Path, help="write the records here as a JSON list")
    args = parser.parse_args(argv)
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    torch.manual_seed(0)
    records = []
    print(f"{'kernel':<13}{'T':>6}{'impl':>8}{'median us':>11}{'graph us':>10}{'GB/s':>9}{'speedup':>9}")
    for kernel in args.kernels:
        for num_tokens in args.tokens:
            fast, ref = measure(kernel, num_tokens)
            fast["speedup"] = round(ref["median_us"] / fast["median_us"], 2)
            for r in (fast, ref):
                print(f"{kernel:<13}{num_tokens:>6}{r['impl']:>8}{r['median_us']:>11.2f}"
                      f"{r['graph_median_us']:>10.2f}{r['GBps']:>9.1f}{r.get('speedup', ''):>9}")
            records += [fast, ref]
    if args.out:
        args.out.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
