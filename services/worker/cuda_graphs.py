"""CUDA graphs of steps: decode batches per batch-size bucket, single-sequence prefills per
token-count bucket, replayed with persistent inputs.

A decode step (every request computes exactly one token) has the same kernels every time; only
the batch size and the values in the inputs change. Each decode bucket's graph runs the model and
the LM head over `bucket` rows read from persistent buffers; a smaller batch is padded up to the
next bucket. Padding rows write no KV (slot -1) and attend over one token of block 0, so they touch
only memory that exists; their logits are dropped.

A prefill step of one sequence (a batch-1 request's prompt, with or without a cached prefix) is
otherwise bound by the host: its eager forward takes ~20 ms to issue on an H200 machine, four
times its kernels. Each prefill bucket's graph runs T new tokens of one sequence (T a power of two
up to `max_prefill_tokens`); a shorter run is padded at its end. Padding tokens write no KV
(slot -1), and the causal extend kernel computes only the rows `query_start_loc` names, so the
real tokens never see them; only the last real token's logits are computed.

Each graph also takes the argmax of its logits, so a greedy step samples inside the replay.

Each bucket has its own input buffers, views of one byte buffer that a single host->device copy
fills. Invariant: the buffers are written only by `run`, on the current stream, before the
replay that reads them; the KV cache and the weights are never reallocated after capture.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kernels.sampling.argmax import argmax
from services.worker.input_batch import HostInputs, gather_pending
from services.worker.layers.attention import AttentionMetadata

logger = logging.getLogger(__name__)


def batch_buckets(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to max_batch_size (which is always included)."""
    buckets = [b for b in (1, 2, 4, 8) if b < max_batch_size]
    buckets += list(range(16, max_batch_size, 16))
    return sorted(set(buckets + [max_batch_size]))


def prefill_buckets(max_tokens: int) -> list[int]:
    """Powers of two from 16 up to max_tokens (included when it is not one); [] when below 16."""
    if max_tokens < 16:
        return []
    buckets = [1 << i for i in range(4, max_tokens.bit_length()) if 1 << i < max_tokens]
    return buckets + [max_tokens]


@dataclass
class _Bucket:
    """The persistent inputs and outputs of one graph: `rows` sequences of `tokens` new tokens each
    (decode buckets: b rows of 1; prefill buckets: 1 row of T), block tables W wide.

    The inputs are views of one byte buffer, so that one host->device copy fills them all: int64
    `[3 n + rows]` with n = rows x tokens (input ids, positions, slot mapping, then the row of each
    sequence's last token), then int32 `[2 rows + 1 + rows W]` (query start offsets, sequence
    lengths, block tables row-major)."""

    rows: int
    tokens: int
    blocks_per_seq: int
    staging: torch.Tensor  # uint8, `layout(...)[1]` bytes
    logits: torch.Tensor | None = None  # [rows, V], written by the replay
    greedy_ids: torch.Tensor | None = None  # [rows] int64, argmax of each row of logits

    def __post_init__(self) -> None:
        long_bytes = self.layout(self.rows, self.tokens, self.blocks_per_seq)[0]
        self._longs = self.staging[:long_bytes].view(torch.int64)  # views made once: `run` reads them every step
        self._ints = self.staging[long_bytes:].view(torch.int32)

    @staticmethod
    def layout(rows: int, tokens: int, blocks_per_seq: int) -> tuple[int, int]:
        """(bytes of the int64 part, bytes in all)."""
        long_bytes = 8 * (3 * rows * tokens + rows)
        return long_bytes, long_bytes + 4 * (2 * rows + 1 + rows * blocks_per_seq)

    @classmethod
    def allocate(cls, rows: int, tokens: int, blocks_per_seq: int, device: torch.device) -> _Bucket:
        """A bucket whose inputs already hold valid padding (the capture runs on them): no KV
        writes, one token of context per decode row, the prefill row over its own tokens only."""
        staging = torch.zeros(cls.layout(rows, tokens, blocks_per_seq)[1], dtype=torch.uint8, device=device)
        bucket = cls(rows, tokens, blocks_per_seq, staging)
        host = _pack(bucket, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                     np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros((0, 0), np.int32))
        staging.copy_(torch.from_numpy(host))
        return bucket

    @property
    def num_tokens(self) -> int:
        return self.rows * self.tokens

    @property
    def input_ids(self) -> torch.Tensor:
        return self._longs[:self.num_tokens]

    @property
    def positions(self) -> torch.Tensor:
        return self._longs[self.num_tokens:2 * self.num_tokens]

    @property
    def logits_indices(self) -> torch.Tensor:
        return self._longs[3 * self.num_tokens:]

    def metadata(self, max_seq_len: int) -> AttentionMetadata:
        n, rows, ints = self.num_tokens, self.rows, self._ints
        return AttentionMetadata(slot_mapping=self._longs[2 * n:3 * n], query_start_loc=ints[:rows + 1],
                                 seq_lens=ints[rows + 1:2 * rows + 1],
                                 block_tables=ints[2 * rows + 1:].view(rows, self.blocks_per_seq),
                                 max_query_len=self.tokens, max_seq_len=max_seq_len,
                                 num_decodes=rows if self.tokens == 1 else 0)


