"""The scheduler's asyncio engine against an in-process fake worker."""
from __future__ import annotations

import asyncio

import pytest

from services.common.errors import AlreadyExists, InvalidArgument, ResourceExhausted
from services.common.sampling import SamplingParams
from services.scheduler.config import SchedulerConfig
from services.scheduler.engine import SchedulerEngine
from services.scheduler.request import FinishReason
from tests.scheduler.fake_worker import FakeWorker


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def collect(engine, rid):
    outs = [o async for o in engine.stream(rid)]
    return [t for o in outs for t in o.new_token_ids], outs[-1]


def test_requests_complete_and_free_all_blocks():
    async def main():
        worker = FakeWorker()
        engine = SchedulerEngine(SchedulerConfig(max_num_batched_tokens=16), worker)
        await engine.start()
        for i in range(5):
            engine.add_request(f"r{i}", [10 + i, 20, 30], SamplingParams(max_tokens=6, ignore_eos=True))
        results = await asyncio.gather(*(collect(engine, f"r{i}") for i in range(5)))
        for i, (tokens, last) in enumerate(results):
            assert tokens == [31, 32, 33, 34, 35, 36]
            assert last.finished and last.finish_reason == FinishReason.LENGTH
            assert last.num_prompt_tokens == 3 and last.num_output_tokens == 6
        assert engine.load()["num_free_blocks"] == worker.spec.num_blocks
        await engine.stop()
    run(main())


@pytest.mark.parametrize("interval", [1, 5])
def test_stream_interval_chunks_after_the_first_token(interval):
    async def main():
        worker = FakeWorker()
        engine = SchedulerEngine(SchedulerConfig(stream_interval=interval), worker)
        await engine.start()
        engine.add_request("a", [10, 20, 30], SamplingParams(max_tokens=8, ignore_eos=True))
        outs = []
        async for out in engine.stream("a"):
            outs.append(out.new_token_ids)
            await asyncio.sleep(0)  # a reader that keeps up: merging comes from the interval only
        await engine.stop()
        return outs
    outs = run(main())
    assert [t for chunk in outs for t in chunk] == [31, 32, 33, 34, 35, 36, 37, 38]
    assert all(len(chunk) >= interval for chunk in outs[1:-1])
    if interval == 5:
        assert len(outs[0]) < 5, "the first token is sent as soon as it exists, not held for the interval"
        assert len(outs) == 3 and len(outs[1]) >= 5


def test_stream_interval_is_validated():
    with pytest.raises(ValueError):
        SchedulerConfig(stream_interval=0)


def test_closing_stream_early_aborts_and_frees():
    async def main():
        worker = FakeWorker()
        engine = SchedulerEngine(SchedulerConfig(), worker)
        await engine.start()
        engine.add_request("a", [1, 2, 3, 4, 5], SamplingParams(max_tokens=200, ignore_eos=True))
        stream = engine.stream("a")
        first = await stream.__anext__()
        assert first.new_token_ids
        await stream.aclose()
        assert engine.load() == dict(num_running=0, num_waiting=0, kv_usage=0.0,
                                     num_free_blocks=worker.spec.num_blocks)
        await asyncio.sleep(0.01)
        assert "a" not in worker.tokens, "the worker is told to drop an aborted request"
        await engine.stop()
    run(main())


def test_admission_errors():
    async def main():
        worker = FakeWorker(max_model_len=64)
        worker.gate = asyncio.Event()
        engine = SchedulerEngine(SchedulerConfig(max_num_seqs=1, max_waiting_requests=1), worker)
        await engine.start()
        with pytest.raises(InvalidArgument):
            engine.add_request("big", [1] * 60, SamplingParams(max_tokens=10))
        engine.add_request("a", [1], SamplingParams(max_tokens=2, ignore_eos=True))
        await asyncio.sleep(0.01)  # "a" is scheduled; its step is blocked on the gate
        engine.add_request("b", [1], SamplingParams(max_tokens=2, ignore_eos=True))
        with pytest.raises(AlreadyExists):
            engine.add_request("b", [1], SamplingParams(max_tokens=2))
        with pytest.raises(ResourceExhausted):
            engine.add_request("c", [1], SamplingParams(max_tokens=2))
        worker.gate.set()
        (a, _), (b, _) = await asyncio.gather(collect(engine, "a"), collect(engine, "b"))
        assert a == b == [2, 3]
        await engine.stop()
    run(main())


def test_worker_failure_ends_live_requests_with_error_then_recovers():
    async def main():
        worker = FakeWorker()
        engine = SchedulerEngine(SchedulerConfig(), worker)
        await engine.start()
        worker.fail_next = True
        engine.add_request("a", [1, 2], SamplingParams(max_tokens=5, ignore_eos=True))
        tokens, last = await collect(engine, "a")
        assert last.finish_reason == FinishReason.ERROR
        assert worker.num_inits == 2, "the engine starts a fresh worker session"
        engine.add_request("b", [1, 2], SamplingParams(max_tokens=3, ignore_eos=True))
        tokens, last = await collect(engine, "b")
        assert tokens == [3, 4, 5] and last.finish_reason == FinishReason.LENGTH
        await engine.stop()
    run(main())


def test_eos_and_stop_ids_finish_with_stop():
    async def main():
        engine = SchedulerEngine(SchedulerConfig(), FakeWorker(eos=(5,)))
        await engine.start()
        engine.add_request("eos", [2], SamplingParams(max_tokens=10))
        engine.add_request("ign", [2], SamplingParams(max_tokens=4, ignore_eos=True))
        engine.add_request("stopid", [2], SamplingParams(max_tokens=10, stop_token_ids=[4]))
        (eos, le), (ign, li), (sid, ls) = await asyncio.gather(
            collect(engine, "eos"), collect(engine, "ign"), collect(engine, "stopid"))
        assert eos == [3, 4, 5] and le.finish_reason == FinishReason.STOP
        assert ign == [3, 4, 5, 6] and li.finish_reason == FinishReason.LENGTH
        assert sid == [3, 4] and ls.finish_reason == FinishReason.STOP
        await engine.stop()
    run(main())
