"""b1 graph time against context, served capture, new vs old GEMV tiles (same process)."""
import sys
from unittest import mock
from benchmarks.profile_decode import fill_graph_inputs, time_calls
from services.worker.config import WorkerConfig
from services.worker.cuda_graphs import StepGraphs
from services.worker.model_runner import ModelRunner
import kernels.gemv_triton as gt

OLD = {(6144, 4096): (4, 1024, 4, 1), (4096, 4096): (8, 512, 8, 1), (28672, 4096): (4, 1024, 4, 1), (128256, 4096): (4, 1024, 4, 1)}
served = gt.pick_config
model = sys.argv[1]
runner = ModelRunner(WorkerConfig(model=model, load_format="dummy", dtype="bfloat16", max_model_len=4096,
                                  gpu_memory_utilization=0.95, max_graph_batch_size=512, max_num_batched_tokens=8192))
cfg = runner.config
for label in ("new", "old", "new", "old"):
    patch = mock.patch.object(gt, "pick_config", (lambda n, k, gated=False: OLD.get((n, k)) or served(n, k, gated)) if label == "old" else served)
    with patch:
        runner.graphs = StepGraphs(runner.model, 512, 512, -(-runner.max_model_len // cfg.block_size), runner.max_model_len, runner.device)
        runner.graphs.capture()
    row = []
    for ctx in range(128, 400, 32):
        fill_graph_inputs(runner, 1, ctx)
        row.append(time_calls(runner.graphs.graphs[1, 1].replay, steps=60, warmups=3))
    print(label, " ".join(f"{t:.3f}" for t in row), f"mean {sum(row) / len(row):.3f}", flush=True)
