"""Where a decode step's GPU time goes: graph replay time, per-kernel times, and each projection's GEMV.

`python -m benchmarks.profile_decode MODEL_DIR [--batch 1 64] [--context 384] [--out FILE]` builds the
worker's `ModelRunner` on a Hugging Face-format directory (random weights, `--load-format dummy`),
then for each batch size B:

- replays the decode CUDA graph of bucket B with every sequence `--context` tokens long and reports
  the median step time (CUDA events around 100 replays) next to the weights roofline (weights bytes
  read per step / the measured device-to-device copy bandwidth);
- profiles 20 replays with `torch.profiler` and lists every kernel's mean time per step and share.
  With programmatic dependent launch (`kernels/runtime/pdl.py`, on by default on sm_90) a kernel starts
  before the one ahead of it ends and waits inside, so its time includes that wait and the sum
  exceeds the step; compare kernels with `SLUICE_PDL=0`, steps with the replay time.

It also times `F.linear` at M = B for each projection shape of the model (median of
`triton.testing.do_bench`, L2 flushed) as achieved GB/s of the weight bytes.

`--step D:C:P:L` (repeatable) profiles one eager step as serving runs prefill and mixed steps: D
decode rows at C tokens of context plus P prompts of L new tokens each (`0:0:8:1024` is a pure
8k-token prefill; `512:1024:7:1024` a chunked-prefill step beside 512 decodes). It reports the
step's median time, the linear layers' TFLOP/s over it (2 x tokens x linear parameters), the
per-kernel table, and the host's side: the time to issue the step (an eager step whose issue time
exceeds its kernel time leaves the GPU idle) and the Python functions with the most self time.

Prints tables; `--out` writes JSON (`what: "profile_decode"`). Needs a CUDA GPU; about a minute
for an 8B model.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
import triton.testing

from services.common.sampling import SamplingParams
from services.worker.config import WorkerConfig
from services.worker.input_batch import HostInputs, InputBatch, RequestState
from services.worker.layers.linear import Linear
from services.worker.model_runner import ModelRunner


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB: bytes read + written per second."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=5, rep=50)
    return 2 * src.numel() / (ms / 1e3)


def decode_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step reads: every parameter except the input embedding (one row per token)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embed = model.model.embed_tokens.weight
    tied = getattr(model.lm_head, "weight", None) is embed
    return total if tied else total - embed.numel() * embed.element_size()


def fill_graph_inputs(runner: ModelRunner, batch: int, context: int) -> None:
    """Load bucket `batch`'s graph with `batch` sequences of `context` tokens on distinct blocks
    (one replay through `StepGraphs.run`; later replays reuse the inputs)."""
    inputs, _ = step_inputs(runner, f"{batch}:{context}:0:0")
    with torch.inference_mode():
        runner.graphs.run(inputs)


def kernel_table(step, steps: int = 20) -> list[dict]:
    """Per kernel name: calls per step and mean microseconds per step of `step()`, biggest first."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA and event.device_time_total > 0:
            entry = totals[event.name[:90]]
            entry[0] += 1
            entry[1] += event.device_time_total
    rows = [{"kernel": name, "calls_per_step": calls / steps, "us_per_step": us / steps}
            for name, (calls, us) in totals.items()]
    return sorted(rows, key=lambda r: -r["us_per_step"])


def time_calls(step, steps: int = 20, warmups: int = 3) -> float:
    """Median milliseconds of `step()` (each call timed by its own events, after the warm-ups)."""
    for _ in range(warmups):
        step()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(end) for start, end in events)
    return times[len(times) // 2]


def host_profile(step, calls: int = 5) -> tuple[float, list[dict]]:
    """(host milliseconds to issue one `step()`, the Python functions with the most self time per
    call): what an eager step costs the CPU while the GPU runs it."""
    import cProfile
    import pstats
    import time

    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(calls):
        step()
    issue_ms = (time.perf_counter() - started) / calls * 1e3
    torch.cuda.synchronize()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        step()
    profiler.disable()
    torch.cuda.synchronize()
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, primitive, self s, cumulative s, ...)
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:25]
    return issue_ms, [{"function": f"{Path(key[0]).name}:{key[1]}:{key[2]}", "calls": value[1] // calls,
                       "self_ms": value[2] / calls * 1e3} for key, value in rows]


def step_inputs(runner: ModelRunner, spec: str) -> tuple[HostInputs, int]:
    """(the host inputs of a step of `spec` = "D:C:P:L", its token count): D decode rows at C
    tokens of context, P prompts of L tokens; every sequence on its own blocks."""
    decodes, context, prompts, length = (int(x) for x in spec.split(":"))
    bs = runner.config.block_size
    greedy = SamplingParams(temperature=0.0)
    scheduled, next_block = [], 0
    for i, (n, new) in enumerate([(context, 1)] * decodes + [(length, length)] * prompts):
        blocks = -(-n // bs)
        assert next_block + blocks <= runner.num_blocks, f"KV cache too small for step {spec}"
        state = RequestState(f"p{i}", [i % 100] * n, [], greedy, list(range(next_block, next_block + blocks)),
                             n - new)
        scheduled.append((state, new))
        next_block += blocks
    num_tokens = decodes + prompts * length
    batch = InputBatch(bs, runner.num_blocks, runner.max_model_len, num_tokens, runner.model_config.vocab_size)
    return batch.build(scheduled), num_tokens


def eager_step(runner: ModelRunner, spec: str):
    """(a callable running one eager step of `spec` = "D:C:P:L", its token count)."""
    inputs, num_tokens = step_inputs(runner, spec)
    device_inputs = inputs.to_device(runner.device)
    model = runner.model

    def step():
        with torch.inference_mode():
            hidden = model(device_inputs.input_ids, device_inputs.positions, device_inputs.metadata)
            model.compute_logits(hidden[device_inputs.logits_indices])
    return step, num_tokens


def linear_params(model: torch.nn.Module) -> int:
    """Parameters of the decoder layers' linear projections (what a token's matmuls multiply by)."""
    return sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, Linear))


