"""Host-side cost of one decode step at a large batch, with the model's forward pass stubbed out.

`python -m benchmarks.host_step [--batch 512] [--context 1024] [--steps 30]` drives the real
`Scheduler`, protobuf conversion and serialisation of the step plan and result, and the worker's
`ModelRunner` (input preparation, sampling bookkeeping) over the demo model on the CPU, with the
logits replaced by zeros: what remains is the Python work every decode step does besides the GPU's.
It prints milliseconds per step for each part. While the host part of the worker and of the
scheduler each stay below the GPU step (35 ms at 512 x 1.5k on an H200, see docs/benchmarks.md),
overlapped scheduling hides them. `--no-gc-tuning` measures with CPython's default collector.
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

from services.common import convert
from services.common.demo_model import ensure_demo_model
from services.common.gc_tuning import tune_gc
from services.common.pb import worker_pb2
from services.common.sampling import SamplingParams
from services.scheduler.config import SchedulerConfig
from services.scheduler.request import Request
from services.scheduler.scheduler import Scheduler
from services.worker.config import WorkerConfig
from services.worker.model_runner import ModelRunner

BLOCK_SIZE, MAX_MODEL_LEN = 16, 2048


class StepTimer:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] += now - self._last
        self._last = now


def build(batch: int, context: int) -> tuple[Scheduler, ModelRunner]:
    output_len = MAX_MODEL_LEN - context
    num_blocks = batch * -(-MAX_MODEL_LEN // BLOCK_SIZE) + 8
    runner = ModelRunner(WorkerConfig(model=str(ensure_demo_model()), num_kv_blocks=num_blocks,
                                      max_model_len=MAX_MODEL_LEN, max_num_batched_tokens=8192))
    vocab = runner.model_config.vocab_size

    def logits_without_forward(inputs):  # the inputs still reach the device; the model does not run
        inputs.to_device(runner.device)
        return torch.zeros(len(inputs.sampling_requests), vocab), None

    runner._logits = logits_without_forward
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=batch, max_num_batched_tokens=8192), runner.num_blocks,
                          BLOCK_SIZE, MAX_MODEL_LEN)
    sampling = SamplingParams(temperature=0.0, max_tokens=output_len, min_tokens=output_len, ignore_eos=True)
    for i in range(batch):
        prompt = [5 + (i * 7 + j) % 300 for j in range(context)]
        scheduler.add_request(Request(f"req-{i}", prompt, sampling, [], MAX_MODEL_LEN))
    return scheduler, runner


def step(scheduler: Scheduler, runner: ModelRunner, timer: StepTimer):
    """One step through every host-side stage; returns its plan."""
    plan = scheduler.schedule()
    timer.lap("scheduler: schedule")
    data = convert.plan_to_pb(plan).SerializeToString()
    timer.lap("scheduler: plan -> bytes")
    worker_plan = convert.plan_from_pb(worker_pb2.StepRequest.FromString(data))
    timer.lap("worker: bytes -> plan")
    result = runner.finish(runner.launch(worker_plan))
    timer.lap("worker: launch + finish")
    data = convert.result_to_pb(result).SerializeToString()
    timer.lap("worker: result -> bytes")
    result = convert.result_from_pb(worker_pb2.StepResponse.FromString(data))
    timer.lap("scheduler: bytes -> result")
    scheduler.update(plan, result)
    timer.lap("scheduler: update")
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--context", type=int, default=1024, help="prompt tokens (< 2048)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-gc-tuning", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    scheduler, runner = build(args.batch, args.context)
    timer = StepTimer()
    while True:  # prefill until every request decodes
        plan = step(scheduler, runner, timer)
        if len(plan.num_scheduled_tokens) == args.batch and plan.total_num_scheduled_tokens == args.batch:
            break
    if not args.no_gc_tuning:
        tune_gc()
    timer = StepTimer()
    for _ in range(args.steps):
        step(scheduler, runner, timer)
    total = sum(timer.seconds.values())
    print(f"batch {args.batch}, context ~{args.context}: {1e3 * total / args.steps:.2f} ms host time per decode step")
    for name, seconds in timer.seconds.items():
        print(f"  {name:28s} {1e3 * seconds / args.steps:7.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
