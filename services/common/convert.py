"""Protobuf <-> domain dataclass conversion (`to_pb` / `from_pb`), used by servicers and clients only.
Domain code never sees protobuf."""
from __future__ import annotations

from services.common.pb import common_pb2, worker_pb2
from services.common.sampling import SamplingParams
from services.common.step import (
    CachedRequestData,
    CacheSpec,
    NewRequestData,
    SampledToken,
    StepPlan,
    StepResult,
)

DEFAULT_MAX_TOKENS = 256

FINISH_REASON_TO_PB = {
    None: common_pb2.FINISH_REASON_UNSPECIFIED,
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "abort": common_pb2.FINISH_REASON_ABORT,
    "error": common_pb2.FINISH_REASON_ERROR,
}
FINISH_REASON_FROM_PB = {v: k for k, v in FINISH_REASON_TO_PB.items()}


def sampling_from_pb(pb: common_pb2.SamplingParams, room: int | None = None) -> SamplingParams:
    """Unset fields take defaults; an unset max_tokens is DEFAULT_MAX_TOKENS capped at `room`
    (the context left after the prompt) when room is known."""
    default = SamplingParams()
    if pb.HasField("max_tokens"):
        max_tokens = pb.max_tokens
    else:
        max_tokens = DEFAULT_MAX_TOKENS if room is None else max(1, min(DEFAULT_MAX_TOKENS, room))

    def opt(name: str):
        return getattr(pb, name) if pb.HasField(name) else getattr(default, name)

    return SamplingParams(
        temperature=opt("temperature"), top_p=opt("top_p"), top_k=opt("top_k"), min_p=opt("min_p"),
        repetition_penalty=opt("repetition_penalty"), frequency_penalty=opt("frequency_penalty"),
        presence_penalty=opt("presence_penalty"),
        seed=pb.seed if pb.HasField("seed") else None, max_tokens=max_tokens,
        min_tokens=opt("min_tokens"), stop=list(pb.stop), stop_token_ids=list(pb.stop_token_ids),
        ignore_eos=pb.ignore_eos, logprobs=pb.logprobs if pb.HasField("logprobs") else None)


def sampling_to_pb(p: SamplingParams, include_stop: bool = True) -> common_pb2.SamplingParams:
    pb = common_pb2.SamplingParams(
        temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, min_p=p.min_p,
        repetition_penalty=p.repetition_penalty, frequency_penalty=p.frequency_penalty,
        presence_penalty=p.presence_penalty, max_tokens=p.max_tokens, min_tokens=p.min_tokens,
        stop_token_ids=p.stop_token_ids, ignore_eos=p.ignore_eos)
    if include_stop:
        pb.stop.extend(p.stop)
    if p.seed is not None:
        pb.seed = p.seed
    if p.logprobs is not None:
        pb.logprobs = p.logprobs
    return pb


def logprob_to_pb(t: SampledToken) -> common_pb2.TokenLogprob:
    return common_pb2.TokenLogprob(
        token_id=t.token_id, logprob=t.logprob if t.logprob is not None else 0.0,
        top_logprobs=[common_pb2.TopLogprob(token_id=i, logprob=lp) for i, lp in t.top_logprobs])


def logprob_from_pb(request_id: str, pb: common_pb2.TokenLogprob) -> SampledToken:
    return SampledToken(request_id=request_id, token_id=pb.token_id, logprob=pb.logprob,
                        top_logprobs=[(t.token_id, t.logprob) for t in pb.top_logprobs])


def plan_to_pb(plan: StepPlan) -> worker_pb2.StepRequest:
    return worker_pb2.StepRequest(
        step_id=plan.step_id,
        new_requests=[worker_pb2.NewRequest(
            request_id=r.request_id, prompt_token_ids=r.prompt_token_ids,
            output_token_ids=r.output_token_ids, sampling=sampling_to_pb(r.sampling, False),
            block_ids=r.block_ids, num_computed_tokens=r.num_computed_tokens)
            for r in plan.new_requests],
        cached_requests=[worker_pb2.CachedRequest(
            request_id=r.request_id, new_block_ids=r.new_block_ids,
            num_computed_tokens=r.num_computed_tokens) for r in plan.cached_requests],
        scheduled_request_ids=list(plan.num_scheduled_tokens),
        num_scheduled_tokens=list(plan.num_scheduled_tokens.values()),
        finished_request_ids=plan.finished_request_ids)


def plan_from_pb(pb: worker_pb2.StepRequest) -> StepPlan:
    return StepPlan(
        step_id=pb.step_id,
        new_requests=[NewRequestData(
            request_id=r.request_id, prompt_token_ids=list(r.prompt_token_ids),
            output_token_ids=list(r.output_token_ids), sampling=sampling_from_pb(r.sampling),
            block_ids=list(r.block_ids), num_computed_tokens=r.num_computed_tokens)
            for r in pb.new_requests],
        cached_requests=[CachedRequestData(
            request_id=r.request_id, new_block_ids=list(r.new_block_ids),
            num_computed_tokens=r.num_computed_tokens) for r in pb.cached_requests],
        num_scheduled_tokens=dict(zip(pb.scheduled_request_ids, pb.num_scheduled_tokens)),
        finished_request_ids=list(pb.finished_request_ids))


def result_to_pb(result: StepResult, compute_seconds: float = 0.0) -> worker_pb2.StepResponse:
    """Columnar: two packed lists for every row, TokenLogprob messages only for rows that asked."""
    rows = [row for row, t in enumerate(result.sampled) if t.logprob is not None]
    return worker_pb2.StepResponse(
        step_id=result.step_id, compute_seconds=compute_seconds,
        sampled_request_ids=[t.request_id for t in result.sampled],
        sampled_token_ids=[t.token_id for t in result.sampled],
        logprob_rows=rows, logprobs=[logprob_to_pb(result.sampled[row]) for row in rows])


def result_from_pb(pb: worker_pb2.StepResponse) -> StepResult:
    num_rows = len(pb.sampled_request_ids)
    if num_rows != len(pb.sampled_token_ids) or len(pb.logprob_rows) != len(pb.logprobs) \
            or any(row >= num_rows for row in pb.logprob_rows):
        raise ValueError("StepResponse: parallel lists differ in length or a logprob row is out of range")
    sampled = [SampledToken(request_id=rid, token_id=token_id)
               for rid, token_id in zip(pb.sampled_request_ids, pb.sampled_token_ids)]
    for row, logprob in zip(pb.logprob_rows, pb.logprobs):
        sampled[row] = logprob_from_pb(sampled[row].request_id, logprob)
    return StepResult(step_id=pb.step_id, sampled=sampled)


def cache_spec_to_pb(spec: CacheSpec) -> worker_pb2.CacheSpec:
    return worker_pb2.CacheSpec(num_blocks=spec.num_blocks, block_size=spec.block_size,
                                max_model_len=spec.max_model_len, vocab_size=spec.vocab_size,
                                eos_token_ids=spec.eos_token_ids, model_name=spec.model_name)


def cache_spec_from_pb(pb: worker_pb2.CacheSpec) -> CacheSpec:
    return CacheSpec(num_blocks=pb.num_blocks, block_size=pb.block_size,
                     max_model_len=pb.max_model_len, vocab_size=pb.vocab_size,
                     eos_token_ids=list(pb.eos_token_ids), model_name=pb.model_name)
