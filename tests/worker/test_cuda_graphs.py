"""The step graphs' input layout (host side, runs on the CPU): what one copy puts in each view."""
from __future__ import annotations

import torch

from services.common.sampling import SamplingParams
from services.worker.cuda_graphs import StepGraphs, _pack, batch_buckets, prefill_buckets
from services.worker.input_batch import InputBatch, RequestState

GREEDY = SamplingParams(temperature=0.0)


def make_graphs(max_batch_size=4, max_prefill_tokens=32) -> StepGraphs:
    return StepGraphs(torch.nn.Identity(), max_batch_size=max_batch_size, max_prefill_tokens=max_prefill_tokens,
                      max_blocks_per_seq=5, max_seq_len=20, device=torch.device("cpu"))


def make_batch() -> InputBatch:
    return InputBatch(block_size=4, num_blocks=10, max_model_len=20, max_num_batched_tokens=32, vocab_size=50)


def load(bucket, inputs):
    """What `StepGraphs.run` copies into the bucket (without the CUDA-only pinned copy)."""
    bucket.staging.copy_(torch.from_numpy(_pack(bucket, inputs.input_ids, inputs.positions, inputs.slot_mapping,
                                                inputs.logits_indices, inputs.seq_lens, inputs.block_tables)))


def test_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(40) == [1, 2, 4, 8, 16, 32, 40]
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert prefill_buckets(512) == [16, 32, 64, 128, 256, 512]
    assert prefill_buckets(100) == [16, 32, 64, 100]
    assert prefill_buckets(15) == [] and prefill_buckets(0) == [] and prefill_buckets(16) == [16]


def test_one_copy_fills_every_decode_view_and_pads_the_bucket():
    """Three decode rows in the bucket of 4: ids, positions, slots, lengths and block tables land in
    their views; the padding row writes no KV (slot -1) and reads one token of block 0."""
    graphs = make_graphs()
    states = [RequestState("a", [1, 2, 3, 4, 5], [], GREEDY, [7, 2], 4),
              RequestState("b", [9] * 9, [], GREEDY, [3, 4, 0], 8),
              RequestState("c", [6], [], GREEDY, [1], 0)]
    inputs = make_batch().build([(st, 1) for st in states])
    bucket = graphs._bucket(inputs)
    assert graphs.fits(inputs) and (bucket.rows, bucket.tokens) == (4, 1)
    load(bucket, inputs)
    meta = bucket.metadata(max_seq_len=20)
    assert bucket.input_ids.tolist() == [5, 9, 6, 0] and bucket.positions.tolist() == [4, 8, 0, 0]
    assert meta.slot_mapping.tolist() == [2 * 4 + 0, 0 * 4 + 0, 1 * 4 + 0, -1]
    assert meta.seq_lens.tolist() == [5, 9, 1, 1]
    assert meta.block_tables.tolist() == [[7, 2, 0, 0, 0], [3, 4, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert meta.query_start_loc.tolist() == [0, 1, 2, 3, 4] and meta.max_query_len == 1 and meta.num_decodes == 4
    # A fresh bucket (before any run) already holds valid padding for the capture.
    fresh = graphs._decode[2].metadata(20)
    assert fresh.slot_mapping.tolist() == [-1, -1] and fresh.seq_lens.tolist() == [1, 1]


def test_a_single_sequence_prefill_pads_its_run_at_the_end():
    """Ten new tokens after a cached prefix of 3, in the 16-token bucket: the query run is the ten
    real tokens, the six padding tokens write nothing, and the logits row is the last real token."""
    graphs = make_graphs()
    state = RequestState("p", list(range(20, 33)), [], GREEDY, [5, 6, 7, 8], 3)  # 13 tokens, 3 cached
    inputs = make_batch().build([(state, 10)])
    bucket = graphs._bucket(inputs)
    assert (bucket.rows, bucket.tokens) == (1, 16) and not inputs.is_decode
    load(bucket, inputs)
    meta = bucket.metadata(max_seq_len=20)
    assert bucket.input_ids.tolist() == list(range(23, 33)) + [0] * 6
    assert bucket.positions.tolist() == list(range(3, 13)) + [0] * 6
    assert meta.slot_mapping.tolist()[:10] == [5 * 4 + 3] + [6 * 4 + i for i in range(4)] + \
        [7 * 4 + i for i in range(4)] + [8 * 4 + 0]
    assert meta.slot_mapping.tolist()[10:] == [-1] * 6
    assert meta.query_start_loc.tolist() == [0, 10] and meta.seq_lens.tolist() == [13]
    assert meta.block_tables.tolist() == [[5, 6, 7, 8, 0]]
    assert bucket.logits_indices.tolist() == [9]
    assert meta.max_query_len == 16 and meta.num_decodes == 0
    # Before any run the prefill bucket is one sequence over all its 16 tokens, writing nothing.
    fresh = graphs._prefill[32].metadata(20)
    assert fresh.query_start_loc.tolist() == [0, 32] and fresh.seq_lens.tolist() == [32]
    assert set(fresh.slot_mapping.tolist()) == {-1}


def test_what_does_not_fit_runs_eagerly():
    graphs = make_graphs(max_prefill_tokens=16)
    long_prompt = RequestState("a", list(range(20)), [], GREEDY, [0, 1, 2, 3, 4], 0)
    assert not graphs.fits(make_batch().build([(long_prompt, 20)]))  # 20 tokens > 16
    one, two = (RequestState(r, [1, 2, 3], [], GREEDY, [i], 0) for i, r in enumerate("bc"))
    assert not graphs.fits(make_batch().build([(one, 3), (two, 3)]))  # two sequences
    decode = RequestState("d", [1, 2, 3], [], GREEDY, [3], 2)
    assert not graphs.fits(make_batch().build([(decode, 1), (one, 3)]))  # a mixed step
    assert graphs.fits(make_batch().build([(one, 3)]))
    assert not make_graphs(max_prefill_tokens=0).fits(make_batch().build([(one, 3)]))
