"""The tokenizer's link to a scheduler over gRPC: protobuf stops here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator

import grpc

from services.common.convert import FINISH_REASON_FROM_PB, logprob_from_pb, sampling_to_pb
from services.common.pb import scheduler_pb2, scheduler_pb2_grpc
from services.common.rpc import CHANNEL_OPTIONS
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


class SchedulerClient:
    def __init__(self, address: str):
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = scheduler_pb2_grpc.SchedulerStub(self.channel)

    async def info(self, timeout: float = 5.0) -> ReplicaInfo:
        pb = await self.stub.GetInfo(scheduler_pb2.GetInfoRequest(), timeout=timeout)
        return ReplicaInfo(pb.model_name, pb.max_model_len, pb.vocab_size, list(pb.eos_token_ids))

    async def generate(self, request_id: str, prompt_token_ids: list[int], sampling: SamplingParams,
                       timeout: float | None) -> AsyncIterator[TokenChunk]:
        """Stream token chunks. Closing the iterator early cancels the call, which aborts the
        request on the scheduler."""
        call = self.stub.Generate(scheduler_pb2.GenerateTokensRequest(
            request_id=request_id, prompt_token_ids=prompt_token_ids,
            sampling=sampling_to_pb(sampling, include_stop=False)), timeout=timeout)
        try:
            async for pb in call:
                yield TokenChunk(
                    token_ids=list(pb.token_ids),
                    logprobs=[logprob_from_pb(request_id, lp) for lp in pb.logprobs],
                    finish_reason=FINISH_REASON_FROM_PB[pb.finish_reason],
                    num_prompt_tokens=pb.usage.prompt_tokens,
                    num_output_tokens=pb.usage.completion_tokens,
                    num_cached_tokens=pb.usage.cached_tokens)
        finally:
            call.cancel()

    async def close(self) -> None:
        await self.channel.close()
