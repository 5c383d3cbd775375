"""Request validation at the front door: every bad request is rejected here, before any GPU work.

Each check raises `InvalidRequestError` whose message names the offending field and, where it
helps, the allowed range and the value received. It is a `services.common.errors.InvalidArgument`,
so the shared error handler maps it to `INVALID_ARGUMENT`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from services.common.errors import InvalidArgument
from services.common.sampling import SamplingParams


class InvalidRequestError(InvalidArgument):
    """A client error: the request can never succeed as sent (a ValueError; gRPC INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class Limits:
    """Per-model bounds on what a request may ask for."""

    max_model_len: int  # prompt tokens + max_tokens must fit in this many positions
    vocab_size: int  # valid token ids are [0, vocab_size), added tokens included
    max_tokens_cap: int = 1 << 20  # rejects absurd max_tokens even when the context would fit
    max_stop_strings: int = 16  # most stop strings per request
    max_stop_string_len: int = 256  # most characters in one stop string
    max_stop_token_ids: int = 64  # most extra stop token ids per request
    max_top_logprobs: int = 20  # most alternatives returned per position
    max_prompt_chars: int = 4_000_000  # most characters of text before tokenizing


def validate_sampling(p: SamplingParams, limits: Limits) -> None:
    """Raise InvalidRequestError unless every field of `p` is in range."""
    _check_finite_float("temperature", p.temperature)
    if p.temperature < 0:
        raise InvalidRequestError(f"temperature must be >= 0 (0 means greedy), got {p.temperature}")
    _check_finite_float("top_p", p.top_p)
    if not 0 < p.top_p <= 1:
        raise InvalidRequestError(f"top_p must be in (0, 1], got {p.top_p}")
    _check_int("top_k", p.top_k)
    if p.top_k < 0:
        raise InvalidRequestError(f"top_k must be >= 0 (0 keeps all tokens), got {p.top_k}")
    _check_finite_float("min_p", p.min_p)
    if not 0 <= p.min_p <= 1:
        raise InvalidRequestError(f"min_p must be in [0, 1], got {p.min_p}")
    _check_finite_float("repetition_penalty", p.repetition_penalty)
    if p.repetition_penalty <= 0:
        raise InvalidRequestError(
            f"repetition_penalty must be > 0 (1 means none), got {p.repetition_penalty}")
    for name in ("frequency_penalty", "presence_penalty"):
        value = getattr(p, name)
        _check_finite_float(name, value)
        if not -2 <= value <= 2:
            raise InvalidRequestError(f"{name} must be in [-2, 2], got {value}")
    _check_int("max_tokens", p.max_tokens)
    if not 1 <= p.max_tokens <= limits.max_tokens_cap:
        raise InvalidRequestError(
            f"max_tokens must be in [1, {limits.max_tokens_cap}], got {p.max_tokens}")
    _check_int("min_tokens", p.min_tokens)
    if not 0 <= p.min_tokens <= p.max_tokens:
        raise InvalidRequestError(
            f"min_tokens must be in [0, max_tokens={p.max_tokens}], got {p.min_tokens}")
    if p.seed is not None:
        _check_int("seed", p.seed)
        if not 0 <= p.seed < 2**63:
            raise InvalidRequestError(f"seed must be in [0, 2**63), got {p.seed}")
    _validate_stop(p.stop, limits)
    _validate_stop_token_ids(p.stop_token_ids, limits)
    if p.logprobs is not None:
        _check_int("logprobs", p.logprobs)
        if not 0 <= p.logprobs <= limits.max_top_logprobs:
            raise InvalidRequestError(
                f"logprobs must be in [0, {limits.max_top_logprobs}], got {p.logprobs}")


def validate_prompt_ids(ids: list[int], max_tokens: int, limits: Limits) -> None:
    """Raise unless `ids` is a non-empty list of valid token ids that leaves room for max_tokens."""
    if len(ids) == 0:
        raise InvalidRequestError("prompt is empty: give a prompt, messages or prompt token ids")
    for i, token_id in enumerate(ids):
        if isinstance(token_id, bool) or not isinstance(token_id, int) \
                or not 0 <= token_id < limits.vocab_size:
            raise InvalidRequestError(
                f"prompt token id at position {i} is {token_id!r}; token ids must be integers in "
                f"[0, {limits.vocab_size})")
    if len(ids) + max_tokens > limits.max_model_len:
        raise InvalidRequestError(
            f"prompt has {len(ids)} tokens and max_tokens is {max_tokens}: together "
            f"{len(ids) + max_tokens}, more than the model's max_model_len of "
            f"{limits.max_model_len}; shorten the prompt or lower max_tokens")


def validate_prompt_text(text: str, limits: Limits) -> None:
    """Raise unless `text` is a non-empty string of at most max_prompt_chars characters."""
    if not isinstance(text, str):
        raise InvalidRequestError(f"prompt must be a string, got {type(text).__name__}")
    if not text:
        raise InvalidRequestError("prompt is empty")
    if len(text) > limits.max_prompt_chars:
        raise InvalidRequestError(
            f"prompt has {len(text)} characters, more than the limit of {limits.max_prompt_chars}")


def _validate_stop(stop: list[str], limits: Limits) -> None:
    if len(stop) > limits.max_stop_strings:
        raise InvalidRequestError(
            f"stop has {len(stop)} strings, more than the limit of {limits.max_stop_strings}")
    for i, s in enumerate(stop):
        if not isinstance(s, str):
            raise InvalidRequestError(f"stop[{i}] must be a string, got {type(s).__name__}")
        if not s:
            raise InvalidRequestError(f"stop[{i}] is an empty string; stop strings must be non-empty")
        if len(s) > limits.max_stop_string_len:
            raise InvalidRequestError(
                f"stop[{i}] has {len(s)} characters, more than the limit of "
                f"{limits.max_stop_string_len}")


def _validate_stop_token_ids(ids: list[int], limits: Limits) -> None:
    if len(ids) > limits.max_stop_token_ids:
        raise InvalidRequestError(
            f"stop_token_ids has {len(ids)} ids, more than the limit of {limits.max_stop_token_ids}")
    for i, token_id in enumerate(ids):
        if isinstance(token_id, bool) or not isinstance(token_id, int) \
                or not 0 <= token_id < limits.vocab_size:
            raise InvalidRequestError(
                f"stop_token_ids[{i}] is {token_id!r}; token ids must be integers in "
                f"[0, {limits.vocab_size})")


def _check_finite_float(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise InvalidRequestError(f"{name} must be a finite number, got {value}")


def _check_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{name} must be an integer, got {value!r}")
