"""The worker's per-request state, how a `StepPlan` updates it, and the flat inputs of one step.

Invariants per request: `num_computed_tokens <= num_tokens`; the KV of tokens
`0 .. num_computed_tokens - 1` is in the cache at the slots the block table gives; the block table
covers at least `num_computed_tokens` tokens. A step computes tokens `num_computed_tokens ..
num_computed_tokens + n - 1`; when that reaches `num_tokens`, the request samples one token, which
is appended (so it is computed next step).

`InputBatch.update` validates the whole plan before changing anything: a plan it rejects leaves the
state as it was.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.sampling import SamplingParams
from services.common.step import StepPlan
from services.worker.layers.attention import AttentionMetadata


@dataclass
class RequestState:
    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]  # grows by one per sampled token
    sampling: SamplingParams
    block_ids: list[int]  # the block table; token p is in block_ids[p // block_size]
    num_computed_tokens: int
    # Tokens sampled by launched steps whose values are still on the device, oldest first: each
    # is (that step's sampled ids [S] on the device, this request's row in it).
    pending: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    _block_array: np.ndarray | None = field(default=None, repr=False, compare=False)

    def block_array(self) -> np.ndarray:
        """`block_ids` as int32, rebuilt only when blocks were added (once per block_size tokens)."""
        if self._block_array is None or len(self._block_array) != len(self.block_ids):
            self._block_array = np.array(self.block_ids, dtype=np.int32)
        return self._block_array

    @property
    def num_tokens(self) -> int:
        """Tokens known or pending: prompt + output + pending."""
        return len(self.prompt_token_ids) + len(self.output_token_ids) + len(self.pending)

    @property
    def num_known_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    def token_slice(self, start: int, end: int) -> list[int]:
        """Tokens `start .. end - 1` of prompt + output, without copying the whole sequence."""
        num_prompt = len(self.prompt_token_ids)
        if end <= num_prompt:
            return self.prompt_token_ids[start:end]
        if start >= num_prompt:
            return self.output_token_ids[start - num_prompt:end - num_prompt]
        return self.prompt_token_ids[start:] + self.output_token_ids[:end - num_prompt]


@dataclass
class ModelInputs:
    """One step's flat varlen batch: T tokens of B requests, S of which sample."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    metadata: AttentionMetadata
    logits_indices: torch.Tensor  # [S] int64, the row of each sampling request's last token
    sampling_requests: list[RequestState]  # [S], in the order of logits_indices
    is_decode: bool = False  # every request computes exactly one token


