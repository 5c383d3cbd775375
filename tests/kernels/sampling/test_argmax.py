"""Triton argmax (`kernels/sampling/argmax.py`) vs `torch.argmax(x, dim=-1)`: first index of the maximum,
first NaN, across tiles and chunks (TRITON_INTERPRET=1 on CPU)."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.sampling import argmax as argmax_module
from tests.kernels.elementwise_tolerance import DTYPES

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAN, INF = float("nan"), float("inf")
# (BLOCK, CHUNK, num_warps) small enough that short rows span several tiles and several chunks.
SMALL_CONFIGS = [(32, 64, 4), (32, 32, 1), (64, 256, 2)]


def random_rows(rows: int, vocab: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator(DEVICE).manual_seed(seed)
    return torch.randn(rows, vocab, generator=gen, device=DEVICE).to(dtype)


def assert_matches_torch(x: torch.Tensor, config: tuple[int, int, int] | None = None) -> torch.Tensor:
    from kernels.sampling.argmax_triton import argmax_triton

    got = argmax_triton(x, config)
    want = torch.argmax(x, dim=-1)
    assert got.dtype == torch.int64 and got.shape == (x.shape[0],), (got.dtype, got.shape)
    assert torch.equal(got, want), (got, want)
    return got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("vocab", [1, 7, 100, 1000, 5000, 2053])  # 2053: prime, no tile divides it
def test_random_rows(dtype, rows, vocab):
    assert_matches_torch(random_rows(rows, vocab, dtype, seed=vocab))


@pytest.mark.parametrize("config", SMALL_CONFIGS)
@pytest.mark.parametrize("vocab", [100, 777])
def test_every_config_gives_the_same_index(config, vocab):
    """Several tiles per chunk and several chunks per row; bf16 makes equal maxima likely."""
    for dtype in DTYPES:
        assert_matches_torch(random_rows(3, vocab, dtype, seed=vocab), config)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", [None, *SMALL_CONFIGS])
def test_ties_take_the_first_index(dtype, config):
    """Equal maxima in one tile, in one lane of two tiles, across a chunk boundary (64 and 256 are
    chunk boundaries of the small configs); a row of equal values gives 0."""
    vocab = 300
    x = random_rows(6, vocab, dtype) - 8  # every maximum below is larger than the noise
    for row, cols in enumerate([(37, 5, 100), (64, 63), (130, 129, 200), (256, 299, 255), (299, 298)]):
        x[row, list(cols)] = 3.0
    x[5] = 1.5
    got = assert_matches_torch(x, config)
    assert got.tolist() == [5, 63, 129, 255, 298, 0]  # what torch gives; guards the construction


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", [None, SMALL_CONFIGS[0]])
def test_infinities(dtype, config):
    x = torch.full((5, 200), -INF, dtype=dtype, device=DEVICE)  # row 0: all -inf
    x[1, 150] = -1e4  # one finite value among -inf
    x[2, [90, 20]] = INF
    x[3] = random_rows(1, 200, dtype)[0]
    x[3, [190, 70]] = INF
    x[4, 3:] = 0.0  # 0.0 after three -inf
    assert_matches_torch(x, config)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", [None, SMALL_CONFIGS[0]])
def test_nan_counts_as_the_largest(dtype, config):
    """torch.argmax gives the first NaN of a row that has one, even after +inf."""
    x = random_rows(5, 200, dtype)
    x[0, [150, 70]] = NAN
    x[1, 10] = INF
    x[1, 180] = NAN
    x[2] = NAN
    x[3, [199]] = NAN
    x[3, 0] = INF
    x[4, 65] = -NAN  # a NaN with the sign bit set is still a NaN
    x[4, 120] = NAN
    assert_matches_torch(x, config)


@pytest.mark.parametrize("dtype", DTYPES)
def test_signed_zeros_and_subnormals(dtype):
    """-0.0 equals +0.0 (the first wins); subnormals are neither zero nor equal to each other."""
    tiny = torch.finfo(dtype).smallest_normal / 4
    x = torch.full((4, 40), -1.0, dtype=dtype, device=DEVICE)
    x[0, [3, 9]] = torch.tensor([-0.0, 0.0], dtype=dtype, device=DEVICE)
    x[1, [3, 9]] = torch.tensor([0.0, -0.0], dtype=dtype, device=DEVICE)
    x[2, [3, 9, 20]] = torch.tensor([0.0, tiny, tiny / 2], dtype=dtype, device=DEVICE)
    x[3, [3, 9]] = torch.tensor([-tiny, -0.0], dtype=dtype, device=DEVICE)
    assert_matches_torch(x, SMALL_CONFIGS[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_rows(dtype):
    """Rows of a wider buffer, and every other row: only the columns must be contiguous."""
    wide = random_rows(6, 1040, dtype)
    assert wide[:, :1000].stride() == (1040, 1)
    assert_matches_torch(wide[:, :1000])
    assert_matches_torch(wide[::2, 5:1000], SMALL_CONFIGS[2])
    assert_matches_torch(wide[:, 17:18])  # one column


def test_no_rows():
    assert_matches_torch(torch.zeros(0, 50, device=DEVICE))


def test_dispatch_and_result(monkeypatch):
    """CPU tensors (and SLUICE_KERNELS=torch) take torch.argmax; float64 always does. Either way
    the result is int64 `[B]`, the indices torch gives."""
    for x in (random_rows(3, 100, torch.bfloat16), random_rows(2, 33, torch.float64)):
        got = argmax_module.argmax(x)
        assert got.dtype == torch.int64 and got.shape == (x.shape[0],)
        assert torch.equal(got, torch.argmax(x, dim=-1))
    monkeypatch.setenv("SLUICE_KERNELS", "torch")
    x = random_rows(3, 100, torch.float16)
    assert torch.equal(argmax_module.argmax(x), argmax_module._torch_impl(x))


@pytest.mark.parametrize("shape,dtype", [
    pytest.param((2, 3, 4), torch.float32, id="3d"),
    pytest.param((2, 4), torch.int32, id="integer"),
])
def test_argmax_asserts(shape, dtype):
    with pytest.raises(AssertionError):
        argmax_module.argmax(torch.zeros(shape, dtype=dtype, device=DEVICE))


@pytest.mark.parametrize("vocab,config", [(0, None), (100, (32, 48, 4)), (40000, (32, 32, 4))])
def test_launch_asserts(vocab, config):
    """No columns; a chunk of partial tiles; more than 1024 chunks."""
    from kernels.sampling.argmax_triton import argmax_triton

    with pytest.raises(AssertionError):
        argmax_triton(torch.zeros(2, vocab, device=DEVICE), config)


@pytest.mark.parametrize("rows", [1, 2, 16, 64, 1000])
@pytest.mark.parametrize("vocab", [1, 31, 1000, 32000, 128256, 3_000_000])
def test_pick_config_makes_whole_tile_chunks(rows, vocab):
    """Launchable for every shape: chunks of whole tiles, at most 1024 of them, none empty; a
    batch-1 row of a large vocabulary is spread over many programs."""
    from kernels.sampling.argmax_triton import pick_config

    block, chunk, _ = pick_config(rows, vocab)
    num_chunks = -(-vocab // chunk)
    assert chunk % block == 0 and num_chunks <= 1024 and (num_chunks - 1) * chunk < vocab
    if rows == 1 and vocab == 128256:
        assert num_chunks >= 32


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 64])
@pytest.mark.parametrize("pdl", ["1", "0"])
def test_gpu_llama_vocab(monkeypatch, dtype, rows, pdl):
    """V = 128,256: random rows, then the maximum repeated at the far end of each row and at the
    start of a chunk before it, then a NaN."""
    monkeypatch.setenv("SLUICE_PDL", pdl)
    x = random_rows(rows, 128256, dtype)
    assert torch.equal(argmax_module.argmax(x), torch.argmax(x, dim=-1))
    from kernels.sampling.argmax_triton import pick_config

    _, chunk, _ = pick_config(rows, 128256)
    x[:, [128255, 3 * chunk, 3 * chunk - 1, 128000]] = 100.0
    assert torch.equal(argmax_module.argmax(x), torch.argmax(x, dim=-1))
    x[rows // 2, [5000, 7]] = NAN
    assert torch.equal(argmax_module.argmax(x), torch.argmax(x, dim=-1))


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 64])
def test_gpu_cuda_graph_replays_on_new_logits(rows):
    """Captured once after an LM-head GEMV (a PDL kernel), replayed on new inputs, the argmax
    equals torch's on the new logits."""
    from kernels.gemm import gemv

    hidden = random_rows(rows, 512, torch.bfloat16, seed=1)
    weight = random_rows(128256, 512, torch.bfloat16, seed=2)

    def step():
        logits = gemv.linear(hidden, weight)
        return logits, argmax_module.argmax(logits)

    step()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits, ids = step()
    for seed in (3, 4, 5):
        hidden.copy_(random_rows(rows, 512, torch.bfloat16, seed=seed))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(ids, torch.argmax(logits, dim=-1))
        assert torch.equal(ids, torch.argmax(gemv.linear(hidden, weight), dim=-1))
