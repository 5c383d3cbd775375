"""Overlapped scheduling end to end in one process: the scheduler engine keeps two steps in flight
and the worker launches step N+1 before step N is finished. Outputs must equal those of strictly
sequential steps, also under preemption and with sampling that needs exact token history."""
from __future__ import annotations

import asyncio

import pytest

from services.common.sampling import SamplingParams
from services.scheduler.config import SchedulerConfig
from services.scheduler.engine import SchedulerEngine
from services.worker.config import WorkerConfig
from services.worker.local_link import LocalWorkerLink
from tests.worker.tiny_models import build_checkpoint

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PROMPTS = [[1, 5, 9, 13, 17, 21, 25], [1, 200, 3], [1, 7] * 9, [1, 99, 98, 97, 96]]


def run_engine(model_dir: str, depth: int, num_kv_blocks: int, params: list[SamplingParams]):
    async def main():
        link = LocalWorkerLink(WorkerConfig(model=model_dir, block_size=4, num_kv_blocks=num_kv_blocks,
                                            max_model_len=48, max_num_batched_tokens=64))
        engine = SchedulerEngine(SchedulerConfig(pipeline_depth=depth, max_num_batched_tokens=64), link)
        await engine.start()

        async def one(i: int) -> list[int]:
            engine.add_request(f"r{i}", PROMPTS[i], params[i])
            return [t async for out in engine.stream(f"r{i}") for t in out.new_token_ids]

        outputs = await asyncio.gather(*(one(i) for i in range(len(PROMPTS))))
        preemptions = engine.scheduler.num_preemptions_total
        free = engine.load()["num_free_blocks"]
        await engine.stop()
        link.close()
        return outputs, preemptions, free

    return asyncio.run(asyncio.wait_for(main(), 120))


@pytest.fixture(scope="module")
def model_dir():
    return str(build_checkpoint("llama_gqa_llama3_sharded")[0])


@pytest.mark.parametrize("num_kv_blocks", [64, 14], ids=["roomy", "preempting"])
def test_overlap_matches_sequential_greedy(model_dir, num_kv_blocks):
    params = [SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)] * len(PROMPTS)
    sequential, _, free1 = run_engine(model_dir, 1, num_kv_blocks, params)
    overlapped, preemptions, free2 = run_engine(model_dir, 2, num_kv_blocks, params)
    assert overlapped == sequential
    assert all(len(o) == 20 for o in overlapped)
    assert free1 == free2 == num_kv_blocks
    if num_kv_blocks == 14:
        assert preemptions > 0, "the small cache must force preemption for this test to mean anything"


def test_overlap_with_history_dependent_sampling(model_dir):
    params = [SamplingParams(temperature=0.8, seed=7, max_tokens=16, ignore_eos=True),
              SamplingParams(temperature=0.0, repetition_penalty=1.3, frequency_penalty=0.5,
                             max_tokens=16, ignore_eos=True),
              SamplingParams(temperature=0.0, max_tokens=16, min_tokens=10),
              SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)]
    sequential, _, _ = run_engine(model_dir, 1, 64, params)
    overlapped, _, _ = run_engine(model_dir, 2, 64, params)
    assert overlapped == sequential