def _num_blocks(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class InputBatch:
    """Holds every live request's state; turns each plan into model inputs."""

    def __init__(self, block_size: int, num_blocks: int, max_model_len: int, max_num_batched_tokens: int,
                 vocab_size: int):
        self.block_size, self.num_blocks, self.vocab_size = block_size, num_blocks, vocab_size
        self.max_model_len, self.max_num_batched_tokens = max_model_len, max_num_batched_tokens
        self.requests: dict[str, RequestState] = {}

    def update(self, plan: StepPlan) -> list[tuple[RequestState, int]]:
        """Apply the plan's finished/new/cached parts; return (request, num_scheduled) in plan order.

        Raises InvalidArgument for a malformed plan and FailedPrecondition when the plan disagrees
        with the worker's state (unknown request, count mismatch); both leave the state untouched.
        """
        finished = set(plan.finished_request_ids)
        alive = {rid: st for rid, st in self.requests.items() if rid not in finished}
        num_tokens: dict[str, tuple[int, int]] = {}  # request -> (num_computed, num_tokens)
        num_block_ids: dict[str, int] = {rid: len(st.block_ids) for rid, st in alive.items()}
        for new in plan.new_requests:
            rid = new.request_id
            if rid in alive or rid in num_tokens:
                raise FailedPrecondition(f"request {rid!r} is sent as new but the worker already holds it")
            total = len(new.prompt_token_ids) + len(new.output_token_ids)
            if not new.prompt_token_ids or total > self.max_model_len:
                raise InvalidArgument(f"request {rid!r} has {total} tokens; need 1..{self.max_model_len} "
                                      "and a non-empty prompt")
            if any(not 0 <= t < self.vocab_size for t in (*new.prompt_token_ids, *new.output_token_ids)):
                raise InvalidArgument(f"request {rid!r} has token ids outside [0, {self.vocab_size})")
            if not 0 <= new.num_computed_tokens < total:
                raise InvalidArgument(f"request {rid!r}: num_computed_tokens {new.num_computed_tokens} "
                                      f"not in [0, {total})")
            self._check_block_ids(rid, new.block_ids)
            num_tokens[rid] = (new.num_computed_tokens, total)
            num_block_ids[rid] = len(new.block_ids)
        cached_seen: set[str] = set()
        for cached in plan.cached_requests:
            rid = cached.request_id
            if rid not in alive or rid in cached_seen:
                raise FailedPrecondition(f"cached request {rid!r} is not held by the worker (or repeated)")
            state = alive[rid]
            if cached.num_computed_tokens != state.num_computed_tokens:
                raise FailedPrecondition(
                    f"request {rid!r}: scheduler says num_computed_tokens={cached.num_computed_tokens}, "
                    f"worker has {state.num_computed_tokens}")
            self._check_block_ids(rid, cached.new_block_ids)
            cached_seen.add(rid)
            num_block_ids[rid] += len(cached.new_block_ids)
        for rid, state in alive.items():
            num_tokens[rid] = (state.num_computed_tokens, state.num_tokens)  # pending included
        self._check_schedule(plan, num_tokens, num_block_ids)

        for rid in finished:
            self.requests.pop(rid, None)
        for new in plan.new_requests:
            self.requests[new.request_id] = RequestState(
                new.request_id, list(new.prompt_token_ids), list(new.output_token_ids), new.sampling,
                list(new.block_ids), new.num_computed_tokens)
        for cached in plan.cached_requests:
            self.requests[cached.request_id].block_ids.extend(cached.new_block_ids)
        return [(self.requests[rid], n) for rid, n in plan.num_scheduled_tokens.items()]

    def _check_block_ids(self, request_id: str, block_ids: list[int]) -> None:
        if any(not 0 <= b < self.num_blocks for b in block_ids):
            raise InvalidArgument(f"request {request_id!r}: block ids outside [0, {self.num_blocks})")

    def _check_schedule(self, plan: StepPlan, num_tokens: dict[str, tuple[int, int]],
                        num_block_ids: dict[str, int]) -> None:
        if plan.total_num_scheduled_tokens > self.max_num_batched_tokens:
            raise InvalidArgument(f"step schedules {plan.total_num_scheduled_tokens} tokens, more than "
                                  f"max_num_batched_tokens={self.max_num_batched_tokens}")
        for rid, n in plan.num_scheduled_tokens.items():
            if rid not in num_tokens:
                raise FailedPrecondition(f"scheduled request {rid!r} is not held by the worker")
            computed, total = num_tokens[rid]
            if not 0 < n <= total - computed:
                raise InvalidArgument(f"request {rid!r}: {n} tokens scheduled, {total - computed} "
                                      "not yet computed")
            if _num_blocks(computed + n, self.block_size) > num_block_ids[rid]:
                raise InvalidArgument(f"request {rid!r}: {num_block_ids[rid]} blocks cannot hold "
                                      f"{computed + n} tokens")

    def advance(self, scheduled: list[tuple[RequestState, int]], sampling_requests: list[RequestState],
                token_ids: torch.Tensor) -> None:
        """After launching a step: scheduled tokens count as computed; each sampling request gets a
        pending token, row i of `token_ids` [S] (still on the device)."""
        for state, n in scheduled:
            state.num_computed_tokens += n
        for row, state in enumerate(sampling_requests):
            state.pending.append((token_ids, row))

    @staticmethod
    def resolve(sampling_requests: list[RequestState], token_ids: torch.Tensor, sampled: list[int]) -> None:
        """The step that produced `token_ids` for `sampling_requests` finished: their pending tokens
        become known outputs (a request dropped meanwhile keeps them in its orphaned state)."""
        for row, state in enumerate(sampling_requests):
            if state.pending and state.pending[0][0] is token_ids:
                state.pending.pop(0)
                state.output_token_ids.append(sampled[row])

    def prepare(self, scheduled: list[tuple[RequestState, int]], device: torch.device) -> ModelInputs:
        """Flat inputs for `scheduled` (each request's next n tokens), on `device`."""
        return self.build(scheduled).to_device(device)

    def build(self, scheduled: list[tuple[RequestState, int]]) -> HostInputs:
        """The step's flat inputs on the host; pending tokens are left as references to the device.

        Requests computing one token go first (stable order otherwise), so that attention can run
        them through the decode kernel and only the longer runs through the extend kernel."""
        decodes = [item for item in scheduled if item[1] == 1]
        num_decodes = len(decodes)
        scheduled = decodes + [item for item in scheduled if item[1] != 1]
        bs = self.block_size
        input_ids: list[int] = []
        slot_mapping: list[int] = []
        seq_lens: list[int] = []
        logits_indices, sampling_requests = [], []
        pending_rows: list[tuple[int, torch.Tensor, int]] = []
        for row, (state, _) in enumerate(decodes):  # one token each: the per-token loops unrolled
            pos = state.num_computed_tokens
            num_prompt, num_known = len(state.prompt_token_ids), state.num_known_tokens
            if pos < num_prompt:
                input_ids.append(state.prompt_token_ids[pos])
            elif pos < num_known:
                input_ids.append(state.output_token_ids[pos - num_prompt])
            else:
                source, source_row = state.pending[pos - num_known]
                pending_rows.append((row, source, source_row))
                input_ids.append(0)
            block_id = state.block_ids[pos // bs]
            slot_mapping.append(block_id * bs + pos % bs)
            seq_lens.append(pos + 1)
            if pos + 1 == num_known + len(state.pending):
                logits_indices.append(row)
                sampling_requests.append(state)
        positions = [end - 1 for end in seq_lens]  # then extended by the longer runs
        query_start_loc = list(range(num_decodes + 1))
        for state, n in scheduled[num_decodes:]:
            start, end = state.num_computed_tokens, state.num_computed_tokens + n
            known_end = min(end, state.num_known_tokens)
            if start < known_end:
                input_ids += state.token_slice(start, known_end)
            for p in range(max(start, known_end), end):
                source, row = state.pending[p - state.num_known_tokens]
                pending_rows.append((len(input_ids), source, row))
                input_ids.append(0)
            positions += range(start, end)
            slot_mapping += [state.block_ids[p // bs] * bs + p % bs for p in range(start, end)]
            query_start_loc.append(query_start_loc[-1] + n)
            seq_lens.append(end)
            if end == state.num_tokens:
                logits_indices.append(query_start_loc[-1] - 1)
                sampling_requests.append(state)
        # Block tables through numpy: at 512 sequences of 2k tokens a Python list would be 64k ints.
        width = _num_blocks(max(seq_lens), bs)
        tables = np.zeros((len(scheduled), width), dtype=np.int32)
        for row, end in enumerate(seq_lens):
            num_blocks = _num_blocks(end, bs)
            tables[row, :num_blocks] = scheduled[row][0].block_array()[:num_blocks]
        return HostInputs(
            input_ids=np.array(input_ids, dtype=np.int64), positions=np.array(positions, dtype=np.int64),
            slot_mapping=np.array(slot_mapping, dtype=np.int64),
            logits_indices=np.array(logits_indices, dtype=np.int64),
            query_start_loc=np.array(query_start_loc, dtype=np.int32),
            seq_lens=np.array(seq_lens, dtype=np.int32), block_tables=tables,
            pending_rows=pending_rows, sampling_requests=sampling_requests, num_decodes=num_decodes,
            max_query_len=max(n for _, n in scheduled))


@dataclass
class HostInputs:
    """One step's flat varlen batch on the host (numpy): T tokens of B requests, S of which sample.

    A token sampled by a step that is still running is 0 in `input_ids`; `pending_rows` says which
    device tensor holds it. `to_device` builds the `ModelInputs` of an eager forward; the decode
    CUDA graphs copy the same arrays into their own buffers instead."""

    input_ids: np.ndarray  # [T] int64
    positions: np.ndarray  # [T] int64
    slot_mapping: np.ndarray  # [T] int64
    logits_indices: np.ndarray  # [S] int64
    query_start_loc: np.ndarray  # [B+1] int32
    seq_lens: np.ndarray  # [B] int32
    block_tables: np.ndarray  # [B, W] int32, zero-padded
    pending_rows: list[tuple[int, torch.Tensor, int]]  # (input row, source ids on the device, source row)
    sampling_requests: list[RequestState]  # [S], in the order of logits_indices
    num_decodes: int  # the first num_decodes requests compute one token each
    max_query_len: int

    @property
    def is_decode(self) -> bool:
        """Every request computes exactly one token."""
        return len(self.input_ids) == len(self.seq_lens)

    @property
    def samples_every_row(self) -> bool:
        return len(self.logits_indices) == len(self.input_ids)

    def to_device(self, device: torch.device) -> ModelInputs:
        """The inputs on `device`: two host->device copies (one int64, one int32 buffer, split into
        views) and the gather of pending tokens, with no host sync."""
        longs = _to_device([self.input_ids, self.positions, self.slot_mapping, self.logits_indices],
                           torch.int64, device)
        extend_qsl = self.query_start_loc[self.num_decodes:] - self.num_decodes  # rebased past the decodes
        ints = _to_device([self.query_start_loc, self.seq_lens, self.block_tables.ravel(), extend_qsl],
                          torch.int32, device)
        ids, positions, slots, logits_indices = longs
        qsl, lens, tables, extend_qsl_t = ints
        gather_pending(ids, self.pending_rows)
        metadata = AttentionMetadata(slot_mapping=slots, query_start_loc=qsl, seq_lens=lens,
                                     block_tables=tables.view(self.block_tables.shape),
                                     max_query_len=self.max_query_len, max_seq_len=int(self.seq_lens.max()),
                                     num_decodes=self.num_decodes, extend_query_start_loc=extend_qsl_t)
        return ModelInputs(ids, positions, metadata, logits_indices, self.sampling_requests,
                           is_decode=self.is_decode)


def gather_pending(ids: torch.Tensor, pending_rows: list[tuple[int, torch.Tensor, int]]) -> None:
    """Write each pending token into `ids` (on the device) from the step output that holds it.

    The steady state of decoding (one earlier step's ids, in the same order, landing on
    consecutive rows) is a single device-to-device copy; anything else is one gather."""
    if not pending_rows:
        return
    dst_rows = [dst for dst, _, _ in pending_rows]
    src_rows = [src for _, _, src in pending_rows]
    source = pending_rows[0][1]
    n = len(pending_rows)
    if all(src is source for _, src, _ in pending_rows):
        if dst_rows == list(range(dst_rows[0], dst_rows[0] + n)) and \
                src_rows == list(range(src_rows[0], src_rows[0] + n)):
            ids[dst_rows[0]:dst_rows[0] + n].copy_(source[src_rows[0]:src_rows[0] + n], non_blocking=True)
            return
        gathered = source[host_to_device(src_rows, torch.int64, ids.device)]
    else:
        gathered = torch.stack([src[row] for _, src, row in pending_rows])
    ids[host_to_device(dst_rows, torch.int64, ids.device)] = gathered


_NUMPY_DTYPES = {torch.int32: np.int32, torch.int64: np.int64}


def _to_device(lists: list[list[int] | np.ndarray], dtype: torch.dtype, device: torch.device
               ) -> list[torch.Tensor]:
    """Concatenate int lists (or 1-D arrays) into one host tensor, copy it once, and return views."""
    np_dtype = _NUMPY_DTYPES[dtype]
    flat = np.concatenate([np.asarray(values, dtype=np_dtype) for values in lists])
    return list(host_to_device(flat, dtype, device).split([len(values) for values in lists]))


def host_to_device(values: list[int] | np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Pinned host memory and an asynchronous copy: a pageable copy would wait for the device."""
    host = torch.from_numpy(np.asarray(values, dtype=_NUMPY_DTYPES[dtype]))
    if device.type == "cpu":
        return host
    return host.pin_memory().to(device, non_blocking=True)
