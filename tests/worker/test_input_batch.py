"""InputBatch.prepare: the flat layout of a step, one-token requests first."""
from __future__ import annotations

import torch

from services.common.sampling import SamplingParams
from services.worker.input_batch import InputBatch, RequestState


def state(rid, prompt, computed, blocks):
    return RequestState(rid, prompt, [], SamplingParams(temperature=0.0), blocks, computed)


def test_one_token_requests_go_first_with_rebased_extend_offsets():
    batch = InputBatch(block_size=4, num_blocks=32, max_model_len=64, max_num_batched_tokens=64, vocab_size=100)
    prefill = state("p", list(range(1, 11)), 4, [3, 9, 5])  # computes tokens 4..9 (6 tokens), samples
    decode_a = state("a", list(range(20, 27)), 6, [7, 8])  # computes its last token 6, samples
    chunk = state("c", list(range(30, 42)), 0, [10, 11])  # first chunk of 8 of 12 tokens: no sample
    decode_b = state("b", [50, 51], 1, [12])
    inputs = batch.prepare([(prefill, 6), (decode_a, 1), (chunk, 8), (decode_b, 1)], torch.device("cpu"))
    meta = inputs.metadata
    assert meta.num_decodes == 2
    assert inputs.input_ids.tolist() == [26, 51, 5, 6, 7, 8, 9, 10, 30, 31, 32, 33, 34, 35, 36, 37]
    assert inputs.positions.tolist() == [6, 1, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7]
    assert meta.query_start_loc.tolist() == [0, 1, 2, 8, 16]
    assert meta.extend_query_start_loc.tolist() == [0, 6, 14]
    assert meta.seq_lens.tolist() == [7, 2, 10, 8]
    assert meta.block_tables.tolist() == [[7, 8, 0], [12, 0, 0], [3, 9, 5], [10, 11, 0]]
    assert meta.slot_mapping.tolist()[:3] == [8 * 4 + 2, 12 * 4 + 1, 9 * 4 + 0]
    assert [st.request_id for st in inputs.sampling_requests] == ["a", "b", "p"]
    assert inputs.logits_indices.tolist() == [0, 1, 7]
    assert not inputs.is_decode and meta.max_query_len == 8