def _pack(bucket: _Bucket, input_ids: np.ndarray, positions: np.ndarray, slot_mapping: np.ndarray,
          logits_indices: np.ndarray, seq_lens: np.ndarray, block_tables: np.ndarray) -> np.ndarray:
    """The bytes of `bucket`'s inputs for B <= rows sequences (their T <= rows x tokens flat
    tokens), padding included: padding tokens write no KV (slot -1) at position 0; a padding decode
    row reads one token of block 0; the prefill row's query run is its real tokens."""
    rows, n = bucket.rows, bucket.num_tokens
    long_bytes, total = _Bucket.layout(rows, bucket.tokens, bucket.blocks_per_seq)
    host = np.zeros(total, dtype=np.uint8)
    longs = host[:long_bytes].view(np.int64)
    num_real = len(input_ids)
    longs[:num_real] = input_ids
    longs[n:n + num_real] = positions
    longs[2 * n:3 * n] = -1
    longs[2 * n:2 * n + num_real] = slot_mapping
    longs[3 * n:3 * n + len(logits_indices)] = logits_indices
    ints = host[long_bytes:].view(np.int32)
    if bucket.tokens == 1:  # decode: row r is token r
        ints[:rows + 1] = np.arange(rows + 1)
        ints[rows + 1:2 * rows + 1] = 1
    else:  # one sequence: its real tokens (all of them while capturing)
        ints[1] = num_real if len(seq_lens) else n
        ints[2] = n
    ints[rows + 1:rows + 1 + len(seq_lens)] = seq_lens
    ints[2 * rows + 1:].reshape(rows, bucket.blocks_per_seq)[:block_tables.shape[0], :block_tables.shape[1]] = \
        block_tables
    return host


class StepGraphs:
    def __init__(self, model: nn.Module, max_batch_size: int, max_prefill_tokens: int, max_blocks_per_seq: int,
                 max_seq_len: int, device: torch.device):
        self.model = model
        self.max_seq_len = max_seq_len  # decode splits are fixed per graph for this bound
        self.max_blocks_per_seq = max_blocks_per_seq
        self.device = device
        self.buckets = batch_buckets(max_batch_size)
        self.prefill_sizes = prefill_buckets(max_prefill_tokens)
        self._decode = {b: _Bucket.allocate(b, 1, max_blocks_per_seq, device) for b in self.buckets}
        self._prefill = {t: _Bucket.allocate(1, t, max_blocks_per_seq, device) for t in self.prefill_sizes}
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}  # (rows, tokens) -> graph

    def _forward(self, bucket: _Bucket) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model(bucket.input_ids, bucket.positions, bucket.metadata(self.max_seq_len))
        if bucket.tokens > 1:
            hidden = hidden[bucket.logits_indices]  # [1, H]: the last real token
        logits = self.model.compute_logits(hidden)  # [rows, V]
        return logits, argmax(logits)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, the prefill ones and then the decode ones largest first, so that
        later graphs reuse the memory pool of earlier, larger ones."""
        started = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        order = [self._prefill[t] for t in reversed(self.prefill_sizes)]
        order += [self._decode[b] for b in reversed(self.buckets)]
        for bucket in order:
            for _ in range(2):  # warm-up: Triton compiles, allocator settles
                self._forward(bucket)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                bucket.logits, bucket.greedy_ids = self._forward(bucket)
            self.graphs[bucket.rows, bucket.tokens] = graph
        torch.cuda.synchronize(self.device)
        logger.info("captured %d decode CUDA graphs (batch %d..%d) and %d single-sequence prefill graphs "
                    "(%s tokens) in %.1f s", len(self.buckets), self.buckets[0], self.buckets[-1],
                    len(self.prefill_sizes), "/".join(map(str, self.prefill_sizes)) or "no",
                    time.perf_counter() - started)

    def bucket_for(self, batch: int) -> int | None:
        """The decode bucket of a batch of `batch` one-token rows."""
        for bucket in self.buckets:
            if bucket >= batch:
                return bucket
        return None

    def _bucket(self, inputs: HostInputs) -> _Bucket | None:
        if inputs.block_tables.shape[1] > self.max_blocks_per_seq:
            return None
        num_tokens = len(inputs.input_ids)
        if inputs.is_decode:
            b = self.bucket_for(num_tokens)
            return None if b is None else self._decode[b]
        if len(inputs.seq_lens) == 1:
            for t in self.prefill_sizes:
                if t >= num_tokens:
                    return self._prefill[t]
        return None

    def fits(self, inputs: HostInputs) -> bool:
        """A decode batch up to the largest bucket, or one sequence's run of up to the largest
        prefill bucket's tokens."""
        return self._bucket(inputs) is not None

    def run(self, inputs: HostInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits `[S, V]`, their argmax `[S]`) of a step that `fits`: decode batches give every
        row's (S = B; the caller picks the sampling rows), a prefill its last token's if it samples
        (S = 1) or nothing (S = 0). Both are views of the graph's outputs, overwritten by its next
        replay. The inputs reach the graph's buffers in one host->device copy (padding included)
        and the gather of pending tokens."""
        bucket = self._bucket(inputs)
        host = _pack(bucket, inputs.input_ids, inputs.positions, inputs.slot_mapping, inputs.logits_indices,
                     inputs.seq_lens, inputs.block_tables)
        bucket.staging.copy_(torch.from_numpy(host).pin_memory(), non_blocking=True)
        gather_pending(bucket.input_ids, inputs.pending_rows)
        self.graphs[bucket.rows, bucket.tokens].replay()
        rows = len(inputs.input_ids) if bucket.tokens == 1 else len(inputs.logits_indices)
        return bucket.logits[:rows], bucket.greedy_ids[:rows]
