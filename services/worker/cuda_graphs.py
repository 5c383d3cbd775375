"""CUDA graphs of decode steps: one graph per batch-size bucket, replayed with persistent inputs.

A decode step (every request computes exactly one token) has the same kernels every time; only
the batch size and the values in the inputs change. Each bucket's graph runs the model and the
LM head over `bucket` rows read from persistent buffers; a smaller batch is padded up to the next
bucket. Padding rows write no KV (slot -1) and attend over one token of block 0, so they touch
only memory that exists; their logits are dropped.

Invariant: the buffers are written only by `run`, on the current stream, before the replay that
reads them; the KV cache and the weights are never reallocated after capture.
"""
from __future__ import annotations

import logging
import time

import torch
from torch import nn

from services.worker.layers.attention import AttentionMetadata

logger = logging.getLogger(__name__)


def batch_buckets(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to max_batch_size (which is always included)."""
    buckets = [b for b in (1, 2, 4, 8) if b < max_batch_size]
    buckets += list(range(16, max_batch_size, 16))
    return sorted(set(buckets + [max_batch_size]))


class DecodeGraphs:
    def __init__(self, model: nn.Module, max_batch_size: int, max_blocks_per_seq: int,
                 max_seq_len: int, device: torch.device):
        self.model = model
        self.max_seq_len = max_seq_len  # decode splits are fixed per graph for this bound
        self.device = device
        self.buckets = batch_buckets(max_batch_size)
        n = self.buckets[-1]
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)  # [Bmax]
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)  # [Bmax]
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=device)  # [Bmax]
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)  # [Bmax]
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)  # [Bmax+1]
        self.block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}  # bucket -> [bucket, V], written by the replay

    def _metadata(self, batch: int) -> AttentionMetadata:
        return AttentionMetadata(slot_mapping=self.slot_mapping[:batch],
                                 query_start_loc=self.query_start_loc[:batch + 1],
                                 seq_lens=self.seq_lens[:batch],
                                 block_tables=self.block_tables[:batch], max_query_len=1,
                                 max_seq_len=self.max_seq_len)

    def _forward(self, batch: int) -> torch.Tensor:
        hidden = self.model(self.input_ids[:batch], self.positions[:batch], self._metadata(batch))
        return self.model.compute_logits(hidden)  # [batch, V]

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first so smaller graphs reuse its memory pool."""
        started = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        for batch in reversed(self.buckets):
            for _ in range(2):  # warm-up: Triton compiles, allocator settles
                self._forward(batch)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[batch] = self._forward(batch)
            self.graphs[batch] = graph
        torch.cuda.synchronize(self.device)
        logger.info("captured %d decode CUDA graphs (batch %d..%d) in %.1f s", len(self.graphs),
                    self.buckets[0], self.buckets[-1], time.perf_counter() - started)

    def bucket_for(self, batch: int) -> int | None:
        for bucket in self.buckets:
            if bucket >= batch:
                return bucket
        return None

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor,
            metadata: AttentionMetadata) -> torch.Tensor:
        """Logits `[B, V]` of a decode batch of B rows (B <= the largest bucket)."""
        batch = input_ids.shape[0]
        bucket = self.bucket_for(batch)
        width = metadata.block_tables.shape[1]
        self.input_ids[:batch].copy_(input_ids, non_blocking=True)
        self.positions[:batch].copy_(positions, non_blocking=True)
        self.slot_mapping[:batch].copy_(metadata.slot_mapping, non_blocking=True)
        self.seq_lens[:batch].copy_(metadata.seq_lens, non_blocking=True)
        self.block_tables[:batch, :width].copy_(metadata.block_tables, non_blocking=True)
        if bucket > batch:
            self.slot_mapping[batch:bucket].fill_(-1)
            self.seq_lens[batch:bucket].fill_(1)
            self.block_tables[batch:bucket, 0].fill_(0)
        self.graphs[bucket].replay()
        return self.logits[bucket][:batch]
