"""Attention kernel microbenchmarks on one CUDA GPU (Llama-3-8B heads: 32 q, 8 kv, D=128, bf16).

    python -m benchmarks.kernels --out results.json

- copy bandwidth: a 2 GiB device-to-device copy, bytes read + written: the decode ceiling.
- decode: batch 1/16/64/256 x context 1k/4k/16k over a paged cache (block 16, shuffled blocks).
  Bytes = K + V of every context token + q + out + block tables. `graph` times CUDA-graph replays of
  calls that rotate over enough distinct block sets to exceed 4x L2 (the serving path is captured);
  `eager` is `triton.testing.do_bench` (median, L2 flushed, includes Python launch gaps).
  Then sweeps of num_splits and (BLOCK_N, num_warps, num_stages) at batch 64 x 4k.
- extend: 1k/4k/8k new tokens in one sequence, without a prefix and after a cached prefix of the
  same length; FLOPs = 4*D*Hq*(q*prefix + q*q/2); vs torch SDPA (flash) on the same shapes, with
  the output compared. Then a sweep of (BLOCK_M, BLOCK_N, num_warps, num_stages) at 8k.
- the torch reference at small sizes, for scale.

Prints tables and writes every number to `--out` (JSON). Runs in about a minute on an H200.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics

import torch
import triton
import triton.testing

from kernels.attention import reference as attention_ref
from kernels.attention.decode import _CONFIGS as DECODE_CONFIGS
from kernels.attention.decode import choose_num_splits, decode_attention_fwd
from kernels.attention.extend import _CONFIGS as EXTEND_CONFIGS
from kernels.attention.extend import extend_attention_fwd

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
DTYPE = torch.bfloat16
SCALE = HEAD_DIM ** -0.5
L2_BYTES = 60 * 2 ** 20
DEVICE = "cuda"


def graph_time_ms(calls: list, target_ms: float = 10.0) -> float:
    """Median per-call time of CUDA-graph replays of `calls` in rotation (warmed up outside)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for call in calls:
        call()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / len(calls), 1e-3)
    num_calls = max(len(calls), min(4000, int(target_ms / estimate)))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(num_calls):
            calls[i % len(calls)]()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(7):
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / num_calls)
    return statistics.median(times)


def eager_time_ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def copy_bandwidth() -> float:
    """Bytes read + written per second of a 2 GiB device-to-device copy."""
    src = torch.randn(2 ** 30, dtype=torch.bfloat16, device=DEVICE)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=10, rep=100, return_mode="median")
    return 2 * 2 ** 31 / (ms * 1e-3)


