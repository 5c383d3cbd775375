"""Where a served decode step's time goes beyond the CUDA graph: the GPU timeline of real serving.

`python -m benchmarks.profile_serving MODEL_DIR [--batch 1] [--steps 64] [--trace FILE] [--out FILE]`
runs the in-process engine (the scheduler engine driving the worker's ModelRunner through the same
step executor as the worker service, no gRPC) on `--batch` greedy requests of 128 prompt tokens,
and records `--steps` decode steps with `torch.profiler` (CPU and CUDA activity). It reports:

- wall time per step (first to last GPU activity / steps);
- GPU busy time per step (the union of all kernel and memcpy intervals) and the idle rest;
- the idle gaps on the GPU longer than 5 µs: how many per step, their total, and the kernels on
  either side of the largest ones (what the GPU waited between);
- the CPU functions with the most self time over the window.

Needs a CUDA GPU. `--trace` also writes the Chrome trace (open in chrome://tracing or Perfetto).
"""
from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from pathlib import Path

import torch

GAP_US = 5.0


def gpu_intervals(prof) -> list[tuple[float, float, str]]:
    """(start µs, end µs, name) of every kernel and memcpy/memset on the GPU, by start time."""
    out = []
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA and event.time_range.elapsed_us() > 0:
            out.append((event.time_range.start, event.time_range.end, event.name))
    return sorted(out)


def timeline(intervals: list[tuple[float, float, str]], steps: int) -> dict:
    """Busy union, idle gaps and the kernels around the largest gaps."""
    if not intervals:
        raise ValueError("no GPU activity was recorded (this needs a CUDA GPU)")
    busy, gaps = 0.0, []
    cur_start, cur_end, prev_name = intervals[0][0], intervals[0][1], intervals[0][2]
    for start, end, name in intervals[1:]:
        if start > cur_end:
            busy += cur_end - cur_start
            if start - cur_end > GAP_US:
                gaps.append((start - cur_end, prev_name[:70], name[:70]))
            cur_start = start
        if end >= cur_end:
            cur_end, prev_name = end, name
    busy += cur_end - cur_start
    wall = intervals[-1][1] - intervals[0][0]
    gaps.sort(reverse=True)
    pairs = Counter((before, after) for _, before, after in gaps)
    return {
        "steps": steps, "wall_us_per_step": wall / steps, "gpu_busy_us_per_step": busy / steps,
        "gpu_idle_us_per_step": (wall - busy) / steps, "gaps_over_5us_per_step": len(gaps) / steps,
        "gap_us_per_step": sum(g for g, _, _ in gaps) / steps,
        "largest_gaps": [{"us": g, "after": b, "before": a} for g, b, a in gaps[:12]],
        "gap_neighbours": [{"after": b, "before": a, "count": n} for (b, a), n in pairs.most_common(8)],
    }


async def serve(args) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from services.common.gc_tuning import tune_gc
    from services.common.sampling import SamplingParams
    from services.scheduler.config import SchedulerConfig
    from services.scheduler.engine import SchedulerEngine
    from services.worker.config import WorkerConfig
    from services.worker.local_link import LocalWorkerLink

    link = LocalWorkerLink(WorkerConfig(model=args.model, load_format="dummy", dtype="bfloat16",
                                        max_model_len=2048, gpu_memory_utilization=0.85,
                                        max_graph_batch_size=max(8, args.batch)))
    engine = SchedulerEngine(SchedulerConfig(max_num_seqs=max(8, args.batch)), link)
    await engine.start()
    tune_gc()
    warm, total = 16, 16 + args.steps + 16  # decode steps before, inside and after the window

    async def one(i: int, state: dict) -> None:
        sampling = SamplingParams(temperature=0.0, max_tokens=total, min_tokens=total, ignore_eos=True)
        engine.add_request(f"r{i}", [(7 * i + j) % 1000 + 2 for j in range(128)], sampling)
        count = 0
        async for out in engine.stream(f"r{i}"):
            count += len(out.new_token_ids)
            if i == 0 and count == warm:
                state["prof"] = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                state["prof"].__enter__()
            if i == 0 and count == warm + args.steps:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                state["prof"].__exit__(None, None, None)

    state: dict = {}
    try:
        await asyncio.gather(*(one(i, state) for i in range(args.batch)))
    finally:
        await engine.stop()
        link.close()
    prof = state["prof"]
    if args.trace:
        prof.export_chrome_trace(str(args.trace))
    result = {"what": "profile_serving", "batch": args.batch, **timeline(gpu_intervals(prof), args.steps)}
    cpu = sorted((e for e in prof.key_averages() if e.self_cpu_time_total > 0),
                 key=lambda e: -e.self_cpu_time_total)[:15]
    result["cpu_self_us_per_step"] = [{"name": e.key[:80], "us": e.self_cpu_time_total / args.steps,
                                       "calls_per_step": e.count / args.steps} for e in cpu]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--trace", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = asyncio.run(serve(args))
    print(f"batch {result['batch']}: {result['wall_us_per_step']:.1f} us per step, GPU busy "
          f"{result['gpu_busy_us_per_step']:.1f}, idle {result['gpu_idle_us_per_step']:.1f} "
          f"({result['gaps_over_5us_per_step']:.1f} gaps > 5 us per step, {result['gap_us_per_step']:.1f} us)")
    for gap in result["largest_gaps"]:
        print(f"  gap {gap['us']:8.1f} us  after {gap['after']}  before {gap['before']}")
    for pair in result["gap_neighbours"]:
        print(f"  x{pair['count']:<4} after {pair['after']}  before {pair['before']}")
    print("CPU self time per step:")
    for row in result["cpu_self_us_per_step"]:
        print(f"  {row['us']:9.1f} us x{row['calls_per_step']:<6.1f} {row['name']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
