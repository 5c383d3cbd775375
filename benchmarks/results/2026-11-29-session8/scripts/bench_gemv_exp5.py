"""Why is the served pipelined GEMV slower than the scratch one in the graph?"""
from __future__ import annotations

import json
import sys
from unittest import mock

import torch

import kernels.gemv_triton as gt
from scratch.bench_gemv_exp import ORIG, make
from scratch.bench_gemv_exp2 import dispatch

OLD = {"qkv": (4, 1024, 4, 1), "o": (8, 512, 8, 1), "gate_up": (4, 1024, 4, 1), "lm_head": (4, 1024, 4, 1)}
NEW = {"qkv": (2, 2048, 4, 2), "o": (2, 2048, 4, 2), "gate_up": (2, 2048, 4, 2), "lm_head": (2, 2048, 4, 2)}
NEW16 = {**NEW, "lm_head": (16, 256, 4, 4)}


def explicit(cfgs, contiguous=False):
    return {s: (lambda x, w, gated, c=c: ORIG(x.contiguous() if contiguous else x, w, None, gated, c)) for s, c in cfgs.items()}


def scratch(cfgs):
    return {s: make("piped", (c[0], c[1], c[3], c[2])) for s, c in cfgs.items()}


def trace(runner, label, out):
    from torch.profiler import ProfilerActivity, profile
    g = runner.graphs.graphs[1, 1]
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            g.replay()
        torch.cuda.synchronize()
    ev = [e for e in prof.events() if e.device_type.name == "CUDA"]
    ev.sort(key=lambda e: e.time_range.start)
    n = len(ev) // 3
    step = ev[n:2 * n]
    rows = [(e.name[:40], round(e.time_range.start - step[0].time_range.start, 2), round(e.time_range.elapsed_us(), 2)) for e in step]
    out[label] = rows
    print(label, "kernels/step", n)
    for r in rows[:16] + rows[-4:]:
        print("   ", r)


def main():
    model, outp = sys.argv[1], sys.argv[2]
    from benchmarks.ablate_decode import graph_ms
    from services.worker.config import WorkerConfig
    from services.worker.model_runner import ModelRunner
    runner = ModelRunner(WorkerConfig(model=model, load_format="dummy", dtype="bfloat16", max_model_len=4096,
                                      gpu_memory_utilization=0.85, max_graph_batch_size=1, max_graph_prefill_tokens=0))
    res = {"ms": [], "trace": {}}
    variants = [("served", {}), ("old explicit", explicit(OLD)), ("new explicit", explicit(NEW)),
                ("new explicit contiguous", explicit(NEW, True)), ("new scratch", scratch(NEW)),
                ("new16 explicit", explicit(NEW16)), ("new16 scratch", scratch(NEW16))]
    for label, choice in variants + variants[:3]:
        with mock.patch.object(gt, "gemv_triton", dispatch(choice)):
            ms = graph_ms(runner, 384)
            if label in ("served", "new scratch") and label not in res["trace"]:
                trace(runner, label, res["trace"])
        print(f"graph {label}: {ms:.3f}", flush=True)
        res["ms"].append((label, ms))
    json.dump(res, open(outp, "w"), indent=1)


if __name__ == "__main__":
    main()
