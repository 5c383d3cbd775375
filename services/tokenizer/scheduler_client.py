"""The tokenizer's link to a scheduler over gRPC: protobuf stops here."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from services.common.convert import FINISH_REASON_FROM_PB, logprob_from_pb, sampling_to_pb
from services.common.errors import RemoteError
from services.common.pb import scheduler_pb2, scheduler_pb2_grpc
from services.common.rpc import CHANNEL_OPTIONS, queued_messages
from services.common.sampling import SamplingParams
from services.common.step import SampledToken


@dataclass
class TokenChunk:
    token_ids: list[int]
    logprobs: list[SampledToken] = field(default_factory=list)
    finish_reason: str | None = None  # stop | length | abort | error on the last chunk
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0


@dataclass(frozen=True)
class ReplicaInfo:
    model_name: str
    max_model_len: int
    vocab_size: int
    eos_token_ids: list[int]


def _merge_chunks(request_id: str, outputs: list) -> TokenChunk:
    """Consecutive `GenerateTokensResponse`s of one request as one chunk (usage from the last)."""
    last = outputs[-1]
    return TokenChunk(
        token_ids=[t for pb in outputs for t in pb.token_ids],
        logprobs=[logprob_from_pb(request_id, lp) for pb in outputs for lp in pb.logprobs],
        finish_reason=FINISH_REASON_FROM_PB[last.finish_reason],
        num_prompt_tokens=last.usage.prompt_tokens,
        num_output_tokens=last.usage.completion_tokens,
        num_cached_tokens=last.usage.cached_tokens)


class SchedulerClient:
    """Every request of this process shares one `Scheduler.Multiplex` stream, opened on first use
    and again after it breaks: the scheduler answers with one message per step for all of them,
    instead of one message per request and token (Python gRPC costs ~50 µs of CPU per message)."""

    def __init__(self, address: str):
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = scheduler_pb2_grpc.SchedulerStub(self.channel)
        self._call = None  # the live Multiplex call
        self._outgoing: asyncio.Queue | None = None  # its requests; grpc's own task sends them
        self._reader: asyncio.Task | None = None
        self._inboxes: dict[str, asyncio.Queue] = {}  # request id -> its outputs / RemoteError

    async def info(self, timeout: float = 5.0) -> ReplicaInfo:
        pb = await self.stub.GetInfo(scheduler_pb2.GetInfoRequest(), timeout=timeout)
        return ReplicaInfo(pb.model_name, pb.max_model_len, pb.vocab_size, list(pb.eos_token_ids))

    def _send(self, message: scheduler_pb2.MultiplexRequest) -> None:
        """Queue a message on the live stream, opening one if there is none."""
        if self._call is None:
            self._outgoing = asyncio.Queue()
            self._call = self.stub.Multiplex(queued_messages(self._outgoing))
            self._reader = asyncio.create_task(self._read(self._call))
        self._outgoing.put_nowait(message)

    async def _read(self, call) -> None:
        """Route each reply's outputs and errors to their requests; a broken stream fails them all."""
        failure: RemoteError | None = None
        try:
            async for reply in call:
                for out in reply.outputs:
                    inbox = self._inboxes.get(out.request_id)
                    if inbox is not None:
                        inbox.put_nowait(out)
                for error in reply.errors:
                    inbox = self._inboxes.get(error.request_id)
                    if inbox is not None:
                        inbox.put_nowait(RemoteError.from_number(error.code, error.message))
            failure = RemoteError(grpc.StatusCode.UNAVAILABLE, "the scheduler ended the stream")
        except grpc.aio.AioRpcError as exc:
            failure = RemoteError(exc.code(), exc.details() or exc.code().name)
        finally:
            if self._call is call:
                self._call = None
            for inbox in self._inboxes.values():
                inbox.put_nowait(failure or RemoteError(grpc.StatusCode.UNAVAILABLE, "scheduler stream closed"))

    async def generate(self, request_id: str, prompt_token_ids: list[int], sampling: SamplingParams,
                       timeout: float | None) -> AsyncIterator[TokenChunk]:
        """Stream token chunks. Raises a RemoteError for a refused request or a lost scheduler and
        TimeoutError past `timeout` seconds. Closing the iterator early aborts the request."""
        deadline = None if timeout is None else time.monotonic() + timeout
        inbox: asyncio.Queue = asyncio.Queue()
        self._inboxes[request_id] = inbox
        finished = False
        try:
            self._send(scheduler_pb2.MultiplexRequest(generate=scheduler_pb2.GenerateTokensRequest(
                request_id=request_id, prompt_token_ids=prompt_token_ids,
                sampling=sampling_to_pb(sampling, include_stop=False))))
            while not finished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"deadline of request {request_id} exceeded")
                items = [await asyncio.wait_for(inbox.get(), remaining)]
                while not inbox.empty():  # this process fell behind: answer with one merged chunk
                    items.append(inbox.get_nowait())
                error = next((item for item in items if isinstance(item, RemoteError)), None)
                outputs = [item for item in items if not isinstance(item, RemoteError)]
                if outputs:
                    chunk = _merge_chunks(request_id, outputs)
                    finished = chunk.finish_reason is not None
                    yield chunk
                if error is not None and not finished:
                    finished = True  # refused or lost: nothing to abort
                    raise error
        finally:
            del self._inboxes[request_id]
            if not finished and self._call is not None:
                self._send(scheduler_pb2.MultiplexRequest(abort=scheduler_pb2.AbortRequest(request_id=request_id)))

    async def close(self) -> None:
        if self._call is not None:
            self._outgoing.put_nowait(None)
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
        await self.channel.close()
