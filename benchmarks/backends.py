"""Where the serving benchmark sends its requests, each answered as a stream of Chunks:

- grpc: the public `sluice.v1.Generation` API (tokenizer front), prompts given as token ids;
- scheduler: the token-level `sluice.v1.Scheduler` API directly (no tokenizer service);
- inprocess: a SchedulerEngine driving a LocalWorkerLink in this process (no gRPC at all).

Every request is sampled greedily with EOS ignored and min_tokens = max_tokens = its output length,
so it produces exactly that many tokens.
"""
from __future__ import annotations

import argparse
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from benchmarks.serve_metrics import Chunk

INFO_TIMEOUT_S = 30.0


class BenchmarkError(Exception):
    """A bad argument or an unusable server: reported as one line, exit status 2."""


@dataclass(frozen=True)
class ServerInfo:
    model_name: str
    vocab_size: int
    max_model_len: int
    eos_token_ids: list[int]


class Backend(Protocol):
    """Where requests go. `start` before anything else; `close` always."""

    async def start(self) -> ServerInfo: ...

    def generate(self, request_id: str, prompt_token_ids: list[int],
                 output_len: int) -> AsyncIterator[Chunk]: ...

    async def close(self) -> None: ...


def fixed_length_sampling(output_len: int):
    """Greedy, EOS ignored and min_tokens = max_tokens: exactly `output_len` tokens."""
    from services.common.sampling import SamplingParams
    return SamplingParams(temperature=0.0, max_tokens=output_len, min_tokens=output_len,
                          ignore_eos=True)


def describe_error(exc: BaseException) -> str:
    """`CODE: details` for a gRPC error, `Type: message` for anything else."""
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return f"{type(exc).__name__}: {exc}"


class _GrpcBackend:
    """Streams over `num_channels` grpc.aio channels to one address, picked round-robin per request.
    Each channel has its own subchannel pool, hence its own HTTP/2 connection."""

    service = ""

    def __init__(self, address: str, num_channels: int, timeout: float | None):
        self.address = address
        self.num_channels = num_channels
        self.timeout = timeout
        self.channels: list = []
        self.stubs: list = []
        self._turn = itertools.count()

    def _stub_class(self):
        raise NotImplementedError

    async def _info(self, stub) -> ServerInfo:
        raise NotImplementedError

    def _request(self, request_id: str, prompt_token_ids: list[int], output_len: int):
        raise NotImplementedError

    async def start(self) -> ServerInfo:
        import grpc
        options = [("grpc.use_local_subchannel_pool", 1)]
        self.channels = [grpc.aio.insecure_channel(self.address, options=options)
                         for _ in range(self.num_channels)]
        self.stubs = [self._stub_class()(channel) for channel in self.channels]
        try:
            return await self._info(self.stubs[0])
        except grpc.aio.AioRpcError as exc:
            raise BenchmarkError(f"cannot reach the {self.service} API at {self.address}: "
                                 f"{describe_error(exc)}") from exc

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       output_len: int) -> AsyncIterator[Chunk]:
        from services.common.convert import FINISH_REASON_FROM_PB
        stub = self.stubs[next(self._turn) % len(self.stubs)]
        call = stub.Generate(self._request(request_id, prompt_token_ids, output_len),
                             timeout=self.timeout)
        async for response in call:
            yield Chunk(len(response.token_ids), FINISH_REASON_FROM_PB[response.finish_reason])

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


class GenerationBackend(_GrpcBackend):
    """The public Generation API (tokenizer front), prompts sent as token ids."""

    service = "Generation"

    def _stub_class(self):
        from services.common.pb import tokenizer_pb2_grpc
        return tokenizer_pb2_grpc.GenerationStub

    async def _info(self, stub) -> ServerInfo:
        from services.common.pb import tokenizer_pb2
        info = await stub.GetModelInfo(tokenizer_pb2.GetModelInfoRequest(), timeout=INFO_TIMEOUT_S)
        return ServerInfo(info.model_name, info.vocab_size, info.max_model_len, list(info.eos_token_ids))

    def _request(self, request_id: str, prompt_token_ids: list[int], output_len: int):
        from services.common.convert import sampling_to_pb
        from services.common.pb import tokenizer_pb2
        return tokenizer_pb2.GenerateRequest(
            request_id=request_id, token_ids=tokenizer_pb2.TokenIds(ids=prompt_token_ids),
            sampling=sampling_to_pb(fixed_length_sampling(output_len)))


class SchedulerBackend(_GrpcBackend):
    """The token-level Scheduler API, called directly."""

    service = "Scheduler"

    def _stub_class(self):
        from services.common.pb import scheduler_pb2_grpc
        return scheduler_pb2_grpc.SchedulerStub

    async def _info(self, stub) -> ServerInfo:
        from services.common.pb import scheduler_pb2
        info = await stub.GetInfo(scheduler_pb2.GetInfoRequest(), timeout=INFO_TIMEOUT_S)
        return ServerInfo(info.model_name, info.vocab_size, info.max_model_len, list(info.eos_token_ids))

    def _request(self, request_id: str, prompt_token_ids: list[int], output_len: int):
        from services.common.convert import sampling_to_pb
        from services.common.pb import scheduler_pb2
        return scheduler_pb2.GenerateTokensRequest(
            request_id=request_id, prompt_token_ids=prompt_token_ids,
            sampling=sampling_to_pb(fixed_length_sampling(output_len), include_stop=False))


class InProcessBackend:
    """SchedulerEngine + LocalWorkerLink in this process and event loop: no gRPC, no tokenizer."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.engine = None
        self.link = None

    async def start(self) -> ServerInfo:
        from services import cli
        from services.common.gc_tuning import tune_gc
        from services.scheduler.engine import SchedulerEngine
        from services.worker.local_link import LocalWorkerLink
        try:
            worker_config, scheduler_config = cli._worker_config(self.args), cli._scheduler_config(self.args)
        except ValueError as exc:
            raise BenchmarkError(str(exc)) from exc
        self.link = LocalWorkerLink(worker_config)
        self.engine = SchedulerEngine(scheduler_config, self.link)
        try:
            spec = await self.engine.start()
        except ValueError as exc:
            raise BenchmarkError(f"cannot start the in-process engine: {exc}") from exc
        tune_gc()  # as every service does once started
        return ServerInfo(spec.model_name, spec.vocab_size, spec.max_model_len, list(spec.eos_token_ids))

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       output_len: int) -> AsyncIterator[Chunk]:
        self.engine.add_request(request_id, prompt_token_ids, fixed_length_sampling(output_len))
        async for out in self.engine.stream(request_id):
            yield Chunk(len(out.new_token_ids), out.finish_reason.value if out.finished else None)

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.stop()
        if self.link is not None:
            self.link.close()


def make_backend(args: argparse.Namespace) -> Backend:
    if args.backend == "grpc":
        return GenerationBackend(args.address, args.channels, args.request_timeout)
    if args.backend == "scheduler":
        return SchedulerBackend(args.address, args.channels, args.request_timeout)
    return InProcessBackend(args)
