"""Why are some contexts slow? Profile the served b1 graph at 192 vs 224 (and 352)."""
import sys
from collections import defaultdict
import torch
from benchmarks.profile_decode import fill_graph_inputs, time_calls
from services.worker.config import WorkerConfig
from services.worker.model_runner import ModelRunner

model = sys.argv[1]
runner = ModelRunner(WorkerConfig(model=model, load_format="dummy", dtype="bfloat16", max_model_len=4096,
                                  gpu_memory_utilization=0.9, max_graph_batch_size=1, max_num_batched_tokens=8192,
                                  max_graph_prefill_tokens=0))
g = runner.graphs.graphs[1, 1]
row = []
for ctx in range(128, 400, 4):
    fill_graph_inputs(runner, 1, ctx)
    row.append((ctx, round(time_calls(g.replay, steps=40, warmups=3), 3)))
print(row, flush=True)
slow = max(row, key=lambda r: r[1])[0]
fast = min(row, key=lambda r: r[1])[0]
from torch.profiler import ProfilerActivity, profile
for ctx in (fast, slow, slow):
    fill_graph_inputs(runner, 1, ctx)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            g.replay()
        torch.cuda.synchronize()
    ev = sorted([e for e in prof.events() if e.device_type.name == "CUDA"], key=lambda e: e.time_range.start)
    n = len(ev) // 3
    step = ev[n:2 * n]
    t0 = step[0].time_range.start
    d = defaultdict(list)
    for e in step:
        d[e.name[:24]].append(e.time_range.elapsed_us())
    print(f"ctx {ctx}: span {step[-1].time_range.end - t0:.1f} us;", {k: (len(v), round(sum(v), 1), round(max(v), 1)) for k, v in d.items()})
    print("   ", [(e.name[:8], round(e.time_range.start - t0, 1), round(e.time_range.elapsed_us(), 1)) for e in step[:14]])
    big = sorted(step, key=lambda e: -e.time_range.elapsed_us())[:6]
    print("    biggest", [(e.name[:8], round(e.time_range.start - t0, 1), round(e.time_range.elapsed_us(), 1)) for e in big])
    dec = [round(e.time_range.elapsed_us(), 1) for e in step if e.name.startswith("_decode")]
    print("    decode per layer", dec)
