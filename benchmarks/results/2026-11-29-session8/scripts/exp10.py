"""Sustained (power-capped) b1 graph time for whole-graph GEMV tile combos; interleaved after a warm-up."""
import sys
from unittest import mock
import torch
from benchmarks.profile_decode import fill_graph_inputs
from services.worker.config import WorkerConfig
from services.worker.cuda_graphs import StepGraphs
from services.worker.model_runner import ModelRunner
import kernels.gemv_triton as gt

Q, O, GU, D, LM = (6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096)
def every(c):
    return {Q: c, O: c, GU: c, LM: c}
COMBOS = {
    "old": {Q: (4, 1024, 4, 1), O: (8, 512, 8, 1), GU: (4, 1024, 4, 1), LM: (4, 1024, 4, 1)},
    "new": {},
    "p4x1024": every((4, 1024, 4, 2)),
    "p8x512": every((8, 512, 4, 2)),
    "p8x1024w8": every((8, 1024, 8, 2)),
    "p4x2048": every((4, 2048, 4, 2)),
    "p8x512s3": every((8, 512, 4, 3)),
    "new+lm16": {LM: (16, 256, 4, 4)},
    "new+down4x1024": {D: (4, 1024, 4, 1)},
}
served = gt.pick_config
runner = ModelRunner(WorkerConfig(model=sys.argv[1], load_format="dummy", dtype="bfloat16", max_model_len=4096,
                                  gpu_memory_utilization=0.9, max_graph_batch_size=1, max_graph_prefill_tokens=0))
graphs = {}
for label, over in COMBOS.items():
    with mock.patch.object(gt, "pick_config", lambda n, k, gated=False, o=over: o.get((n, k)) or served(n, k, gated)):
        g = StepGraphs(runner.model, 1, 0, -(-runner.max_model_len // runner.config.block_size), runner.max_model_len, runner.device)
        g.capture()
    runner.graphs = g
    fill_graph_inputs(runner, 1, 256)
    graphs[label] = g.graphs[1, 1]
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


def timed(graph, n):
    start.record()
    for _ in range(n):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


timed(graphs["old"], 1500)
res = {k: [] for k in graphs}
for rnd in range(3):
    for label, g in graphs.items():
        timed(g, 40)
        res[label].append(timed(g, 200))
for label, v in res.items():
    print(f"{label:16s} sustained " + " ".join(f"{t:.3f}" for t in v) + f"  mean {sum(v) / len(v):.3f}", flush=True)
