"""`Scheduler.Multiplex` (many requests over one stream) and the tokenizer's client of it, over
real gRPC in one process, against the fake worker (token = previous + 1)."""
from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from services.common.convert import FINISH_REASON_FROM_PB
from services.common.errors import RemoteError
from services.common.pb import scheduler_pb2, scheduler_pb2_grpc
from services.common.sampling import SamplingParams
from services.scheduler.config import SchedulerConfig
from services.scheduler.engine import SchedulerEngine, _Stream
from services.scheduler.request import FinishReason, RequestOutput
from services.scheduler.servicer import SchedulerServicer, _multiplex_reply
from services.tokenizer.scheduler_client import SchedulerClient
from tests.scheduler.fake_worker import FakeWorker


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


@contextlib.asynccontextmanager
async def serving(worker: FakeWorker | None = None, stream_interval: int = 1):
    worker = worker or FakeWorker()
    engine = SchedulerEngine(SchedulerConfig(stream_interval=stream_interval), worker)
    await engine.start()
    server = grpc.aio.server()
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(SchedulerServicer(engine), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield engine, worker, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)
        await engine.stop()


def generate(request_id, prompt, max_tokens):
    sampling = scheduler_pb2.GenerateTokensRequest().sampling
    sampling.max_tokens, sampling.ignore_eos = max_tokens, True
    return scheduler_pb2.MultiplexRequest(generate=scheduler_pb2.GenerateTokensRequest(
        request_id=request_id, prompt_token_ids=prompt, sampling=sampling))


def test_requests_share_one_stream_and_it_ends_after_half_close():
    async def main():
        worker = FakeWorker()
        worker.gate = asyncio.Event()  # no step runs until both requests are in
        async with serving(worker) as (engine, _, address), grpc.aio.insecure_channel(address) as channel:
            call = scheduler_pb2_grpc.SchedulerStub(channel).Multiplex()
            await call.write(generate("a", [10, 20], 5))
            await call.write(generate("b", [50], 3))
            await call.write(generate("bad", [1, 500], 3))  # token id outside the fake vocab of 100
            await call.done_writing()
            for _ in range(200):
                if len(engine._streams) == 2:
                    break
                await asyncio.sleep(0.005)
            worker.gate.set()
            tokens: dict[str, list[int]] = {"a": [], "b": []}
            finish, errors, replies_with_both = {}, [], 0
            async for reply in call:
                errors += list(reply.errors)
                replies_with_both += {o.request_id for o in reply.outputs} == {"a", "b"}
                for out in reply.outputs:
                    tokens[out.request_id] += list(out.token_ids)
                    if out.finish_reason:
                        finish[out.request_id] = out
            assert await call.code() == grpc.StatusCode.OK  # ended once both had finished
            assert tokens == {"a": [21, 22, 23, 24, 25], "b": [51, 52, 53]}
            assert finish["a"].usage.completion_tokens == 5 and finish["b"].usage.prompt_tokens == 1
            assert replies_with_both > 0, "one reply carries the outputs of several requests"
            assert [(e.request_id, e.code) for e in errors] == [("bad", grpc.StatusCode.INVALID_ARGUMENT.value[0])]
            assert engine.load()["num_free_blocks"] == worker.spec.num_blocks
    run(main())


def test_stream_interval_holds_tokens_after_the_first():
    """The engine's delivery into a shared outbox, then one Multiplex reply per group of outputs."""
    def out(tokens, finished=False, request_id="a"):
        return RequestOutput(request_id=request_id, new_token_ids=tokens, new_logprobs=[], finished=finished,
                             finish_reason=FinishReason.LENGTH if finished else None, num_prompt_tokens=1,
                             num_output_tokens=0, num_cached_tokens=0)

    engine = SchedulerEngine(SchedulerConfig(stream_interval=3), FakeWorker())
    outbox, live = asyncio.Queue(), {"a", "b"}
    streams = {"a": _Stream(queue=outbox), "b": _Stream(queue=outbox)}
    sent = []
    for items in (
        [out([1]), out([7], request_id="b")],  # first tokens go out at once
        [out([2]), out([8], request_id="b")],  # held: fewer than 3 since the last message
        [out([3]), out([4])],
        [out([5], finished=True), out([9], finished=True, request_id="b")],  # the end flushes what is held
    ):
        for item in items:
            engine._deliver(streams[item.request_id], item)
        delivered = [outbox.get_nowait() for _ in range(outbox.qsize())]
        sent.append({(o.request_id, tuple(o.token_ids)) for o in _multiplex_reply(delivered, live).outputs})
    assert sent == [{("a", (1,)), ("b", (7,))}, set(), {("a", (2, 3, 4))}, {("b", (8, 9)), ("a", (5,))}]
    assert live == set() and not streams["a"].held and not streams["b"].held
    error = scheduler_pb2.RequestError(request_id="c", code=3, message="bad")
    assert list(_multiplex_reply([error], live).errors) == [error]


