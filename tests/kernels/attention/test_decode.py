"""Triton paged decode attention vs the torch reference (TRITON_INTERPRET=1 without a GPU)."""
from __future__ import annotations

import functools

import pytest
import torch

from kernels import attention
from kernels.attention.decode import alloc_workspace, choose_num_splits, decode_attention_fwd
from kernels.attention.reference import paged_attention
from tests.kernels.attention.inputs import DEVICE, assert_attention_close, build_paged_batch, check_backend_choice

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HEADS = {"mha": (2, 2), "gqa4": (4, 1)}
SMALL_CONFIG = (16, 4, 1)  # BLOCK_N = 16 spans several 4-token blocks; small tiles keep the interpreter fast
# Length 1, a multiple of the block size, ragged lengths, and more splits than tokens.
SMALL_SEQ_LENS = [1, 16, 19, 45]


def reference(batch, scale):
    return paged_attention(batch.query, batch.k_cache, batch.v_cache, batch.query_start_loc, batch.seq_lens,
                           batch.block_tables, scale)


def run_decode(batch, scale, num_splits, config=None, **kwargs):
    out = torch.full_like(batch.query, float("nan"))
    decode_attention_fwd(batch.query, batch.k_cache, batch.v_cache, batch.block_tables, batch.seq_lens, scale,
                         num_splits, out, config=config, **kwargs)
    return out


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads", list(HEADS.values()), ids=list(HEADS))
@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("num_splits", [1, 6])
def test_decode_matches_reference(num_splits, block_size, heads, dtype):
    num_heads, num_kv_heads = heads
    batch = build_paged_batch(SMALL_SEQ_LENS, [1] * len(SMALL_SEQ_LENS), num_heads, num_kv_heads, 16,
                              block_size, dtype, seed=num_splits + block_size)
    workspace = alloc_workspace(len(SMALL_SEQ_LENS), num_heads, num_kv_heads, 16, num_splits, torch.device(DEVICE))
    out = run_decode(batch, 0.25, num_splits, SMALL_CONFIG, workspace=workspace)
    assert_attention_close(out, reference(batch, 0.25))
    assert torch.equal(workspace[2], torch.zeros_like(workspace[2])), workspace[2]


def test_decode_head_dim_32_strided_query_and_output():
    """Query and output as views into wider rows (as from a fused qkv projection)."""
    num_heads, num_kv_heads, head_dim = 4, 2, 32
    batch = build_paged_batch([3, 30], [1, 1], num_heads, num_kv_heads, head_dim, 8, torch.float16, seed=3)
    wide = torch.randn(2, num_heads + 2, head_dim, dtype=torch.float16, device=DEVICE)
    wide[:, 1:1 + num_heads] = batch.query
    query = wide[:, 1:1 + num_heads]
    out_rows = torch.full((2, 2 * num_heads, head_dim), float("nan"), dtype=torch.float16, device=DEVICE)
    out = out_rows[:, :num_heads]
    decode_attention_fwd(query, batch.k_cache, batch.v_cache, batch.block_tables, batch.seq_lens, 0.2, 3, out,
                         config=SMALL_CONFIG)
    assert_attention_close(out, reference(batch, 0.2))
    assert out_rows[:, num_heads:].isnan().all(), "wrote outside the output view"


def test_decode_shared_workspace_and_empty_sequence():
    """A workspace for a larger batch serves a smaller one; seq_len 0 (a padded slot) gives zeros."""
    batch = build_paged_batch([5, 33], [1, 1], 4, 2, 16, 4, torch.float32, seed=5)
    workspace = alloc_workspace(8, 4, 2, 16, 4, torch.device(DEVICE))
    workspace[0].fill_(float("nan"))
    workspace[1].fill_(float("nan"))
    workspace[2][2:].fill_(7)  # rows past the batch are never read nor written
    out = run_decode(batch, 0.25, 4, SMALL_CONFIG, workspace=workspace)
    assert_attention_close(out, reference(batch, 0.25))
    assert (workspace[2][:2] == 0).all() and (workspace[2][2:] == 7).all(), workspace[2]
    assert workspace[0][0].isnan().all(), "seq_len 5 fills one split, which writes the output directly"
    assert not workspace[0][1].isnan().all(), "seq_len 33 fills three splits, merged through the workspace"

    padded = torch.tensor([0, 33], dtype=torch.int32, device=DEVICE)
    out = torch.full_like(batch.query, float("nan"))
    decode_attention_fwd(batch.query, batch.k_cache, batch.v_cache, batch.block_tables, padded, 0.25, 4, out,
                         workspace, SMALL_CONFIG)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert_attention_close(out[1:], reference(batch, 0.25)[1:])
    assert (workspace[2][:2] == 0).all() and (workspace[2][2:] == 7).all(), workspace[2]


