"""gRPC servicer of the scheduler's token-level API: converts protobuf and delegates to the engine."""
from __future__ import annotations

from services.common.convert import FINISH_REASON_TO_PB, logprob_to_pb, sampling_from_pb
from services.common.errors import InvalidArgument, Unavailable
from services.common.pb import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from services.common.rpc import handle_errors
from services.common.validation import Limits, validate_prompt_ids, validate_sampling
from services.scheduler.engine import SchedulerEngine
from services.scheduler.request import RequestOutput

MAX_REQUEST_ID_LEN = 128


def output_to_pb(out: RequestOutput) -> scheduler_pb2.GenerateTokensResponse:
    pb = scheduler_pb2.GenerateTokensResponse(
        request_id=out.request_id, token_ids=out.new_token_ids,
        logprobs=[logprob_to_pb(lp) for lp in out.new_logprobs if lp.logprob is not None],
        finish_reason=FINISH_REASON_TO_PB[out.finish_reason.value if out.finish_reason else None])
    if out.finished:
        pb.usage.CopyFrom(common_pb2.Usage(prompt_tokens=out.num_prompt_tokens,
                                           completion_tokens=out.num_output_tokens,
                                           cached_tokens=out.num_cached_tokens))
    return pb


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, engine: SchedulerEngine):
        self.engine = engine

    def _limits(self) -> Limits:
        spec = self.engine.spec
        return Limits(max_model_len=spec.max_model_len, vocab_size=spec.vocab_size)

    @handle_errors
    async def Generate(self, request, context):
        if not request.request_id or len(request.request_id) > MAX_REQUEST_ID_LEN:
            raise InvalidArgument(f"request_id must have 1..{MAX_REQUEST_ID_LEN} characters")
        if not self.engine.ready:
            raise Unavailable("scheduler is not ready")
        limits = self._limits()
        prompt = list(request.prompt_token_ids)
        sampling = sampling_from_pb(request.sampling, room=limits.max_model_len - len(prompt))
        sampling.stop = []
        validate_sampling(sampling, limits)
        validate_prompt_ids(prompt, sampling.max_tokens, limits)
        self.engine.add_request(request.request_id, prompt, sampling)
        async for out in self.engine.stream(request.request_id):
            yield output_to_pb(out)

    @handle_errors
    async def Abort(self, request, context):
        return scheduler_pb2.AbortResponse(found=self.engine.abort(request.request_id))

    @handle_errors
    async def GetLoad(self, request, context):
        return scheduler_pb2.Load(**self.engine.load())

    @handle_errors
    async def GetInfo(self, request, context):
        spec = self.engine.spec
        if spec is None:
            raise Unavailable("scheduler is not ready")
        return scheduler_pb2.SchedulerInfo(
            model_name=spec.model_name, max_model_len=spec.max_model_len,
            vocab_size=spec.vocab_size, eos_token_ids=spec.eos_token_ids,
            block_size=spec.block_size, num_blocks=spec.num_blocks)
