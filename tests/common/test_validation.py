"""Every invalid request is rejected with a message that names the field; valid ones pass."""
from __future__ import annotations

import math

import pytest

from services.common.sampling import SamplingParams
from services.common.validation import (
    InvalidRequestError,
    Limits,
    validate_prompt_ids,
    validate_prompt_text,
    validate_sampling,
)

LIMITS = Limits(max_model_len=2048, vocab_size=2000)


def test_defaults_and_typical_requests_pass():
    validate_sampling(SamplingParams(), LIMITS)
    validate_sampling(SamplingParams(
        temperature=0.0, top_p=0.9, top_k=50, min_p=0.05, repetition_penalty=1.2,
        frequency_penalty=-2.0, presence_penalty=2.0, seed=2**63 - 1, max_tokens=1 << 20,
        min_tokens=5, stop=["\n\n", "x" * 256], stop_token_ids=[0, 1999], logprobs=20), LIMITS)
    validate_prompt_ids([0, 5, 1999], max_tokens=2045, limits=LIMITS)
    validate_prompt_text("hello", LIMITS)


@pytest.mark.parametrize("fields, words", [
    ({"temperature": math.nan}, ["temperature", "finite"]),
    ({"temperature": math.inf}, ["temperature", "finite"]),
    ({"temperature": -0.1}, ["temperature", ">= 0"]),
    ({"temperature": "hot"}, ["temperature", "number"]),
    ({"top_p": 0.0}, ["top_p", "(0, 1]"]),
    ({"top_p": 1.01}, ["top_p", "(0, 1]"]),
    ({"top_p": math.nan}, ["top_p"]),
    ({"top_k": -1}, ["top_k", ">= 0"]),
    ({"top_k": 1.5}, ["top_k", "integer"]),
    ({"min_p": -0.01}, ["min_p", "[0, 1]"]),
    ({"min_p": 1.5}, ["min_p", "[0, 1]"]),
    ({"repetition_penalty": 0.0}, ["repetition_penalty", "> 0"]),
    ({"repetition_penalty": -1.0}, ["repetition_penalty", "> 0"]),
    ({"repetition_penalty": math.nan}, ["repetition_penalty"]),
    ({"frequency_penalty": 2.5}, ["frequency_penalty", "[-2, 2]"]),
    ({"frequency_penalty": math.nan}, ["frequency_penalty"]),
    ({"presence_penalty": -2.5}, ["presence_penalty", "[-2, 2]"]),
    ({"presence_penalty": math.inf}, ["presence_penalty"]),
    ({"max_tokens": 0}, ["max_tokens", "[1, 1048576]"]),
    ({"max_tokens": (1 << 20) + 1}, ["max_tokens", "1048577"]),
    ({"min_tokens": -1}, ["min_tokens"]),
    ({"min_tokens": 17, "max_tokens": 16}, ["min_tokens", "max_tokens=16", "17"]),
    ({"seed": -1}, ["seed", "2**63"]),
    ({"seed": 2**63}, ["seed", "2**63"]),
    ({"stop": ["s"] * 17}, ["stop", "17", "16"]),
    ({"stop": ["x" * 257]}, ["stop[0]", "257", "256"]),
    ({"stop": ["ok", ""]}, ["stop[1]", "empty"]),
    ({"stop_token_ids": [2000]}, ["stop_token_ids[0]", "2000", "[0, 2000)"]),
    ({"stop_token_ids": [-1]}, ["stop_token_ids[0]", "-1"]),
    ({"stop_token_ids": [1] * 65}, ["stop_token_ids", "65", "64"]),
    ({"logprobs": -1}, ["logprobs", "[0, 20]"]),
    ({"logprobs": 21}, ["logprobs", "[0, 20]"]),
])
def test_invalid_sampling_is_rejected_naming_the_field(fields, words):
    with pytest.raises(InvalidRequestError) as excinfo:
        validate_sampling(SamplingParams(**fields), LIMITS)
    for word in words:
        assert word in str(excinfo.value)


def test_invalid_request_error_maps_to_invalid_argument():
    import grpc

    from services.common.errors import InvalidArgument

    assert issubclass(InvalidRequestError, ValueError)
    assert issubclass(InvalidRequestError, InvalidArgument)
    assert InvalidRequestError.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("ids, max_tokens, words", [
    ([], 16, ["prompt", "empty"]),
    ([1, 2000], 16, ["position 1", "2000", "[0, 2000)"]),
    ([-1], 16, ["position 0", "-1"]),
    ([1, 2.0], 16, ["position 1"]),
    ([1] * 2000, 49, ["2000 tokens", "max_tokens is 49", "2049", "2048"]),
    ([1] * 2049, 1, ["2049 tokens", "2048"]),
])
def test_invalid_prompt_ids_are_rejected_with_numbers(ids, max_tokens, words):
    with pytest.raises(InvalidRequestError) as excinfo:
        validate_prompt_ids(ids, max_tokens, LIMITS)
    for word in words:
        assert word in str(excinfo.value)


def test_prompt_that_exactly_fills_the_context_passes():
    validate_prompt_ids([1] * 2000, 48, LIMITS)


@pytest.mark.parametrize("text, words", [
    ("", ["prompt", "empty"]),
    ("x" * 11, ["11 characters", "10"]),
    (b"bytes", ["prompt", "string"]),
])
def test_invalid_prompt_text_is_rejected(text, words):
    with pytest.raises(InvalidRequestError) as excinfo:
        validate_prompt_text(text, Limits(max_model_len=2048, vocab_size=2000, max_prompt_chars=10))
    for word in words:
        assert word in str(excinfo.value)
