"""The decode graphs' input layout (host side, runs on the CPU): what one copy puts in each view."""
from __future__ import annotations

import torch

from services.common.sampling import SamplingParams
from services.worker.cuda_graphs import DecodeGraphs, _host_staging, batch_buckets
from services.worker.input_batch import InputBatch, RequestState


def test_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(40) == [1, 2, 4, 8, 16, 32, 40]
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 32, 48, 64]


def test_one_copy_fills_every_input_view_and_pads_the_bucket():
    """Three decode rows in the bucket of 4: ids, positions, slots, lengths and block tables land in
    their views; the padding row writes no KV (slot -1) and reads one token of block 0."""
    graphs = DecodeGraphs(torch.nn.Identity(), max_batch_size=4, max_blocks_per_seq=5, max_seq_len=20,
                          device=torch.device("cpu"))
    greedy = SamplingParams(temperature=0.0)
    states = [RequestState("a", [1, 2, 3, 4, 5], [], greedy, [7, 2], 4),
              RequestState("b", [9] * 9, [], greedy, [3, 4, 0], 8),
              RequestState("c", [6], [], greedy, [1], 0)]
    batch = InputBatch(block_size=4, num_blocks=10, max_model_len=20, max_num_batched_tokens=8, vocab_size=50)
    inputs = batch.build([(st, 1) for st in states])
    assert graphs.fits(inputs) and graphs.bucket_for(3) == 4
    bucket = graphs._buckets[4]
    bucket.staging.copy_(torch.from_numpy(_host_staging(inputs, 4, 5)))
    assert bucket.longs.tolist() == [[5, 9, 6, 0], [4, 8, 0, 0], [2 * 4 + 0, 0 * 4 + 0, 1 * 4 + 0, -1]]
    meta = bucket.metadata(max_seq_len=20)
    assert meta.seq_lens.tolist() == [5, 9, 1, 1]
    assert meta.block_tables.tolist() == [[7, 2, 0, 0, 0], [3, 4, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert meta.query_start_loc.tolist() == [0, 1, 2, 3, 4] and meta.max_query_len == 1
    # A fresh bucket (before any run) already holds valid padding for the capture.
    fresh = graphs._buckets[2]
    assert fresh.longs[2].tolist() == [-1, -1] and fresh.metadata(20).seq_lens.tolist() == [1, 1]


def test_prefill_steps_do_not_fit():
    graphs = DecodeGraphs(torch.nn.Identity(), max_batch_size=4, max_blocks_per_seq=5, max_seq_len=20,
                          device=torch.device("cpu"))
    state = RequestState("a", [1, 2, 3], [], SamplingParams(temperature=0.0), [0], 0)
    batch = InputBatch(block_size=4, num_blocks=10, max_model_len=20, max_num_batched_tokens=8, vocab_size=50)
    assert not graphs.fits(batch.build([(state, 3)]))
