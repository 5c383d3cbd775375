"""A request as the scheduler sees it: token ids, counts and the KV blocks it holds."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from services.common.sampling import SamplingParams
from services.common.step import SampledToken


class RequestStatus(enum.Enum):
    WAITING = enum.auto()  # never scheduled; holds no blocks
    RUNNING = enum.auto()  # known to the worker; holds blocks
    PREEMPTED = enum.auto()  # blocks freed, waiting to recompute prompt + outputs
    FINISHED = enum.auto()  # stopped or aborted; holds no blocks


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS or a stop id
    LENGTH = "length"  # max_tokens or max_model_len reached
    ABORT = "abort"  # cancelled by the client
    ERROR = "error"  # failed on the worker


@dataclass(eq=False)
class Request:
    """Invariant: 0 <= num_computed_tokens <= num_tokens + num_pending_tokens, and block_ids cover
    num_computed_tokens.

    Compared by identity: queues find and remove a request by the object itself.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    eos_token_ids: list[int]  # the model's EOS ids; ignored when sampling.ignore_eos
    max_model_len: int  # prompt + output never exceeds this
    arrival_time: float = field(default_factory=time.monotonic)

    output_token_ids: list[int] = field(default_factory=list, init=False)
    # One SampledToken per output token when sampling.logprobs is set, else None.
    output_logprobs: list[SampledToken] | None = field(default=None, init=False)
    num_computed_tokens: int = field(default=0, init=False)  # tokens whose KV is (being) computed
    # Tokens that steps still in flight will sample: known to exist, not yet known in value. With
    # overlapped scheduling the next step computes a pending token (the worker knows its value).
    num_pending_tokens: int = field(default=0, init=False)
    block_ids: list[int] = field(default_factory=list, init=False)  # owned by the BlockManager
    status: RequestStatus = field(default=RequestStatus.WAITING, init=False)
    finish_reason: FinishReason | None = field(default=None, init=False)
    num_cached_tokens: int = field(default=0, init=False)  # prefix-cache hits at first schedule
    num_preemptions: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.prompt_token_ids = list(self.prompt_token_ids)
        self.eos_token_ids = list(self.eos_token_ids)
        if self.sampling.logprobs is not None:
            self.output_logprobs = []

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED


@dataclass
class RequestOutput:
    """What one step produced for one request (exactly one new token in this scheduler)."""

    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[SampledToken]  # empty when logprobs were not asked for
    finished: bool
    finish_reason: FinishReason | None
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
