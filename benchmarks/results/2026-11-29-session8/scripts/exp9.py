"""Sustained b1 graph time: new vs old GEMV tiles, interleaved, after warm periods; also cold."""
import sys
import time
from unittest import mock
import torch
from benchmarks.profile_decode import fill_graph_inputs
from services.worker.config import WorkerConfig
from services.worker.cuda_graphs import StepGraphs
from services.worker.model_runner import ModelRunner
import kernels.gemv_triton as gt

OLD = {(6144, 4096): (4, 1024, 4, 1), (4096, 4096): (8, 512, 8, 1), (28672, 4096): (4, 1024, 4, 1), (128256, 4096): (4, 1024, 4, 1)}
served = gt.pick_config
runner = ModelRunner(WorkerConfig(model=sys.argv[1], load_format="dummy", dtype="bfloat16", max_model_len=4096,
                                  gpu_memory_utilization=0.9, max_graph_batch_size=1, max_graph_prefill_tokens=0))
graphs = {}
for label in ("new", "old"):
    patch = mock.patch.object(gt, "pick_config", (lambda n, k, gated=False: OLD.get((n, k)) or served(n, k, gated)) if label == "old" else served)
    with patch:
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


for rnd in range(3):
    for label in ("new", "old"):
        time.sleep(2.0)
        cold = timed(graphs[label], 60)
        timed(graphs[label], 1200)  # ~5 s warm
        warm = [timed(graphs[label], 250) for _ in range(3)]
        print(f"round {rnd} {label}: cold {cold:.3f} ms, sustained " + " ".join(f"{w:.3f}" for w in warm), flush=True)
