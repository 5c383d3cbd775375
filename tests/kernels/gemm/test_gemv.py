"""Triton GEMV (`kernels/gemm/gemv_triton.py`) vs `F.linear` and the activation reference
(TRITON_INTERPRET=1 on CPU)."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.gemm import gemv
from tests.kernels.elementwise_tolerance import DTYPES

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Outputs are sums over K in float32 rounded once to the dtype; summation order differs from cuBLAS.
TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


def make_case(rows: int, n: int, k: int, dtype: torch.dtype, gated: bool, bias: bool, seed: int = 0):
    """x (a row-strided view when gated, as a slice of a wider activation buffer), weight, bias."""
    gen = torch.Generator(DEVICE).manual_seed(seed)
    x_width = 2 * k if gated else k
    x = torch.randn(rows, x_width + 8, generator=gen, device=DEVICE)[:, :x_width]
    weight = torch.randn(n, k, generator=gen, device=DEVICE) / k ** 0.5
    b = torch.randn(n, generator=gen, device=DEVICE) if bias else None
    return x.to(dtype), weight.to(dtype), None if b is None else b.to(dtype)


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape and got.is_contiguous()
    atol, rtol = TOLERANCE[want.dtype]
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n,k,gated,bias", [
    (1, 64, 256, False, False), (1, 37, 48, True, True), (2, 40, 512, False, True),
    (3, 24, 320, True, False), (4, 17, 1024, False, False), (4, 64, 96, True, True),
])
def test_matches_reference(dtype, rows, n, k, gated, bias):
    from kernels.gemm.gemv_triton import gemv_triton

    x, weight, b = make_case(rows, n, k, dtype, gated, bias)
    assert_close(gemv_triton(x, weight, b, gated), gemv._torch_impl(x, weight, b, gated))


@pytest.mark.parametrize("config", [(8, 128, 4, 1), (32, 64, 2, 1), (4, 256, 8, 1),  # register tiles
                                    (2, 128, 4, 2), (8, 64, 2, 3), (2, 512, 4, 2)])  # shared-memory pipeline
@pytest.mark.parametrize("k", [512, 330])  # 1 to 8 K tiles, evenly and not
@pytest.mark.parametrize("gated", [False, True])
def test_every_config_computes_the_same_product(config, k, gated):
    """The tuned configurations change only the tiling and how tiles are staged, never the result
    beyond summation order."""
    from kernels.gemm.gemv_triton import gemv_triton

    x, weight, b = make_case(3, 50, k, torch.float32, gated=gated, bias=True)
    assert_close(gemv_triton(x, weight, b, gated, config=config), gemv._torch_impl(x, weight, b, gated))


@pytest.mark.parametrize("n,k,gated", [(6144, 4096, False), (4096, 14336, True), (5120, 5120, False),
                                       (13824, 5120, True), (40, 48, False)])
def test_pick_config_tiles(n, k, gated):
    """Plain products take the shared-memory pipeline, gated ones register tiles; a K tile never
    exceeds K rounded up to a power of two, and the stages fit what the path means."""
    from kernels.gemm.gemv_triton import pick_config

    block_n, block_k, num_warps, stages = pick_config(n, k, gated)
    assert (stages == 1) == gated and block_n in (2, 4, 8) and num_warps in (4, 8)
    assert block_k & (block_k - 1) == 0 and block_k <= max(16, 2 * k)


def test_no_rows():
    from kernels.gemm.gemv_triton import gemv_triton

    x, weight, _ = make_case(0, 16, 64, torch.float32, gated=False, bias=False)
    assert gemv_triton(x, weight, None, False).shape == (0, 16)


def test_dispatch(monkeypatch):
    """Half-precision CUDA operands with one row take Triton, unless SLUICE_GEMV=cublas or
    SLUICE_KERNELS=torch; more rows, float32 and CPU tensors take cuBLAS / torch."""
    x, weight, _ = make_case(1, 16, 64, torch.bfloat16, gated=False, bias=False)
    assert gemv.use_gemv(x, weight) == (DEVICE == "cuda")
    wide, _, _ = make_case(2, 16, 64, torch.bfloat16, gated=False, bias=False)
    assert not gemv.use_gemv(wide, weight)
    assert not gemv.use_gemv(x.float(), weight.float())
    monkeypatch.setenv("SLUICE_GEMV", "cublas")
    assert not gemv.use_gemv(x, weight)
    monkeypatch.delenv("SLUICE_GEMV")
    monkeypatch.setenv("SLUICE_KERNELS", "torch")
    assert not gemv.use_gemv(x, weight)


@pytest.mark.parametrize("gated", [False, True])
def test_linear_without_triton_is_the_reference(monkeypatch, gated):
    monkeypatch.setenv("SLUICE_GEMV", "cublas")
    x, weight, b = make_case(6, 16, 64, torch.float32, gated=gated, bias=True)
    torch.testing.assert_close(gemv.linear(x, weight, b, gated), gemv._torch_impl(x, weight, b, gated))


@pytest.mark.parametrize("shapes", [
    pytest.param(((2, 64), (16, 32)), id="k-mismatch"),
    pytest.param(((2, 64), (16, 64), True), id="gated-needs-2k"),
    pytest.param(((2, 3, 64), (16, 64)), id="3d"),
])
def test_launch_asserts(shapes):
    x_shape, w_shape, *gated = shapes
    with pytest.raises(AssertionError):
        gemv.linear(torch.zeros(x_shape, device=DEVICE), torch.zeros(w_shape, device=DEVICE),
                    gated=bool(gated))


@pytest.mark.gpu
@pytest.mark.parametrize("n,k,gated", [(6144, 4096, False), (4096, 4096, False), (28672, 4096, False),
                                       (4096, 14336, True), (128256, 4096, False), (1000, 1000, True)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pdl", ["1", "0"])
def test_gpu_llama_shapes(monkeypatch, n, k, gated, dtype, pdl):
    monkeypatch.setenv("SLUICE_PDL", pdl)
    x, weight, _ = make_case(1, n, k, dtype, gated, bias=False)
    assert gemv.use_gemv(x, weight)
    assert_close(gemv.linear(x, weight, None, gated), gemv._torch_impl(x, weight, None, gated))


@pytest.mark.gpu
def test_gpu_pdl_chain_in_a_graph_keeps_order(monkeypatch):
    """A chain of GEMVs, each reading the previous one's output, launched with programmatic
    dependent launch and replayed from a CUDA graph, equals the chain run without PDL."""
    from kernels.runtime import pdl

    assert pdl.enabled(torch.device("cuda")) == (torch.cuda.get_device_capability() >= (9, 0))
    x, _, _ = make_case(1, 4096, 4096, torch.bfloat16, gated=False, bias=False)
    weights = [make_case(1, 4096, 4096, torch.bfloat16, False, False, seed=i)[1] for i in range(1, 17)]

    def chain(y):
        for w in weights:
            y = gemv.linear(y, w)
        return y

    monkeypatch.setenv("SLUICE_PDL", "0")
    want = chain(x)
    monkeypatch.setenv("SLUICE_PDL", "1")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = chain(x)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(got, want)
