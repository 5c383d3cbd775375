"""Sweep experimental GEMV variants; chain them as decoder layers; time the real batch-1 graph with them.
    python -m scratch.bench_gemv_exp MODEL OUT_JSON
"""
from __future__ import annotations

import json
import sys
import time
from unittest import mock

import torch

from benchmarks.kernels import graph_time_ms
from benchmarks.kernels_gemv import SHAPES, weight_copies, time_us
from kernels import activation
import kernels.gemv_triton as gt
from scratch import gemv_exp as ge

SMS = torch.cuda.get_device_properties(0).multi_processor_count
ORIG = gt.gemv_triton

PIPED = [(4, 1024, 2, 4), (4, 1024, 3, 4), (8, 512, 3, 8), (8, 512, 4, 8), (8, 512, 3, 4), (16, 256, 4, 4),
         (16, 256, 6, 4), (16, 512, 3, 8), (32, 256, 4, 8)]
PERSIST = [(8, 512, 4, 8, 1), (8, 512, 4, 8, 2), (4, 1024, 3, 4, 2), (4, 512, 6, 4, 2), (16, 256, 6, 4, 1),
           (16, 256, 4, 4, 2), (8, 256, 8, 4, 2), (16, 512, 4, 8, 1), (8, 512, 3, 4, 3)]
DOT = [(16, 256, 4, 4), (16, 512, 3, 4), (32, 256, 4, 4), (32, 512, 3, 4), (64, 256, 3, 4)]


def make(family, cfg):
    if family == "cur":
        return lambda x, w, gated: ORIG(x, w, None, gated)
    if family == "piped":
        return lambda x, w, gated: ge.gemv_piped(x, w, gated, *cfg)
    if family == "persist":
        bn, bk, s, wp, mult = cfg
        return lambda x, w, gated: ge.gemv_persistent(x, w, gated, bn, bk, s, wp, SMS * mult)
    return lambda x, w, gated: ge.gemv_dot(x, w, gated, *cfg)


def sweep():
    best = {}
    rows = []
    for name, (n, k, gated) in SHAPES.items():
        weights = weight_copies(n, k)
        x = torch.randn(1, 2 * k if gated else k, device="cuda", dtype=torch.bfloat16)
        want = torch.nn.functional.linear(activation.silu_and_mul(x) if gated else x, weights[0])
        cands = [("cur", None)] + [("piped", c) for c in PIPED] + [("persist", c) for c in PERSIST] + [("dot", c) for c in DOT]
        for family, cfg in cands:
            fn = make(family, cfg)
            try:
                torch.testing.assert_close(fn(x, weights[0], gated), want, atol=2e-2, rtol=2e-2)
                us = time_us(lambda w: fn(x, w, gated), weights)
            except Exception as e:  # noqa: BLE001
                print(f"  {name} {family} {cfg}: {type(e).__name__} {str(e)[:100]}", flush=True)
                continue
            rows.append({"shape": name, "family": family, "cfg": cfg, "us": us, "tb_s": n * k * 2 / us / 1e6})
            print(f"  {name:8s} {family:8s} {str(cfg):22s} {us:8.2f} us {n * k * 2 / us / 1e6:.2f} TB/s", flush=True)
            key = (name, family)
            if key not in best or us < best[key][1]:
                best[key] = (cfg, us)
        del weights
        torch.cuda.empty_cache()
    return rows, best


def chain(choice: dict, layers=8):
    ws = []
    for _ in range(layers):
        ws.append({name: torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
                   for name, (n, k, g) in SHAPES.items() if name != "lm_head"})
    h = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)

    def layer(w):
        qkv = choice["qkv"](h, w["qkv"], False)
        o = choice["o"](qkv[:, :4096], w["o"], False)
        gu = choice["gate_up"](o, w["gate_up"], False)
        return choice["down"](gu, w["down"], True)
    return graph_time_ms([lambda w=w: layer(w) for w in ws], target_ms=5.0) * 1e3


def dispatch(choice):
    def fn(x, weight, bias, gated, config=None):
        n, k = weight.shape
        key = {(6144, 4096): "qkv", (4096, 4096): "o", (28672, 4096): "gate_up", (4096, 14336): "down",
               (128256, 4096): "lm_head"}.get((n, k))
        if bias is not None or x.shape[0] != 1 or key is None or config is not None:
            return ORIG(x, weight, bias, gated, config)
        return choice[key](x.contiguous(), weight, gated)
    return fn


def main():
    model, out = sys.argv[1], sys.argv[2]
    t0 = time.time()
    rows, best = sweep()
    print(f"sweep {time.time() - t0:.0f} s", flush=True)
    choices = {}
    for family in ("cur", "piped", "persist", "dot"):
        choices[family] = {s: make(family, best[(s, family)][0]) for s in SHAPES if (s, family) in best}
    anyb = {}
    for s in SHAPES:
        fam = min((f for f in ("cur", "piped", "persist", "dot") if (s, f) in best), key=lambda f: best[(s, f)][1])
        anyb[s] = (fam, best[(s, fam)][0])
    choices["any"] = {s: make(*anyb[s]) for s in SHAPES}
    result = {"rows": rows, "best": {f"{s}/{f}": v for (s, f), v in best.items()},
              "any": anyb, "chain_us": {}, "graph_ms": []}
    for family in ("cur", "piped", "persist", "dot", "any", "cur"):
        if len(choices[family]) == len(SHAPES):
            result["chain_us"].setdefault(family, []).append(chain(choices[family]))
            print(f"chain {family}: {result['chain_us'][family][-1]:.1f} us/layer", flush=True)
    json.dump(result, open(out, "w"), indent=1, default=str)
    from benchmarks.ablate_decode import graph_ms
    from services.worker.config import WorkerConfig
    from services.worker.model_runner import ModelRunner
    runner = ModelRunner(WorkerConfig(model=model, load_format="dummy", dtype="bfloat16", max_model_len=4096,
                                      gpu_memory_utilization=0.85, max_graph_batch_size=1, max_graph_prefill_tokens=0))
    for family in ("cur", "any", "persist", "piped", "cur", "any", "dot"):
        if len(choices[family]) != len(SHAPES):
            continue
        with mock.patch.object(gt, "gemv_triton", ORIG if family == "cur" else dispatch(choices[family])):
            ms = graph_ms(runner, 384)
        result["graph_ms"].append((family, ms))
        print(f"graph {family}: {ms:.3f} ms/step", flush=True)
        json.dump(result, open(out, "w"), indent=1, default=str)


if __name__ == "__main__":
    main()
