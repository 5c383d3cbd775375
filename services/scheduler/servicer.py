"""gRPC servicer of the scheduler's token-level API: converts protobuf and delegates to the engine."""
from __future__ import annotations

import asyncio

from services.common.convert import FINISH_REASON_TO_PB, logprob_to_pb, sampling_from_pb
from services.common.errors import InvalidArgument, SluiceError, Unavailable
from services.common.pb import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from services.common.rpc import handle_errors
from services.common.validation import Limits, validate_prompt_ids, validate_sampling
from services.scheduler.engine import SchedulerEngine, merge_outputs
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


_END = object()  # the Multiplex client half-closed its stream


def _multiplex_reply(items: list, live: set[str]) -> scheduler_pb2.MultiplexResponse:
    """What a Multiplex outbox delivered as one reply: outputs merged per request (first-seen
    order) and admission errors. Requests that finish in it leave `live`."""
    by_request: dict[str, list[RequestOutput]] = {}
    errors = []
    for item in items:
        if isinstance(item, RequestOutput):
            by_request.setdefault(item.request_id, []).append(item)
        else:
            errors.append(item)
    outputs = []
    for request_id, outs in by_request.items():
        merged = merge_outputs(outs)
        if merged.finished:
            live.discard(request_id)
        outputs.append(output_to_pb(merged))
    return scheduler_pb2.MultiplexResponse(outputs=outputs, errors=errors)


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, engine: SchedulerEngine):
        self.engine = engine

    def _limits(self) -> Limits:
        spec = self.engine.spec
        return Limits(max_model_len=spec.max_model_len, vocab_size=spec.vocab_size)

    def _admit(self, request: scheduler_pb2.GenerateTokensRequest, outbox: asyncio.Queue | None = None) -> None:
        """Validate a GenerateTokensRequest and add it to the engine (raises a SluiceError)."""
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
        self.engine.add_request(request.request_id, prompt, sampling, outbox)

    @handle_errors
    async def Generate(self, request, context):
        self._admit(request)
        async for out in self.engine.stream(request.request_id):
            yield output_to_pb(out)

    @handle_errors
    async def Multiplex(self, request_iterator, context):
        """One reply per batch of outputs that queued up (a step's worth), see scheduler.proto."""
        outbox: asyncio.Queue = asyncio.Queue()  # RequestOutput | RequestError | _END
        live: set[str] = set()
        reader = asyncio.create_task(self._read_multiplexed(request_iterator, outbox, live))
        client_done = False
        try:
            while not (client_done and not live):
                items = [await outbox.get()]
                while not outbox.empty():
                    items.append(outbox.get_nowait())
                client_done = client_done or _END in items
                response = _multiplex_reply([item for item in items if item is not _END], live)
                if response.outputs or response.errors:
                    yield response
            await reader  # surfaces a failure of the reader
        finally:
            reader.cancel()
            for request_id in list(live):
                self.engine.abort(request_id)

    async def _read_multiplexed(self, request_iterator, outbox: asyncio.Queue, live: set[str]) -> None:
        async for message in request_iterator:
            if message.WhichOneof("action") == "generate":
                request = message.generate
                try:
                    self._admit(request, outbox)
                except SluiceError as exc:
                    outbox.put_nowait(scheduler_pb2.RequestError(
                        request_id=request.request_id, code=exc.code.value[0], message=str(exc)))
                else:
                    live.add(request.request_id)
            elif message.WhichOneof("action") == "abort" and message.abort.request_id in live:
                self.engine.abort(message.abort.request_id)  # its final output arrives on the outbox
        outbox.put_nowait(_END)

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
