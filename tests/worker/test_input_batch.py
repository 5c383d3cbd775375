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


def test_gather_pending_copies_consecutive_rows_and_gathers_the_rest():
    """Pending tokens land on their rows whether they come as one consecutive run of one step's
    ids (the single-copy path), out of order, or from two different steps."""
    from services.worker.input_batch import gather_pending

    step_a, step_b = torch.tensor([10, 11, 12, 13]), torch.tensor([20, 21])
    ids = torch.zeros(6, dtype=torch.int64)
    gather_pending(ids, [(2, step_a, 1), (3, step_a, 2), (4, step_a, 3)])
    assert ids.tolist() == [0, 0, 11, 12, 13, 0]
    ids.zero_()
    gather_pending(ids, [(0, step_a, 3), (1, step_a, 0), (5, step_a, 1)])
    assert ids.tolist() == [13, 10, 0, 0, 0, 11]
    ids.zero_()
    gather_pending(ids, [(0, step_b, 1), (1, step_a, 2)])
    assert ids.tolist() == [21, 12, 0, 0, 0, 0]
    gather_pending(ids, [])
    assert ids.tolist() == [21, 12, 0, 0, 0, 0]


def test_pending_tokens_reach_the_step_inputs():
    """A request whose newest token is still on the device gets it in its input row."""
    batch = InputBatch(block_size=4, num_blocks=8, max_model_len=32, max_num_batched_tokens=32, vocab_size=100)
    a, b = state("a", [1, 2, 3], 3, [0]), state("b", [4, 5], 2, [1])
    sampled = torch.tensor([42, 43])
    a.pending.append((sampled, 0))
    b.pending.append((sampled, 1))
    host = batch.build([(a, 1), (b, 1)])
    assert host.is_decode and host.samples_every_row and host.input_ids.tolist() == [0, 0]
    inputs = host.to_device(torch.device("cpu"))
    assert inputs.input_ids.tolist() == [42, 43] and inputs.positions.tolist() == [3, 2]


def test_one_token_rows_read_prompt_output_or_pending_and_sample_only_at_the_end():
    """One-token rows take their input from the prompt, the outputs or a pending device value;
    a row in the middle of its sequence (recompute after preemption) computes without sampling."""
    batch = InputBatch(block_size=4, num_blocks=16, max_model_len=32, max_num_batched_tokens=32, vocab_size=100)
    mid_prompt = state("m", [11, 12, 13, 14, 15], 2, [4, 5])  # token 2 of 5: no sample
    from_output = RequestState("o", [21, 22], [23, 24], SamplingParams(temperature=0.0), [6], 3)  # token 3 = 24
    pending = state("p", [31, 32, 33], 3, [7])
    pending.pending.append((torch.tensor([77, 78]), 1))  # token 3 = 78, on the device
    host = batch.build([(mid_prompt, 1), (from_output, 1), (pending, 1)])
    assert host.input_ids.tolist() == [13, 24, 0] and host.pending_rows[0][0] == 2
    assert host.positions.tolist() == [2, 3, 3] and host.seq_lens.tolist() == [3, 4, 4]
    assert host.slot_mapping.tolist() == [4 * 4 + 2, 6 * 4 + 3, 7 * 4 + 3]
    assert host.logits_indices.tolist() == [1, 2] and host.query_start_loc.tolist() == [0, 1, 2, 3]
    assert [st.request_id for st in host.sampling_requests] == ["o", "p"] and host.num_decodes == 3
    assert host.to_device(torch.device("cpu")).input_ids.tolist() == [13, 24, 78]
