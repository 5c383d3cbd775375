"""Sustained b1 graph time: per-shape swaps from the p4x1024 base, then the best combo."""
import sys
from unittest import mock
import torch
from benchmarks.profile_decode import fill_graph_inputs
from services.worker.config import WorkerConfig
from services.worker.cuda_graphs import StepGraphs
from services.worker.model_runner import ModelRunner
import kernels.gemv_triton as gt

Q, O, GU, D, LM = (6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096)
BASE = {Q: (4, 1024, 4, 2), O: (4, 1024, 4, 2), GU: (4, 1024, 4, 2), LM: (4, 1024, 4, 2), D: (8, 512, 8, 1)}
OLD = {Q: (4, 1024, 4, 1), O: (8, 512, 8, 1), GU: (4, 1024, 4, 1), LM: (4, 1024, 4, 1), D: (8, 512, 8, 1)}
SWAPS = [(LM, (16, 256, 4, 4)), (LM, (8, 512, 4, 2)), (LM, (4, 1024, 4, 3)), (LM, (16, 512, 4, 2)),
         (GU, (8, 512, 4, 2)), (GU, (4, 1024, 4, 3)), (GU, (4, 512, 4, 2)), (GU, (8, 1024, 4, 2)),
         (Q, (8, 512, 4, 2)), (Q, (2, 2048, 4, 2)), (Q, (4, 512, 4, 2)),
         (O, (8, 512, 4, 2)), (O, (2, 2048, 4, 2)), (O, (4, 512, 4, 2)), (O, (8, 512, 8, 2)),
         (D, (8, 512, 8, 2)), (D, (4, 1024, 4, 2)), (D, (8, 512, 4, 1))]
served = gt.pick_config
runner = ModelRunner(WorkerConfig(model=sys.argv[1], load_format="dummy", dtype="bfloat16", max_model_len=4096,
                                  gpu_memory_utilization=0.9, max_graph_batch_size=1, max_graph_prefill_tokens=0))
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


def build(over):
    with mock.patch.object(gt, "pick_config", lambda n, k, gated=False: over.get((n, k)) or served(n, k, gated)):
        g = StepGraphs(runner.model, 1, 0, -(-runner.max_model_len // runner.config.block_size), runner.max_model_len, runner.device)
        g.capture()
    runner.graphs = g
    fill_graph_inputs(runner, 1, 256)
    return g


def timed(graph, n):
    start.record()
    for _ in range(n):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


base = build(BASE)
timed(base.graphs[1, 1], 1500)
results = []
for shape, cfg in SWAPS:
    g = build({**BASE, shape: cfg})
    pair = []
    for _ in range(2):
        timed(base.graphs[1, 1], 30); b = timed(base.graphs[1, 1], 150)
        timed(g.graphs[1, 1], 30); v = timed(g.graphs[1, 1], 150)
        pair.append(v - b)
    delta = sum(pair) / 2
    results.append((shape, cfg, delta))
    print(f"{shape} {cfg}: {delta * 1e3:+.1f} us against base ({b:.3f})", flush=True)
    del g
best = dict(BASE)
for shape in {s for s, _, _ in results}:
    s_best = min((r for r in results if r[0] == shape), key=lambda r: r[2])
    if s_best[2] < -0.003:
        best[shape] = s_best[1]
print("best", best, flush=True)
final = {"old": build(OLD), "base": base, "best": build(best)}
res = {k: [] for k in final}
for _ in range(3):
    for k, g in final.items():
        timed(g.graphs[1, 1], 40)
        res[k].append(timed(g.graphs[1, 1], 250))
for k, v in res.items():
    print(f"{k:6s} sustained " + " ".join(f"{t:.3f}" for t in v) + f"  mean {sum(v) / len(v):.3f}", flush=True)
