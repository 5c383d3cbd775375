"""CUDA graphs of decode steps: one graph per batch-size bucket, replayed with persistent inputs.

A decode step (every request computes exactly one token) has the same kernels every time; only
the batch size and the values in the inputs change. Each bucket's graph runs the model and the
LM head over `bucket` rows read from persistent buffers; a smaller batch is padded up to the next
bucket. Padding rows write no KV (slot -1) and attend over one token of block 0, so they touch
only memory that exists; their logits are dropped. Each graph also takes the argmax of its logits,
so a greedy step samples inside the replay.

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

from kernels.argmax import argmax
from services.worker.input_batch import HostInputs, gather_pending
from services.worker.layers.attention import AttentionMetadata

logger = logging.getLogger(__name__)


def batch_buckets(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to max_batch_size (which is always included)."""
    buckets = [b for b in (1, 2, 4, 8) if b < max_batch_size]
    buckets += list(range(16, max_batch_size, 16))
    return sorted(set(buckets + [max_batch_size]))


@dataclass
class _Bucket:
    """The persistent inputs and outputs of one bucket's graph (b rows, block tables W wide).

    The inputs are views of one byte buffer, so that one host->device copy fills them all: int64
    `[3, b]` (input ids, positions, slot mapping), then int32 `[b + b * W]` (sequence lengths, then
    the block tables row-major)."""

    staging: torch.Tensor  # [24 b + 4 b (1 + W)] uint8
    query_start_loc: torch.Tensor  # [b + 1] int32, 0..b (one token per row), never rewritten
    logits: torch.Tensor | None = None  # [b, V], written by the replay
    greedy_ids: torch.Tensor | None = None  # [b] int64, argmax of each row of logits

    @staticmethod
    def layout(b: int, blocks_per_seq: int) -> tuple[int, int]:
        """(bytes of the int64 part, bytes in all)."""
        return 24 * b, 24 * b + 4 * b * (1 + blocks_per_seq)

    @property
    def size(self) -> int:
        return self.query_start_loc.shape[0] - 1

    @property
    def longs(self) -> torch.Tensor:
        b = self.size
        return self.staging[:24 * b].view(torch.int64).view(3, b)

    @property
    def ints(self) -> torch.Tensor:
        return self.staging[24 * self.size:].view(torch.int32)

    def metadata(self, max_seq_len: int) -> AttentionMetadata:
        b, ints = self.size, self.ints
        return AttentionMetadata(slot_mapping=self.longs[2], query_start_loc=self.query_start_loc,
                                 seq_lens=ints[:b], block_tables=ints[b:].view(b, -1),
                                 max_query_len=1, max_seq_len=max_seq_len)


def _host_staging(inputs: HostInputs, b: int, blocks_per_seq: int) -> np.ndarray:
    """The bytes of a bucket's inputs for `inputs`, padding rows included: no KV write (slot -1),
    one token of context in block 0."""
    batch = len(inputs.input_ids)
    long_bytes, total = _Bucket.layout(b, blocks_per_seq)
    host = np.zeros(total, dtype=np.uint8)
    longs = host[:long_bytes].view(np.int64).reshape(3, b)
    longs[0, :batch] = inputs.input_ids
    longs[1, :batch] = inputs.positions
    longs[2, :batch] = inputs.slot_mapping
    longs[2, batch:] = -1
    ints = host[long_bytes:].view(np.int32)
    ints[:batch] = inputs.seq_lens
    ints[batch:b] = 1
    ints[b:].reshape(b, blocks_per_seq)[:batch, :inputs.block_tables.shape[1]] = inputs.block_tables
    return host


class DecodeGraphs:
    def __init__(self, model: nn.Module, max_batch_size: int, max_blocks_per_seq: int,
                 max_seq_len: int, device: torch.device):
        self.model = model
        self.max_seq_len = max_seq_len  # decode splits are fixed per graph for this bound
        self.max_blocks_per_seq = max_blocks_per_seq
        self.device = device
        self.buckets = batch_buckets(max_batch_size)
        self._buckets: dict[int, _Bucket] = {}
        for b in self.buckets:
            staging = torch.zeros(_Bucket.layout(b, max_blocks_per_seq)[1], dtype=torch.uint8, device=device)
            bucket = self._buckets[b] = _Bucket(staging, torch.arange(b + 1, dtype=torch.int32, device=device))
            bucket.longs[2].fill_(-1)  # capture runs on padding rows: no KV write, one token of context
            bucket.ints[:b].fill_(1)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def _forward(self, bucket: _Bucket) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, positions = bucket.longs[0], bucket.longs[1]
        hidden = self.model(input_ids, positions, bucket.metadata(self.max_seq_len))
        logits = self.model.compute_logits(hidden)  # [b, V]
        return logits, argmax(logits)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first so smaller graphs reuse its memory pool."""
        started = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        for batch in reversed(self.buckets):
            bucket = self._buckets[batch]
            for _ in range(2):  # warm-up: Triton compiles, allocator settles
                self._forward(bucket)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                bucket.logits, bucket.greedy_ids = self._forward(bucket)
            self.graphs[batch] = graph
        torch.cuda.synchronize(self.device)
        logger.info("captured %d decode CUDA graphs (batch %d..%d) in %.1f s", len(self.graphs),
                    self.buckets[0], self.buckets[-1], time.perf_counter() - started)

    def bucket_for(self, batch: int) -> int | None:
        for bucket in self.buckets:
            if bucket >= batch:
                return bucket
        return None

    def fits(self, inputs: HostInputs) -> bool:
        return (inputs.is_decode and self.bucket_for(len(inputs.input_ids)) is not None
                and inputs.block_tables.shape[1] <= self.max_blocks_per_seq)

    def run(self, inputs: HostInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits `[B, V]`, their argmax `[B]`) of a decode batch of B rows that `fits`; both are
        views of the graph's outputs, overwritten by its next replay.

        The inputs reach the graph's buffers in one host->device copy (padding rows included) and
        the gather of pending tokens."""
        batch = len(inputs.input_ids)
        bucket = self._buckets[self.bucket_for(batch)]
        host = _host_staging(inputs, bucket.size, self.max_blocks_per_seq)
        bucket.staging.copy_(torch.from_numpy(host).pin_memory(), non_blocking=True)
        gather_pending(bucket.longs[0], inputs.pending_rows)
        self.graphs[bucket.size].replay()
        return bucket.logits[:batch], bucket.greedy_ids[:batch]
