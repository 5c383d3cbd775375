"""The serving benchmark's workload: random-token prompts and the requests' send times.

Every request has a prompt of `input_len` ids drawn uniformly, with replacement, from the allowed
ids ([lo, vocab_size) minus the special and EOS ids), and asks for exactly `output_len` tokens. Send
times are either all at once or spaced by gamma-distributed gaps (Poisson arrivals at burstiness 1).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class BenchRequest:
    request_id: str
    prompt_token_ids: list[int]
    output_len: int


def special_token_ids(model_dir: str | None) -> set[int]:
    """Ids of the special tokens that `model_dir`'s tokenizer.json (`added_tokens`) and
    tokenizer_config.json (`added_tokens_decoder`) declare; empty without a directory or files."""
    if not model_dir:
        return set()
    ids: set[int] = set()
    tokenizer_json = Path(model_dir) / "tokenizer.json"
    if tokenizer_json.is_file():
        added = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("added_tokens", [])
        ids |= {int(t["id"]) for t in added if t.get("special")}
    tokenizer_config = Path(model_dir) / "tokenizer_config.json"
    if tokenizer_config.is_file():
        decoder = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
        ids |= {int(i) for i, t in decoder.items() if t.get("special")}
    return ids


def allowed_token_ids(vocab_size: int, lo: int, excluded: set[int]) -> np.ndarray:
    """The ids in [lo, vocab_size) that are not in `excluded`."""
    ids = np.arange(lo, vocab_size)
    return ids[~np.isin(ids, sorted(excluded))]


def random_prompts(num: int, input_len: int, allowed: np.ndarray,
                   rng: np.random.Generator) -> list[list[int]]:
    """`num` prompts of `input_len` ids drawn uniformly, with replacement, from `allowed`."""
    return rng.choice(allowed, size=(num, input_len)).tolist()


def arrival_offsets(num: int, request_rate: float, burstiness: float,
                    rng: np.random.Generator) -> list[float]:
    """Send times in seconds from the benchmark start.

    request_rate = inf: every request at 0 (all at once). Otherwise the first request goes at 0 and
    the gaps between successive requests are gamma(shape=burstiness, scale=1/(rate*burstiness))
    draws: mean 1/rate; burstiness 1 makes them exponential, i.e. Poisson arrivals at `rate`
    requests/s (coefficient of variation 1/sqrt(burstiness)).
    """
    if math.isinf(request_rate):
        return [0.0] * num
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=num - 1)
    return [0.0, *np.cumsum(gaps).tolist()]


def make_requests(prefix: str, prompts: list[list[int]], output_len: int) -> list[BenchRequest]:
    return [BenchRequest(f"{prefix}-{i}", prompt, output_len) for i, prompt in enumerate(prompts)]