class DecodeBench:
    """One paged cache big enough for batch 256 x 16k; each case draws shuffled block sets from it."""

    def __init__(self, max_tokens: int):
        num_blocks = max_tokens // BLOCK_SIZE
        shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
        self.k_cache = torch.randn(shape, dtype=DTYPE, device=DEVICE)
        self.v_cache = torch.randn(shape, dtype=DTYPE, device=DEVICE)
        self.perm = torch.randperm(num_blocks, device=DEVICE).to(torch.int32)
        self.num_sms = torch.cuda.get_device_properties(0).multi_processor_count

    def case(self, batch: int, context: int, num_splits: int | None = None, config=None, eager=False) -> dict:
        blocks_per_seq = context // BLOCK_SIZE
        bytes_per_call = (batch * context * NUM_KV_HEADS * HEAD_DIM * 2 * DTYPE.itemsize
                          + 2 * batch * NUM_HEADS * HEAD_DIM * DTYPE.itemsize + batch * blocks_per_seq * 4)
        num_sets = min(self.perm.numel() // (batch * blocks_per_seq),
                       max(1, math.ceil(4 * L2_BYTES / bytes_per_call)))
        sets = self.perm[: num_sets * batch * blocks_per_seq].view(num_sets, batch, blocks_per_seq)
        seq_lens = torch.full((batch,), context, dtype=torch.int32, device=DEVICE)
        query = torch.randn(batch, NUM_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
        out = torch.empty_like(query)
        splits = num_splits or choose_num_splits(batch, NUM_KV_HEADS, context, self.num_sms)

        def call(tables):
            return lambda: decode_attention_fwd(query, self.k_cache, self.v_cache, tables, seq_lens, SCALE,
                                                splits, out, config=config)

        calls = [call(sets[i]) for i in range(num_sets)]
        ms = graph_time_ms(calls)
        row = {"batch": batch, "context": context, "num_splits": splits,
                   "config": list(config or DECODE_CONFIGS[(HEAD_DIM, False)]), "graph_us": ms * 1e3,
                   "gb_per_s": bytes_per_call / (ms * 1e-3) / 1e9, "rotation_sets": num_sets}
        if eager:
            row["eager_us"] = eager_time_ms(calls[0]) * 1e3
        return row

    def check(self) -> float:
        """Relative error vs the torch reference at batch 16 x 1k (ragged lengths)."""
        tables = self.perm[: 16 * 64].view(16, 64)
        seq_lens = torch.randint(1, 1025, (16,), dtype=torch.int32, device=DEVICE)
        query = torch.randn(16, NUM_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
        out = torch.empty_like(query)
        decode_attention_fwd(query, self.k_cache, self.v_cache, tables, seq_lens, SCALE, 4, out)
        ref = attention_ref.paged_attention(query, self.k_cache, self.v_cache,
                                            torch.arange(17, dtype=torch.int32, device=DEVICE), seq_lens,
                                            tables, SCALE)
        return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def extend_inputs(new_tokens: int, prefix: int):
    """One sequence: `prefix` cached tokens (paged, shuffled) then `new_tokens` new ones."""
    total = prefix + new_tokens
    num_blocks = triton.cdiv(total, BLOCK_SIZE)
    k_all = torch.randn(total, NUM_KV_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    v_all = torch.randn_like(k_all)
    table = torch.randperm(num_blocks, device=DEVICE).to(torch.int32)
    k_cache = torch.empty(num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    v_cache = torch.empty_like(k_cache)
    positions = torch.arange(total, device=DEVICE)
    slots = table.long()[positions // BLOCK_SIZE] * BLOCK_SIZE + positions % BLOCK_SIZE
    attention_ref.write_kv(k_all, v_all, k_cache, v_cache, slots)
    query = torch.randn(new_tokens, NUM_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    return {"query": query, "key": k_all[prefix:], "value": v_all[prefix:],
            "k_cache": k_cache, "v_cache": v_cache,
                "query_start_loc": torch.tensor([0, new_tokens], dtype=torch.int32, device=DEVICE),
                "seq_lens": torch.tensor([total], dtype=torch.int32, device=DEVICE),
                "block_tables": table[None], "k_all": k_all, "v_all": v_all}


def sdpa_fn(inputs: dict, prefix: int):
    """torch SDPA (flash when it accepts the shape) on dense [1, H, S, D] copies of the same data."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right

    group = NUM_HEADS // NUM_KV_HEADS
    q = inputs["query"].transpose(0, 1)[None]  # [1, Hq, Sq, D]
    k = inputs["k_all"].repeat_interleave(group, dim=1).transpose(0, 1)[None]  # [1, Hq, Skv, D]
    v = inputs["v_all"].repeat_interleave(group, dim=1).transpose(0, 1)[None]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    mask = causal_lower_right(q.shape[2], k.shape[2]) if prefix else None
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def run():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            if mask is None:
                return sdpa(q, k, v, is_causal=True, scale=SCALE)
            return sdpa(q, k, v, attn_mask=mask, scale=SCALE)

    return run


def extend_case(new_tokens: int, prefix: int, config=None, with_sdpa=True) -> dict:
    inputs = extend_inputs(new_tokens, prefix)
    out = torch.empty_like(inputs["query"])
    args = [inputs[name] for name in ("query", "key", "value", "k_cache", "v_cache", "query_start_loc",
                                      "seq_lens", "block_tables")]

    def run():
        return extend_attention_fwd(*args, SCALE, out, new_tokens, config)

    flops = 4 * HEAD_DIM * NUM_HEADS * (new_tokens * prefix + new_tokens * new_tokens / 2)
    ms = eager_time_ms(run)
    row = {"new_tokens": new_tokens, "prefix": prefix,
           "config": list(config or EXTEND_CONFIGS[(HEAD_DIM, False)]),
               "us": ms * 1e3, "tflops": flops / (ms * 1e-3) / 1e12}
    if with_sdpa:
        try:
            sdpa = sdpa_fn(inputs, prefix)
            expected = sdpa()[0].transpose(0, 1)  # [Sq, Hq, D]
            sdpa_ms = eager_time_ms(sdpa)
            row.update(sdpa_us=sdpa_ms * 1e3, sdpa_tflops=flops / (sdpa_ms * 1e-3) / 1e12,
                       rel_error_vs_sdpa=((run().double() - expected.double()).norm()
                                          / expected.double().norm()).item())
        except RuntimeError as error:  # no flash kernel for this shape or mask in this torch
            row["sdpa_error"] = str(error).splitlines()[0][:120]
    return row


def reference_rows() -> list[dict]:
    """The pure-torch reference at small sizes: decode 16 x 1k, extend 1k (no prefix)."""
    rows = []
    bench = DecodeBench(16 * 1024)
    tables = bench.perm[: 16 * 64].view(16, 64)
    seq_lens = torch.full((16,), 1024, dtype=torch.int32, device=DEVICE)
    query = torch.randn(16, NUM_HEADS, HEAD_DIM, dtype=DTYPE, device=DEVICE)
    qsl = torch.arange(17, dtype=torch.int32, device=DEVICE)
    ms = eager_time_ms(lambda: attention_ref.paged_attention(query, bench.k_cache, bench.v_cache, qsl,
                                                             seq_lens, tables, SCALE))
    rows.append({"kind": "decode", "batch": 16, "context": 1024, "us": ms * 1e3})
    inputs = extend_inputs(1024, 0)
    ms = eager_time_ms(lambda: attention_ref.paged_attention(inputs["query"], inputs["k_cache"],
                                                             inputs["v_cache"],
                                                             inputs["query_start_loc"], inputs["seq_lens"],
                                                             inputs["block_tables"], SCALE))
    rows.append({"kind": "extend", "new_tokens": 1024, "prefix": 0, "us": ms * 1e3})
    return rows


def safely(case, *args, **kwargs) -> dict:
    """One benchmark case; a failure (e.g. a config out of shared memory) becomes a row, not an exit."""
    try:
        return case(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 (reported in the table and the JSON)
        torch.cuda.synchronize()
        return {"args": repr(args), "kwargs": repr(kwargs), "error": f"{type(error).__name__}: {error}"[:200]}


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"\n{title}")
    print("  ".join(f"{c:>14}" for c in columns))
    for row in rows:
        if "error" in row:
            print(f"  {row['args']} {row['kwargs']}: {row['error']}")
            continue
        cells = []
        for c in columns:
            value = row.get(c, "")
            if isinstance(value, float):
                cells.append(f"{value:>14.2e}" if abs(value) < 0.1 else f"{value:>14.1f}")
            else:
                cells.append(f"{str(value).replace(' ', ''):>14}")
        print("  ".join(cells))


def decode_section(bandwidth: float, sweep: bool) -> dict:
    bench = DecodeBench(256 * 16384)
    check = safely(lambda: {"rel_error_vs_reference": bench.check()})
    decode = [safely(bench.case, b, c, eager=True) for b in (1, 16, 64, 256) for c in (1024, 4096, 16384)]
    sweeps = []
    if sweep:
        sweeps += [safely(bench.case, 64, 4096, num_splits=s) for s in (1, 2, 4, 8, 16)]
        sweeps += [safely(bench.case, 64, 4096, config=cfg) for cfg in
                   ((32, 4, 2), (32, 4, 3), (64, 4, 3), (64, 8, 2), (128, 4, 2), (128, 8, 2), (64, 2, 2))]
    for row in decode + sweeps:
        if "gb_per_s" in row:
            row["pct_of_copy"] = 100 * row["gb_per_s"] * 1e9 / bandwidth
    print(f"decode check vs reference (batch 16, ragged <= 1k): {check}")
    columns = ["batch", "context", "num_splits", "config", "graph_us", "eager_us", "gb_per_s", "pct_of_copy"]
    print_table("decode (bf16, 32/8 heads, D=128, block 16)", decode, columns)
    if sweeps:
        print_table("decode sweep at batch 64 x 4k", sweeps, columns)
    return {"decode_check": check, "decode": decode, "decode_sweep": sweeps}


def extend_section(sweep: bool) -> dict:
    extend = [safely(extend_case, n, p) for n in (1024, 4096, 8192) for p in (0, n)]
    extend_sweep = []
    if sweep:
        extend_sweep = [safely(extend_case, 8192, 0, cfg, with_sdpa=False) for cfg in
                        ((128, 128, 8, 3), (128, 64, 8, 4), (128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 3),
                         (128, 64, 4, 3), (128, 128, 8, 2))]
    columns = ["new_tokens", "prefix", "config", "us", "tflops", "sdpa_us", "sdpa_tflops",
               "rel_error_vs_sdpa"]
    print_table("extend (causal, bf16, 32/8 heads, D=128)", extend, columns)
    if extend_sweep:
        print_table("extend sweep at 8k, no prefix", extend_sweep, columns[:5])
    for row in extend:
        if "sdpa_error" in row:
            print(f"  sdpa {row['new_tokens']}/{row['prefix']}: {row['sdpa_error']}")
    return {"extend": extend, "extend_sweep": extend_sweep}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="kernel_bench.json")
    parser.add_argument("--quick", action="store_true", help="skip the config sweeps")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    torch.manual_seed(0)
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "triton": triton.__version__}
    bandwidth = copy_bandwidth()
    result["copy_bandwidth_gb_per_s"] = bandwidth / 1e9
    print(f"{result['device']}  torch {torch.__version__}  triton {triton.__version__}  "
          f"copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write)")

    result.update(decode_section(bandwidth, sweep=not args.quick))
    torch.cuda.empty_cache()
    result.update(extend_section(sweep=not args.quick))
    result["reference"] = reference_rows()
    print_table("torch reference", result["reference"], ["kind", "batch", "context", "new_tokens", "us"])
    print("\nsummary (targets: decode >= 80% of copy at 64 x 4k; extend >= 350 TFLOP/s at 8k, no prefix)")
    for row in result["decode"]:
        if row.get("batch") == 64 and row.get("context") == 4096:
            print(f"  decode 64 x 4k: {row['graph_us']:.1f} us, {row['gb_per_s']:.0f} GB/s, "
                  f"{row['pct_of_copy']:.1f}% of copy, splits {row['num_splits']}")
    for row in result["extend"]:
        if row.get("new_tokens") == 8192:
            print(f"  extend 8k prefix {row['prefix']}: {row['tflops']:.0f} TFLOP/s "
                  f"(sdpa {row.get('sdpa_tflops', float('nan')):.0f})")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
