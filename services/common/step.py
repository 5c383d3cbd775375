"""The scheduler -> worker step contract, as plain dataclasses.

One `StepPlan` goes to the worker per step and one `StepResult` comes back. A request's data is sent
once (`NewRequestData`); afterwards only what changed (`CachedRequestData`). The worker owns token
contents: it appends each token it samples to its own copy of the request, so the scheduler only
counts tokens. A request is `num_computed_tokens` catching up with `num_tokens`; prefill and decode
are the same thing at different sizes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from services.common.sampling import SamplingParams


@dataclass
class NewRequestData:
    """A request the worker has not seen (or must rebuild after preemption)."""

    request_id: str
    prompt_token_ids: list[int]
    # Tokens generated before a preemption; empty for a fresh request. The worker treats
    # prompt + output as the sequence to (re)compute and uses output for penalties.
    output_token_ids: list[int]
    sampling: SamplingParams
    block_ids: list[int]  # the request's whole block table so far
    num_computed_tokens: int  # tokens whose KV is already in the cache (prefix-cache hits)


@dataclass
class CachedRequestData:
    """A request the worker already holds: only the new blocks and the scheduler's count."""

    request_id: str
    new_block_ids: list[int]  # appended to the worker's block table
    num_computed_tokens: int  # must equal the worker's own count (checked)


@dataclass
class StepPlan:
    step_id: int
    new_requests: list[NewRequestData] = field(default_factory=list)
    cached_requests: list[CachedRequestData] = field(default_factory=list)
    # request_id -> tokens to compute this step, for every request in the batch (new and cached).
    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)
    # Requests whose worker state must be dropped before this step (finished, aborted, preempted).
    finished_request_ids: list[str] = field(default_factory=list)

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())


@dataclass
class SampledToken:
    request_id: str
    token_id: int
    logprob: float | None = None  # log-probability of token_id, when logprobs were asked for
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)  # (token_id, logprob)


@dataclass
class StepResult:
    """Sampled ids of every request whose scheduled tokens reached the end of its sequence.

    A request in the middle of a chunked prefill gets no entry.
    """

    step_id: int
    sampled: list[SampledToken] = field(default_factory=list)


@dataclass
class CacheSpec:
    """What the worker tells the scheduler at start-up."""

    num_blocks: int
    block_size: int
    max_model_len: int
    vocab_size: int
    eos_token_ids: list[int]
    model_name: str = ""
