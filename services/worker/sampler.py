"""Batched next-token sampling on the logits' device.

`SamplingBatch.build` turns one step's per-request parameters into tensors once; `sample` is then
tensor ops over the whole batch (seeded rows draw counter-based noise, all at once). Invariant: row i's result
depends only on row i's logits, parameters and token history (and for a seeded row on
`mix_seed(seed, num_output_tokens)`), never on the other rows, their number or their order.

Pipeline per row: min_tokens mask -> penalties -> greedy argmax, or temperature -> top-k -> top-p
-> min-p -> exponential race. Logprobs always describe the raw model distribution.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from kernels.sampling.argmax import argmax
from services.common.sampling import SamplingParams

_MASK64 = (1 << 64) - 1


def _tensor(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list on `device` without waiting for the device (pinned, asynchronous copy):
    a plain copy to CUDA would block until every queued kernel finished."""
    if torch.device(device).type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


def mix_seed(seed: int, num_output_tokens: int) -> int:
    """Generator seed in [0, 2**63) for one (request seed, step); splitmix64, stable across processes."""
    z = (seed * 0x9E3779B97F4A7C15 + (num_output_tokens + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


@dataclass
class Penalties:
    """Penalty state for the P rows that have a non-neutral penalty; other rows are untouched."""

    rows: torch.Tensor  # [P] long, batch rows
    repetition: torch.Tensor  # [P] f32
    frequency: torch.Tensor  # [P] f32
    presence: torch.Tensor  # [P] f32
    output_counts: torch.Tensor  # [P, V] f32, occurrences of each id in the output
    seen: torch.Tensor  # [P, V] bool, id occurs in the prompt or the output


@dataclass
class SamplingBatch:
    """One step's sampling parameters as tensors on the logits' device; B rows, V = vocab_size."""

    vocab_size: int
    # The five per-row parameter tensors are None when every row is greedy (`all_greedy`): argmax
    # needs none of them, and a step of hundreds of greedy rows then builds no tensor at all.
    greedy: torch.Tensor | None  # [B] bool, temperature == 0
    temperature: torch.Tensor | None  # [B] f32, 1.0 on greedy rows so that division is safe
    top_k: torch.Tensor | None  # [B] long in [1, V]; V where top-k is off
    top_p: torch.Tensor | None  # [B] f32 in (0, 1]
    min_p: torch.Tensor | None  # [B] f32 in [0, 1]
    all_greedy: bool
    use_top_k_top_p: bool  # some row has top_k > 0 or top_p < 1
    use_min_p: bool  # some row has min_p > 0
    blocked_rows: torch.Tensor | None  # [N] long; (blocked_rows[i], blocked_ids[i]) forced to -inf
    blocked_ids: torch.Tensor | None  # [N] long
    penalties: Penalties | None
    seeded_rows: torch.Tensor | None  # [R] long, every non-greedy seeded row (None: no such row)
    row_seeds: torch.Tensor | None  # [R] long, mix_seed(seed, num_output_tokens) of those rows
    any_unseeded_random: bool  # some non-greedy row draws from the device's default generator
    num_logprobs: list[int | None]  # per row, params.logprobs
    max_logprobs: int  # largest requested n (clamped to V); -1 when no row wants logprobs

    @classmethod
    def build(cls, params: list[SamplingParams], prompt_token_ids: list[list[int]],
              output_token_ids: list[list[int]], eos_token_ids: list[int], vocab_size: int,
              device: torch.device) -> SamplingBatch:
        """Tensors for one step. Params are assumed validated upstream.

        `eos_token_ids` are the model's EOS ids, shared by all rows. While a row has fewer than
        `min_tokens` outputs, its `stop_token_ids` and (unless `ignore_eos`) the EOS ids are blocked.
        """
        num_rows, vocab = len(params), vocab_size
        assert len(prompt_token_ids) == len(output_token_ids) == num_rows
        f32 = dict(dtype=torch.float32, device=device)
        greedy = [p.temperature == 0.0 for p in params]
        blocked = [(row, t) for row, p in enumerate(params) if len(output_token_ids[row]) < p.min_tokens
                   for t in sorted(set(p.stop_token_ids + ([] if p.ignore_eos else eos_token_ids)))]
        blocked_rows = blocked_ids = None
        if blocked:
            _check_ids([[t for _, t in blocked]], vocab)
            blocked_rows, blocked_ids = _tensor(blocked, dtype=torch.long, device=device).unbind(1)
        requested = [p.logprobs for p in params if p.logprobs is not None]
        all_greedy = all(greedy)
        return cls(
            vocab_size=vocab,
            greedy=None if all_greedy else _tensor(greedy, dtype=torch.bool, device=device),
            temperature=None if all_greedy else _tensor(
                [1.0 if g else p.temperature for g, p in zip(greedy, params)], **f32),
            top_k=None if all_greedy else _tensor(
                [min(p.top_k, vocab) if p.top_k > 0 else vocab for p in params], dtype=torch.long, device=device),
            top_p=None if all_greedy else _tensor([p.top_p for p in params], **f32),
            min_p=None if all_greedy else _tensor([p.min_p for p in params], **f32),
            all_greedy=all_greedy,
            use_top_k_top_p=any(not g and (p.top_k > 0 or p.top_p < 1.0)
                                for g, p in zip(greedy, params)),
            use_min_p=any(not g and p.min_p > 0.0 for g, p in zip(greedy, params)),
            blocked_rows=blocked_rows,
            blocked_ids=blocked_ids,
            penalties=_build_penalties(params, prompt_token_ids, output_token_ids, vocab, device),
            **_seeded(params, greedy, output_token_ids, device),
            any_unseeded_random=any(not g and p.seed is None for g, p in zip(greedy, params)),
            num_logprobs=[p.logprobs for p in params],
            max_logprobs=min(max(requested), vocab) if requested else -1,
        )


def _seeded(params: list[SamplingParams], greedy: list[bool], output_token_ids: list[list[int]],
            device: torch.device) -> dict:
    seeded = [(row, mix_seed(p.seed, len(output_token_ids[row])))
              for row, (g, p) in enumerate(zip(greedy, params)) if not g and p.seed is not None]
    if not seeded:
        return dict(seeded_rows=None, row_seeds=None)
    return dict(seeded_rows=_tensor([row for row, _ in seeded], torch.long, device),
                row_seeds=_tensor([seed for _, seed in seeded], torch.long, device))


def _check_ids(token_lists: list[list[int]], vocab_size: int) -> None:
    """Raise unless every id lies in [0, V): an out-of-range scatter kills a CUDA context."""
    flat = list(itertools.chain.from_iterable(token_lists))
    if flat and (min(flat) < 0 or max(flat) >= vocab_size):
        raise ValueError(f"token id outside [0, {vocab_size})")


def _build_penalties(params: list[SamplingParams], prompt_token_ids: list[list[int]],
                     output_token_ids: list[list[int]], vocab_size: int,
                     device: torch.device) -> Penalties | None:
    """Counts and seen-masks for the rows that need penalties; None when no row does."""
    rows = [row for row, p in enumerate(params) if p.needs_penalties]
    if not rows:
        return None

    def padded(token_lists: list[list[int]]) -> torch.Tensor:  # [P, longest] long, padded with V
        _check_ids(token_lists, vocab_size)
        width = max(map(len, token_lists))
        return _tensor([t + [vocab_size] * (width - len(t)) for t in token_lists], torch.long, device)

    shape = (len(rows), vocab_size + 1)  # column V absorbs the padding
    outputs = padded([output_token_ids[row] for row in rows])
    counts = torch.zeros(shape, dtype=torch.float32, device=device)
    counts.scatter_add_(1, outputs, torch.ones_like(outputs, dtype=torch.float32))
    seen = torch.zeros(shape, dtype=torch.bool, device=device)
    seen.scatter_(1, padded([prompt_token_ids[row] for row in rows]), True)
    seen |= counts > 0
    chosen = [params[row] for row in rows]
    f32 = dict(dtype=torch.float32, device=device)
    return Penalties(
        rows=_tensor(rows, dtype=torch.long, device=device),
        repetition=_tensor([p.repetition_penalty for p in chosen], **f32),
        frequency=_tensor([p.frequency_penalty for p in chosen], **f32),
        presence=_tensor([p.presence_penalty for p in chosen], **f32),
        output_counts=counts[:, :vocab_size],
        seen=seen[:, :vocab_size],
    )


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[float | None]  # raw-distribution logprob of token_ids[i]; None if not requested
    top_logprobs: list[list[tuple[int, float]]]  # top-n (id, raw logprob), descending; [] if n is 0/None


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Repetition (CTRL: seen ids x/p if x > 0 else x*p), then x -= f*count + p*[count > 0].

    `logits` is float32 [B, V] and is modified in place and returned.
    """
    pen = batch.penalties
    if pen is None:
        return logits
    x = logits[pen.rows]  # [P, V]
    rep = pen.repetition[:, None]
    x = torch.where(pen.seen, torch.where(x > 0, x / rep, x * rep), x)
    x -= pen.frequency[:, None] * pen.output_counts
    x -= pen.presence[:, None] * (pen.output_counts > 0).float()
    logits[pen.rows] = x
    return logits


def process_logits(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """A new float32 [B, V] tensor: `logits` with min_tokens blocks (-inf) and penalties applied."""
    x = logits.to(torch.float32, copy=True)
    if batch.blocked_rows is not None:
        x[batch.blocked_rows, batch.blocked_ids] = float("-inf")
    return apply_penalties(x, batch)


def apply_top_k_top_p(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Set to -inf every id outside the row's top-k, then outside its nucleus of mass top_p.

    The nucleus is the shortest prefix (by descending logit) whose mass reaches top_p; the most
    likely id is always kept. Ties at the top-k boundary are broken by sort order. Out of place.
    """
    sorted_logits, sorted_ids = logits.sort(dim=-1, descending=True)  # [B, V]
    ranks = torch.arange(logits.shape[-1], device=logits.device)
    sorted_logits = sorted_logits.masked_fill(ranks >= batch.top_k[:, None], float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    top_p = torch.where(batch.top_p >= 1.0, torch.inf, batch.top_p)[:, None]
    outside = (mass_before >= top_p) & (ranks > 0)
    sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, sorted_ids, sorted_logits)


def apply_min_p(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Set to -inf every id whose probability is below min_p * (the row's max probability)."""
    logp = logits.log_softmax(dim=-1)
    threshold = logp.max(dim=-1, keepdim=True).values + batch.min_p[:, None].log()
    return logits.masked_fill(logp < threshold, float("-inf"))


_GOLDEN, _MIX1, _MIX2 = (c - (1 << 64) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9,
                                                     0x94D049BB133111EB))  # as signed int64


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def seeded_exponential(row_seeds: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[R, V] float32 Exp(1) noise, a pure function of (row seed, column): splitmix64 of
    seed + (column + 1) * golden ratio, its top 24 bits as a uniform u in (0, 1), then -log u.
    Counter-based, so every seeded row of a batch is drawn at once, with no generator objects and
    no Python loop, and the same on any device (int64 arithmetic wraps identically)."""
    columns = torch.arange(1, vocab_size + 1, dtype=torch.int64, device=row_seeds.device)
    z = row_seeds[:, None] + columns[None, :] * _GOLDEN  # [R, V], wraps mod 2**64
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    z = z ^ _shift_right(z, 31)
    u = (_shift_right(z, 40).float() + 0.5) * (1.0 / (1 << 24))
    return -torch.log(u)


def exponential_race(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """[B] long: argmax(softmax(logits) / q), q ~ Exp(1) per element, computed as argmax(x - log q).

    A seeded row's q is `seeded_exponential` of its mix_seed, so it depends only on
    (seed, num_output_tokens, V). Other rows share the device's default generator.
    """
    q = torch.empty_like(logits)
    if batch.any_unseeded_random:
        q.exponential_()
    else:
        q.fill_(1.0)
    if batch.seeded_rows is not None:
        q[batch.seeded_rows] = seeded_exponential(batch.row_seeds, logits.shape[-1]).to(q.dtype)
    return (logits - q.clamp_min_(torch.finfo(q.dtype).tiny).log_()).argmax(dim=-1)


@dataclass
class SampleTensors:
    """A step's samples before they reach the host: S rows, on one device (or copied to the CPU)."""

    token_ids: torch.Tensor  # [S] long
    logprobs: torch.Tensor | None  # [S] f32, raw logprob of token_ids, when some row asks
    top_values: torch.Tensor | None  # [S, n] f32, when some row asks for n > 0
    top_ids: torch.Tensor | None  # [S, n] long

    def to_host(self) -> SampleTensors:
        """Start copying to the CPU without waiting; valid once the device reaches this point."""
        def copy(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None or t.device.type == "cpu":
                return t
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)  # pageable would block
            return host.copy_(t, non_blocking=True)
        return SampleTensors(copy(self.token_ids), copy(self.logprobs), copy(self.top_values),
                             copy(self.top_ids))


def sample_tensors(logits: torch.Tensor, batch: SamplingBatch, greedy_ids: torch.Tensor | None = None
                   ) -> SampleTensors:
    """One token per row of `logits` [B, V] (any float dtype; computed in float32), on the device,
    with no host synchronisation except a seeded row's generator set-up.

    `greedy_ids` [B], when given, must be the argmax of each row of `logits` (the decode graphs
    compute it); an all-greedy step without blocked ids or penalties then launches nothing but a copy."""
    num_rows = len(batch.num_logprobs)
    assert logits.shape == (num_rows, batch.vocab_size), f"logits {tuple(logits.shape)} != {num_rows} rows"
    raw_argmax_is_greedy = batch.blocked_rows is None and batch.penalties is None
    if greedy_ids is not None and raw_argmax_is_greedy and batch.all_greedy:
        token_ids = greedy_ids.clone()  # the caller's buffer is overwritten by the next replay
    else:
        x = process_logits(logits, batch)
        token_ids = argmax(x)
    if not batch.all_greedy:
        x /= batch.temperature[:, None]
        if batch.use_top_k_top_p:
            x = apply_top_k_top_p(x, batch)
        if batch.use_min_p:
            x = apply_min_p(x, batch)
        token_ids = torch.where(batch.greedy, token_ids, exponential_race(x, batch))
    chosen = top_values = top_ids = None
    if batch.max_logprobs >= 0:
        raw = logits.float().log_softmax(dim=-1)  # [B, V]
        chosen = raw.gather(1, token_ids[:, None]).squeeze(1)
        if batch.max_logprobs > 0:
            top_values, top_ids = raw.topk(batch.max_logprobs, dim=-1)
    return SampleTensors(token_ids, chosen, top_values, top_ids)


def to_output(tensors: SampleTensors, batch: SamplingBatch) -> SamplerOutput:
    """Python lists of a step's samples (reading device tensors waits for the device)."""
    num_rows = len(batch.num_logprobs)
    logprobs: list[float | None] = [None] * num_rows
    top: list[list[tuple[int, float]]] = [[] for _ in range(num_rows)]
    if tensors.logprobs is not None:
        chosen = tensors.logprobs.tolist()
        if tensors.top_values is not None:
            top_values, top_ids = tensors.top_values.tolist(), tensors.top_ids.tolist()
        for row, n in enumerate(batch.num_logprobs):
            if n is not None:
                logprobs[row] = chosen[row]
            if n:
                top[row] = list(zip(top_ids[row][:n], top_values[row][:n]))
    return SamplerOutput(token_ids=tensors.token_ids.tolist(), logprobs=logprobs, top_logprobs=top)


def sample(logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
    """One token per row of `logits` [B, V]; B, V match `batch`."""
    return to_output(sample_tensors(logits, batch), batch)
