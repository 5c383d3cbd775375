"""Round 4: is the win the pipeliner or just the tile shape? Current kernel with the round-3 tiles."""
from __future__ import annotations

import json
import sys
from unittest import mock

import torch

from benchmarks.kernels_gemv import SHAPES
import kernels.gemv_triton as gt
from scratch.bench_gemv_exp import ORIG, make
from scratch.bench_gemv_exp2 import dispatch


def mk(family, cfg):
    if family == "curcfg":
        return lambda x, w, gated: ORIG(x, w, None, gated, cfg)
    return make(family, cfg)


R3 = {"qkv": ("piped", (2, 2048, 2, 4)), "o": ("piped", (2, 2048, 2, 4)), "gate_up": ("piped", (2, 2048, 2, 4)),
      "lm_head": ("piped", (16, 256, 4, 4))}
TRY = [("qkv", "curcfg", (2, 2048, 4)), ("o", "curcfg", (2, 2048, 4)), ("gate_up", "curcfg", (2, 2048, 4)),
       ("qkv", "curcfg", (4, 1024, 4)), ("o", "curcfg", (2, 4096, 4)), ("gate_up", "curcfg", (4, 1024, 4)),
       ("lm_head", "piped", (2, 2048, 2, 4)), ("lm_head", "curcfg", (2, 2048, 4)), ("lm_head", "piped", (4, 2048, 2, 4)),
       ("down", "curcfg", (2, 2048, 4)), ("down", "curcfg", (4, 2048, 8)), ("down", "piped", (2, 2048, 2, 4)),
       ("qkv", "piped", (2, 2048, 2, 2)), ("gate_up", "piped", (2, 2048, 3, 4)), ("gate_up", "piped", (1, 4096, 2, 4))]


def main():
    model, out = sys.argv[1], sys.argv[2]
    from benchmarks.ablate_decode import graph_ms
    from services.worker.config import WorkerConfig
    from services.worker.model_runner import ModelRunner
    runner = ModelRunner(WorkerConfig(model=model, load_format="dummy", dtype="bfloat16", max_model_len=4096,
                                      gpu_memory_utilization=0.85, max_graph_batch_size=1, max_graph_prefill_tokens=0))
    result = []

    def graph(choice, label):
        with mock.patch.object(gt, "gemv_triton", dispatch({s: mk(*fc) for s, fc in choice.items()})):
            ms = graph_ms(runner, 384)
        print(f"graph {label}: {ms:.3f} ms/step", flush=True)
        result.append((label, ms))
        return ms
    graph({}, "cur")
    graph(R3, "round3")
    for shape, family, cfg in TRY:
        n, k, gated = SHAPES[shape]
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
        x = torch.randn(1, 2 * k if gated else k, device="cuda", dtype=torch.bfloat16)
        try:
            torch.testing.assert_close(mk(family, cfg)(x, w, gated), ORIG(x, w, None, gated), atol=2e-2, rtol=2e-2)
        except Exception as e:  # noqa: BLE001
            print(shape, family, cfg, type(e).__name__, str(e)[:100], flush=True)
            continue
        del w, x
        graph({**R3, shape: (family, cfg)}, f"round3 with {shape} {family} {cfg}")
    graph({}, "cur")
    graph(R3, "round3")
    json.dump(result, open(out, "w"), indent=1, default=str)


if __name__ == "__main__":
    main()
