"""Round 3: graph-evaluated refinement around round 2's winners."""
from __future__ import annotations

import json
import sys
from unittest import mock

import torch

from benchmarks.kernels_gemv import SHAPES, weight_copies
from kernels import activation
import kernels.gemv_triton as gt
from scratch.bench_gemv_exp import make
from scratch.bench_gemv_exp2 import dispatch

C = {
    "qkv": [(4, 1024, 2, 4), (2, 2048, 2, 4), (4, 2048, 2, 4), (2, 1024, 2, 4), (4, 2048, 2, 8), (4, 1024, 3, 4),
            (2, 4096, 2, 4), (8, 1024, 2, 4)],
    "o": [(2, 2048, 2, 4), (2, 2048, 2, 2), (2, 2048, 2, 8), (1, 4096, 2, 4), (2, 4096, 2, 4), (4, 2048, 2, 4),
          (1, 2048, 2, 2), (2, 1024, 3, 4)],
    "gate_up": [(8, 512, 2, 4), (4, 2048, 2, 4), (2, 2048, 2, 4), (8, 512, 2, 2), (4, 512, 2, 4), (8, 1024, 2, 4),
                (4, 1024, 2, 2), (16, 256, 2, 4)],
    "lm_head": [(16, 256, 4, 4), (8, 1024, 2, 4), (4, 1024, 2, 4), (16, 512, 2, 8)],
}
BASE_BEST = {"qkv": (4, 1024, 2, 4), "o": (2, 2048, 2, 4), "gate_up": (8, 512, 2, 4), "lm_head": (16, 256, 4, 4)}


def main():
    model, out = sys.argv[1], sys.argv[2]
    result = {"single": [], "final": []}
    ok = {}
    for name, cands in C.items():
        n, k, gated = SHAPES[name]
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        want = torch.nn.functional.linear(x, w)
        ok[name] = []
        for cfg in cands:
            try:
                torch.testing.assert_close(make("piped", cfg)(x, w, False), want, atol=2e-2, rtol=2e-2)
                ok[name].append(cfg)
            except Exception as e:  # noqa: BLE001
                print(name, cfg, type(e).__name__, str(e)[:100], flush=True)
        del w
    from benchmarks.ablate_decode import graph_ms
    from services.worker.config import WorkerConfig
    from services.worker.model_runner import ModelRunner
    runner = ModelRunner(WorkerConfig(model=model, load_format="dummy", dtype="bfloat16", max_model_len=4096,
                                      gpu_memory_utilization=0.85, max_graph_batch_size=1, max_graph_prefill_tokens=0))

    def graph(choice, label):
        with mock.patch.object(gt, "gemv_triton", dispatch({s: make("piped", c) for s, c in choice.items()})):
            ms = graph_ms(runner, 384)
        print(f"graph {label}: {ms:.3f} ms/step", flush=True)
        return ms
    base = graph(BASE_BEST, "round2 best")
    best = dict(BASE_BEST)
    for name in C:
        scores = []
        for cfg in ok[name]:
            ms = graph({**BASE_BEST, name: cfg}, f"{name} {cfg}")
            result["single"].append({"shape": name, "cfg": cfg, "ms": ms, "base": base})
            scores.append((ms, cfg))
        best[name] = min(scores)[1]
    result["chosen"] = best
    for label, choice in (("cur", {}), ("round2", BASE_BEST), ("round3", best)) * 2:
        result["final"].append((label, graph(choice, label)))
    json.dump(result, open(out, "w"), indent=1, default=str)


if __name__ == "__main__":
    main()
