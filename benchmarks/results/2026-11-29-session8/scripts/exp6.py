"""Is the served b1 graph slower than the ablate one? Same process, both captures."""
import sys
import torch
from benchmarks.ablate_decode import graph_ms
from benchmarks.profile_decode import fill_graph_inputs, time_calls
from services.worker.config import WorkerConfig
from services.worker.model_runner import ModelRunner
import kernels.gemv_triton as gt

model = sys.argv[1]
runner = ModelRunner(WorkerConfig(model=model, load_format="dummy", dtype="bfloat16", max_model_len=4096,
                                  gpu_memory_utilization=0.95, max_graph_batch_size=512,
                                  max_num_batched_tokens=8192))
for ctx in (384, 256, 128, 384):
    fill_graph_inputs(runner, 1, ctx)
    print(f"served capture, context {ctx}: {time_calls(runner.graphs.graphs[1, 1].replay, steps=100, warmups=5):.3f} ms", flush=True)
for key in gt._gemv_kernel.device_caches[0][0]:
    print("  variant", str(key)[:400])
for ctx in (384, 128):
    print(f"ablate capture, context {ctx}: {graph_ms(runner, ctx):.3f} ms", flush=True)
