"""The front engine: turns a public request into token ids, validates it, streams token ids from a
scheduler and turns them back into text deltas with stop strings applied.

Invariant: the concatenated `TextChunk.text` of a stream equals the decode of its token ids up to
(and excluding) the first stop string, byte for byte.
"""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from services.common.errors import Unavailable
from services.common.sampling import SamplingParams
from services.common.step import SampledToken
from services.common.validation import Limits, validate_prompt_ids, validate_sampling
from services.tokenizer.detokenizer import IncrementalDetokenizer
from services.tokenizer.scheduler_client import SchedulerClient
from services.tokenizer.stop import StopStringMatcher
from services.tokenizer.tokenizer import TextTokenizer


@dataclass
class TextChunk:
    text: str
    token_ids: list[int]
    logprobs: list[SampledToken] = field(default_factory=list)
    finish_reason: str | None = None  # stop | length | abort | error on the last chunk
    stop_string: str = ""  # the stop string that ended the stream, if one did
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0


class Front:
    def __init__(self, tokenizer: TextTokenizer, scheduler: SchedulerClient):
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self._limits: Limits | None = None

    async def limits(self) -> Limits:
        """The replica's limits; its max_model_len may be lower than the checkpoint's."""
        if self._limits is None:
            try:
                info = await self.scheduler.info()
            except Exception as exc:  # noqa: BLE001 - any failure means no scheduler to talk to
                raise Unavailable(f"scheduler at {self.scheduler.address} is unavailable: {exc}") from exc
            self._limits = Limits(max_model_len=min(info.max_model_len, self.tokenizer.max_model_len),
                                  vocab_size=max(info.vocab_size, self.tokenizer.vocab_size))
        return self._limits

    async def encode(self, prompt: str | None = None, messages: list[dict] | None = None,
                     add_special_tokens: bool = True) -> list[int]:
        if messages is not None:
            return await asyncio.to_thread(self.tokenizer.apply_chat_template, messages)
        return await asyncio.to_thread(self.tokenizer.encode, prompt or "", add_special_tokens)

    async def validate(self, prompt_token_ids: list[int], sampling: SamplingParams) -> None:
        limits = await self.limits()
        validate_sampling(sampling, limits)
        validate_prompt_ids(prompt_token_ids, sampling.max_tokens, limits)

    async def generate(self, prompt_token_ids: list[int], sampling: SamplingParams,
                       skip_special_tokens: bool = True,
                       timeout: float | None = None) -> AsyncIterator[TextChunk]:
        """Stream text chunks for a validated request. Closing the iterator early aborts the
        request downstream."""
        request_id = uuid.uuid4().hex
        detok = IncrementalDetokenizer(self.tokenizer, prompt_token_ids, skip_special_tokens)
        stops = StopStringMatcher(sampling.stop) if sampling.stop else None
        stream = self.scheduler.generate(request_id, prompt_token_ids, sampling, timeout)
        num_output = 0
        try:
            async for chunk in stream:
                num_output += len(chunk.token_ids)
                text = detok.push(chunk.token_ids)
                if chunk.finish_reason is not None:
                    text += detok.flush()
                out = TextChunk(text=text, token_ids=chunk.token_ids, logprobs=chunk.logprobs,
                                finish_reason=chunk.finish_reason,
                                num_prompt_tokens=chunk.num_prompt_tokens,
                                num_output_tokens=chunk.num_output_tokens,
                                num_cached_tokens=chunk.num_cached_tokens)
                if stops is not None:
                    out.text, stopped = stops.feed(text)
                    if stopped:
                        out.finish_reason = "stop"
                        out.stop_string = stops.matched or ""
                        out.num_prompt_tokens = len(prompt_token_ids)
                        out.num_output_tokens = num_output
                        yield out
                        return
                    if chunk.finish_reason is not None:
                        out.text += stops.flush()
                yield out
                if chunk.finish_reason is not None:
                    return
        finally:
            await stream.aclose()