@pytest.mark.parametrize("num_splits", [3, 8])
def test_decode_consecutive_calls_share_workspace(num_splits):
    """Each launch leaves the counters at zero, so the next launch (another layer, a graph replay)
    merges at the right time: new inputs match the reference and repeated inputs repeat the output."""
    num_heads, num_kv_heads, head_dim = 4, 2, 16
    first = build_paged_batch([45, 1, 30], [1] * 3, num_heads, num_kv_heads, head_dim, 4, torch.bfloat16, seed=7)
    second = build_paged_batch([17, 64, 2], [1] * 3, num_heads, num_kv_heads, head_dim, 4, torch.bfloat16,
                               seed=8)
    workspace = alloc_workspace(3, num_heads, num_kv_heads, head_dim, num_splits, torch.device(DEVICE))
    workspace[0].fill_(float("nan"))
    workspace[1].fill_(float("nan"))
    outputs = []
    for batch in (first, second, first):
        out = run_decode(batch, 0.25, num_splits, SMALL_CONFIG, workspace=workspace)
        assert_attention_close(out, reference(batch, 0.25))
        assert torch.equal(workspace[2], torch.zeros_like(workspace[2])), workspace[2]
        outputs.append(out)
    assert torch.equal(outputs[0], outputs[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("num_heads,num_kv_heads,num_splits,seq_len", [(16, 1, 16, 250), (6, 2, 32, 500)],
                         ids=["group16-4chunks", "group3-2chunks"])
def test_decode_merges_splits_in_several_chunks(dtype, num_heads, num_kv_heads, num_splits, seq_len):
    """The merger reads 64 // next_power_of_2(group) splits per chunk: 16 query heads on one KV
    head merge 16 active splits in 4 chunks, a group of 3 (padded to 4) 32 splits in 2, each chunk
    rescaled to the running maximum. The keys of the last split score highest, so the maximum
    moves between chunks."""
    head_dim = 16
    batch = build_paged_batch([seq_len, 37], [1, 1], num_heads, num_kv_heads, head_dim, 4, dtype, seed=11)
    batch.k_cache.mul_(0.5)
    last_blocks = batch.block_tables[0, (seq_len - 10) // 4:-(-seq_len // 4)]
    group = num_heads // num_kv_heads
    newest = batch.query[0].view(num_kv_heads, group, head_dim).mean(1)  # [Hkv, D]
    batch.k_cache[last_blocks] = (newest * 4).to(dtype)  # the newest positions attend strongly
    workspace = alloc_workspace(2, num_heads, num_kv_heads, head_dim, num_splits, torch.device(DEVICE))
    out = run_decode(batch, 0.25, num_splits, SMALL_CONFIG, workspace=workspace)
    assert_attention_close(out, reference(batch, 0.25))
    assert torch.equal(workspace[2], torch.zeros_like(workspace[2])), workspace[2]


def test_choose_num_splits():
    assert choose_num_splits(256, 8, 4096, 132) == 1
    assert choose_num_splits(64, 8, 4096, 132) == 3
    assert choose_num_splits(1, 8, 16384, 132) == 64
    assert choose_num_splits(1, 8, 300, 132) == 2  # each split keeps >= 128 tokens
    assert choose_num_splits(4, 8, 1, 132) == 1


def test_launch_asserts():
    batch = build_paged_batch([5], [1], 4, 2, 16, 4, torch.float32)
    args = (batch.query, batch.k_cache, batch.v_cache, batch.block_tables, batch.seq_lens, 0.25, 2)
    out = torch.empty_like(batch.query)
    with pytest.raises(AssertionError):  # dtype mismatch
        decode_attention_fwd(batch.query.half(), *args[1:], out.half())
    with pytest.raises(AssertionError):  # int64 block tables
        decode_attention_fwd(*args[:3], batch.block_tables.long(), *args[4:], out)
    with pytest.raises(AssertionError):  # head_dim not a power of two
        decode_attention_fwd(batch.query[..., :12], batch.k_cache[..., :12], batch.v_cache[..., :12],
                             *args[3:], out[..., :12])
    with pytest.raises(AssertionError):  # non-contiguous head dim
        strided = torch.repeat_interleave(batch.query, 2, dim=2)[..., ::2]
        decode_attention_fwd(strided, *args[1:], out)


def test_dispatcher_backends(monkeypatch):
    """auto: Triton on CUDA, the reference on the CPU; `torch` and `triton` force one."""
    batch = build_paged_batch(SMALL_SEQ_LENS, [1] * len(SMALL_SEQ_LENS), 4, 1, 16, 4, torch.bfloat16)
    expected = reference(batch, 0.25)
    args = (batch.query, batch.k_cache, batch.v_cache, batch.block_tables, batch.seq_lens, 0.25, 2)
    check_backend_choice(monkeypatch, functools.partial(attention.decode_attention, *args), expected)


# --- GPU: realistic shapes, default configs -------------------------------------------------------

GPU_HEADS = {"llama3_8b": (32, 8, 128), "mha_d64": (16, 16, 64), "gqa4_d64": (16, 4, 64)}
GPU_SEQ_LENS = [1, 2, 15, 16, 17, 63, 64, 65, 200, 1000, 2047, 3000]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads", list(GPU_HEADS.values()), ids=list(GPU_HEADS))
def test_gpu_decode_matches_reference(heads, dtype):
    num_heads, num_kv_heads, head_dim = heads
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    check_gpu_decode(num_heads, num_kv_heads, head_dim, 16, dtype,
                     choose_num_splits(len(GPU_SEQ_LENS), num_kv_heads, 4096, num_sms))


@pytest.mark.gpu
@pytest.mark.parametrize(("block_size", "num_splits"), [(16, 1), (16, 7), (32, 64), (64, 5)])
def test_gpu_decode_block_sizes_and_splits(block_size, num_splits):
    check_gpu_decode(32, 8, 128, block_size, torch.bfloat16, num_splits)


def check_gpu_decode(num_heads, num_kv_heads, head_dim, block_size, dtype, num_splits):
    batch = build_paged_batch(GPU_SEQ_LENS, [1] * len(GPU_SEQ_LENS), num_heads, num_kv_heads, head_dim,
                              block_size, dtype, device="cuda", seed=block_size + num_splits)
    scale = head_dim ** -0.5
    out = run_decode(batch, scale, num_splits)
    assert_attention_close(out, reference(batch, scale))


def capture(step) -> torch.cuda.CUDAGraph:
    """`step` run once on a side stream (Triton compiles outside the capture), then captured."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


@pytest.mark.gpu
def test_gpu_decode_cuda_graph_replay_with_new_metadata():
    """Captured once; replays see new seq_lens and block tables in the same buffers."""
    num_heads, num_kv_heads, head_dim, block_size = 32, 8, 128, 16
    first = build_paged_batch([100, 7, 513, 1], [1] * 4, num_heads, num_kv_heads, head_dim, block_size,
                              torch.bfloat16, device="cuda", seed=1)
    second = build_paged_batch([1, 900, 33, 2048], [1] * 4, num_heads, num_kv_heads, head_dim, block_size,
                               torch.bfloat16, device="cuda", seed=2)
    num_blocks = max(first.k_cache.shape[0], second.k_cache.shape[0])
    k_cache = torch.zeros(num_blocks, block_size, num_kv_heads, head_dim, dtype=torch.bfloat16, device="cuda")
    v_cache = torch.zeros_like(k_cache)
    width = max(first.block_tables.shape[1], second.block_tables.shape[1])
    query = torch.empty_like(first.query)
    tables = torch.zeros(4, width, dtype=torch.int32, device="cuda")
    seq_lens = torch.empty(4, dtype=torch.int32, device="cuda")
    out = torch.empty_like(query)
    workspace = alloc_workspace(4, num_heads, num_kv_heads, head_dim, 16, torch.device("cuda"))

    def load(batch):
        k_cache.zero_()
        v_cache.zero_()
        k_cache[:batch.k_cache.shape[0]].copy_(batch.k_cache)
        v_cache[:batch.v_cache.shape[0]].copy_(batch.v_cache)
        tables.zero_()
        tables[:, :batch.block_tables.shape[1]].copy_(batch.block_tables)
        seq_lens.copy_(batch.seq_lens)
        query.copy_(batch.query)

    def step():
        decode_attention_fwd(query, k_cache, v_cache, tables, seq_lens, head_dim ** -0.5, 16, out, workspace)

    load(first)
    graph = capture(step)
    for batch in (first, second):
        load(batch)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_attention_close(out, reference(batch, head_dim ** -0.5))
        assert torch.equal(workspace[2], torch.zeros_like(workspace[2])), workspace[2]


def test_cached_workspace_grows_by_powers_of_two_and_keeps_outgrown_ones():
    from kernels.attention import decode as da

    device = torch.device("cpu")
    shape = (5, 2, 16, 7)  # Hq, Hkv, D, splits: a key no other test uses
    first = da._cached_workspace(3, *shape[:3], shape[3], device)
    assert first[0].shape[0] == 4 and first[2].shape == (4, 2)
    assert da._cached_workspace(4, *shape[:3], shape[3], device) is first, "a smaller batch reuses it"
    grown = da._cached_workspace(5, *shape[:3], shape[3], device)
    assert grown[0].shape[0] == 8 and any(w is first for w in da._RETIRED)
    assert da._cached_workspace(2, *shape[:3], shape[3], device) is grown


def test_split_count_is_a_runtime_argument():
    """A new split count must not mean a new compiled kernel: only its power-of-two bound (BLOCK_S)
    and whether it splits at all are compile-time, and `warm_up` compiles each of those."""
    import inspect

    from kernels.attention import decode as decode_attention
    params = inspect.signature(decode_attention._decode_kernel.fn).parameters
    assert "num_splits" in params and "NUM_SPLITS" not in params
    assert {"SPLIT", "BLOCK_S"} <= set(params)
    assert decode_attention.MAX_SPLITS == 64
    assert choose_num_splits(1, 8, 1 << 20, 132) == decode_attention.MAX_SPLITS


@pytest.mark.gpu
def test_gpu_decode_sees_the_newest_token_written_by_the_kernel_before_it():
    """The decode kernel loads its first K/V tile before its PDL wait; the newest token's row is
    written by the launch just before it (the fused rotary + KV write, also PDL) and must be read
    after the wait. The newest rows start poisoned, then get new values each replay of a graph
    holding both launches; the output must match attention over the cache as written."""
    from kernels.elementwise.rotary_kv import rotary_and_write_kv
    from services.worker.layers.rotary import get_rope

    seq_lens = [1, 17, 64, 65, 383, 384, 2048]
    num_heads, num_kv_heads, head_dim, block_size = 32, 8, 128, 16
    batch = build_paged_batch(seq_lens, [1] * len(seq_lens), num_heads, num_kv_heads, head_dim, block_size,
                              torch.bfloat16, device="cuda", seed=7)
    tables = batch.block_tables.cpu()
    slots = torch.tensor([int(tables[b, (n - 1) // block_size]) * block_size + (n - 1) % block_size
                          for b, n in enumerate(seq_lens)], device="cuda")
    batch.k_cache.view(-1, num_kv_heads, head_dim)[slots] = 1e4  # stale rows: any read of them shows
    batch.v_cache.view(-1, num_kv_heads, head_dim)[slots] = 1e4
    positions = batch.seq_lens.long() - 1
    rope = get_rope(head_dim, 1.0, 4096, 500000.0, None).to("cuda")
    query, key, value = (torch.empty_like(batch.query), torch.empty_like(batch.key), torch.empty_like(batch.value))
    out = torch.empty_like(query)
    num_splits = choose_num_splits(len(seq_lens), num_kv_heads, 4096, torch.cuda.get_device_properties(0)
                                   .multi_processor_count)
    workspace = alloc_workspace(len(seq_lens), num_heads, num_kv_heads, head_dim, num_splits, torch.device("cuda"))

    def step():
        rotary_and_write_kv(positions, query, key, value, batch.k_cache, batch.v_cache, slots, rope.cos_sin_cache,
                            head_dim)
        decode_attention_fwd(query, batch.k_cache, batch.v_cache, batch.block_tables, batch.seq_lens,
                             head_dim ** -0.5, num_splits, out, workspace)

    new = [torch.randn(3, *batch.query.shape[:1], num_heads + 2 * num_kv_heads, head_dim, device="cuda",
                       dtype=torch.bfloat16, generator=torch.Generator("cuda").manual_seed(i)) for i in range(8)]
    graph = capture(step)
    for values in new:
        query.copy_(values[0, :, :num_heads])
        key.copy_(values[1, :, num_heads:num_heads + num_kv_heads])
        value.copy_(values[2, :, num_heads + num_kv_heads:])
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(batch.k_cache.view(-1, num_kv_heads, head_dim)[slots], key)  # rotated, written
        expected = paged_attention(query, batch.k_cache, batch.v_cache, batch.query_start_loc, batch.seq_lens,
                                   batch.block_tables, head_dim ** -0.5)
        assert_attention_close(out, expected)