def test_client_merges_outputs_that_queued_while_it_was_behind():
    async def main():
        async with serving() as (_, _, address):
            client = SchedulerClient(address)
            params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
            chunks = []
            async for chunk in client.generate("a", [1], params, timeout=10):
                chunks.append(chunk)
                await asyncio.sleep(0.02)  # a slow consumer: steps keep coming meanwhile
            await client.close()
            return chunks
    chunks = run(main())
    assert [t for c in chunks for t in c.token_ids] == list(range(2, 32))
    assert len(chunks) < 30 and max(len(c.token_ids) for c in chunks) > 1
    assert chunks[-1].finish_reason == "length" and chunks[-1].num_output_tokens == 30


def test_abort_and_closing_the_stream_free_everything():
    async def main():
        worker = FakeWorker()
        worker.gate = asyncio.Event()  # hold steps so that requests stay live
        async with serving(worker) as (engine, _, address), grpc.aio.insecure_channel(address) as channel:
            call = scheduler_pb2_grpc.SchedulerStub(channel).Multiplex()
            for rid in ("a", "b", "c"):
                await call.write(generate(rid, [1, 2, 3], 50))
            await call.write(scheduler_pb2.MultiplexRequest(abort=scheduler_pb2.AbortRequest(request_id="b")))
            worker.gate.set()
            aborted = None
            async for reply in call:
                aborted = next((o for o in reply.outputs if o.request_id == "b" and o.finish_reason), aborted)
                if aborted:
                    break
            assert FINISH_REASON_FROM_PB[aborted.finish_reason] == "abort"
            call.cancel()  # the client goes away with a and c still running
            for _ in range(100):
                if engine.load()["num_running"] == 0:
                    break
                await asyncio.sleep(0.01)
            assert engine.load() == {"num_running": 0, "num_waiting": 0, "kv_usage": 0.0,
                                     "num_free_blocks": worker.spec.num_blocks}
    run(main())


def test_client_streams_many_requests_and_maps_errors():
    async def main():
        async with serving() as (engine, worker, address):
            client = SchedulerClient(address)
            greedy = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)

            async def one(i):
                chunks = [c async for c in client.generate(f"r{i}", [i + 1], greedy, timeout=10)]
                return [t for c in chunks for t in c.token_ids], chunks[-1].finish_reason

            results = await asyncio.gather(*(one(i) for i in range(20)))
            assert results == [([i + 2, i + 3, i + 4, i + 5], "length") for i in range(20)]
            with pytest.raises(RemoteError) as refused:
                async for _ in client.generate("big", [1] * 300, greedy, timeout=10):  # > max_model_len 256
                    pass
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert client._call is not None, "a refused request leaves the shared stream open"
            await client.close()
            assert engine.load()["num_free_blocks"] == worker.spec.num_blocks
    run(main())


def test_client_deadline_and_early_close_abort_the_request():
    async def main():
        worker = FakeWorker()
        async with serving(worker) as (engine, _, address):
            client = SchedulerClient(address)
            slow = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
            worker.gate = asyncio.Event()  # no step completes: the deadline must fire
            with pytest.raises(TimeoutError):
                async for _ in client.generate("late", [1], slow, timeout=0.2):
                    pass
            worker.gate.set()
            stream = client.generate("early", [1], slow, timeout=10)
            assert (await stream.__anext__()).token_ids
            await stream.aclose()
            for _ in range(100):
                if engine.load()["num_running"] == 0:
                    break
                await asyncio.sleep(0.01)
            assert engine.load()["num_free_blocks"] == worker.spec.num_blocks
            await client.close()
    run(main())


def test_client_fails_requests_when_the_scheduler_is_gone():
    async def main():
        async with serving() as (_, worker, address):
            client = SchedulerClient(address)
            worker.gate = asyncio.Event()
            stream = client.generate("a", [1], SamplingParams(max_tokens=50, ignore_eos=True), timeout=10)
            pending = asyncio.ensure_future(stream.__anext__())
            await asyncio.sleep(0.1)
        with pytest.raises(RemoteError) as lost:  # the server stopped under the open stream
            await pending
        assert lost.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        await client.close()
    run(main())