def print_table(table: list[dict], step_ms: float, limit: int = 40) -> None:
    for r in table[:limit]:
        print(f"  {r['us_per_step']:9.1f} us {r['us_per_step'] / 1e3 / step_ms:6.1%} "
              f"x{r['calls_per_step']:<5.0f} {r['kernel']}")


def projection_shapes(runner: ModelRunner) -> dict[str, tuple[int, int]]:
    layer = runner.model.model.layers[0]
    shapes = {name: tuple(module.weight.shape) for name, module in (
        ("qkv_proj", layer.self_attn.qkv_proj), ("o_proj", layer.self_attn.o_proj),
        ("gate_up_proj", layer.mlp.gate_up_proj), ("down_proj", layer.mlp.down_proj))}
    shapes["lm_head"] = tuple(runner.model.lm_head.weight.shape)
    return shapes


def gemv_rows(shapes: dict[str, tuple[int, int]], batch: int, dtype: torch.dtype, bandwidth: float) -> list[dict]:
    rows = []
    for name, (n, k) in shapes.items():
        weight = torch.randn(n, k, device="cuda", dtype=dtype)
        x = torch.randn(batch, k, device="cuda", dtype=dtype)
        ms = triton.testing.do_bench(lambda: F.linear(x, weight), warmup=10, rep=100)  # noqa: B023
        gbps = weight.numel() * weight.element_size() / (ms / 1e3) / 1e9
        rows.append({"projection": name, "n": n, "k": k, "batch": batch, "us": ms * 1e3, "gb_s": gbps,
                     "bw_fraction": gbps * 1e9 / bandwidth})
    return rows


def _step_tokens(spec: str) -> int:
    decodes, _, prompts, length = (int(x) for x in spec.split(":"))
    return decodes + prompts * length


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--context", type=int, default=384)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument("--step", action="append", default=[], metavar="D:C:P:L",
                        help="also profile an eager step: D decodes at C context + P prompts of L tokens")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    runner = ModelRunner(WorkerConfig(
        model=args.model, load_format="dummy", dtype="bfloat16", max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization, max_graph_batch_size=max(args.batch),
        max_num_batched_tokens=max(8192, max(args.batch), *(_step_tokens(spec) for spec in args.step))))
    bandwidth = copy_bandwidth()
    weight_bytes = decode_weight_bytes(runner.model)
    floor_ms = weight_bytes / bandwidth * 1e3
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; decode reads {weight_bytes / 1e9:.2f} GB of weights "
          f"-> {floor_ms:.3f} ms floor, {1e3 / floor_ms:.0f} steps/s")
    result = {"what": "profile_decode", "model": args.model, "context": args.context,
              "copy_bandwidth": bandwidth, "weight_bytes": weight_bytes, "graphs": [], "gemv": []}
    for batch in args.batch:
        bucket = runner.graphs.bucket_for(batch)
        fill_graph_inputs(runner, bucket, args.context)
        graph = runner.graphs.graphs[bucket, 1]
        step_ms = time_calls(graph.replay, steps=100, warmups=5)
        table = kernel_table(graph.replay)
        kernel_us = sum(r["us_per_step"] for r in table)
        print(f"\nbatch {bucket}: graph replay {step_ms:.3f} ms/step ({1e3 / step_ms:.1f} steps/s, "
              f"{floor_ms / step_ms:.1%} of the weights roofline); kernels sum {kernel_us / 1e3:.3f} ms, "
              f"{sum(r['calls_per_step'] for r in table):.0f} launches")
        if kernel_us > 1.02e3 * step_ms:
            print("  (kernels overlap under programmatic dependent launch: their times include waits)")
        print_table(table, step_ms, limit=len(table))
        result["graphs"].append({"batch": bucket, "step_ms": step_ms, "kernel_sum_ms": kernel_us / 1e3,
                                 "roofline_fraction": floor_ms / step_ms, "kernels": table})
        gemv = gemv_rows(projection_shapes(runner), bucket, runner.dtype, bandwidth)
        for r in gemv:
            print(f"  F.linear M={bucket} {r['projection']:13s} [{r['n']}x{r['k']}] {r['us']:8.1f} us "
                  f"{r['gb_s']:7.0f} GB/s ({r['bw_fraction']:.1%})")
        result["gemv"] += gemv
    params = linear_params(runner.model)
    result["steps"] = []
    for spec in args.step:
        step, num_tokens = eager_step(runner, spec)
        step_ms = time_calls(step)
        table = kernel_table(step, steps=5)
        tflops = 2 * num_tokens * params / (step_ms / 1e3) / 1e12
        print(f"\neager step {spec} ({num_tokens} tokens): {step_ms:.2f} ms, {num_tokens / step_ms * 1e3:,.0f} "
              f"tokens/s; linear layers {tflops:.0f} TFLOP/s over the whole step")
        print_table(table, step_ms, limit=25)
        host_ms, host_top = host_profile(step)
        print(f"  host: {host_ms:.2f} ms to issue the step (the GPU idles when this exceeds the kernel sum)")
        for row in host_top[:15]:
            print(f"    {row['self_ms']:7.3f} ms self {row['calls']:6d} calls  {row['function']}")
        result["steps"].append({"spec": spec, "tokens": num_tokens, "step_ms": step_ms,
                                "linear_tflops_over_step": tflops, "kernels": table,
                                "host_ms": host_ms, "host_functions": host_top})
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
