"""Triton `rms_norm` vs the pure-torch reference and the RMSNorm layer (TRITON_INTERPRET=1 on CPU)."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.elementwise import rmsnorm
from services.worker.layers.norm import RMSNorm
from tests.kernels.elementwise_tolerance import DTYPES, assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Triton's interpreter truncates float32 -> bfloat16 where the GPU rounds to nearest even, so on the CPU
# a single rounding can differ by one bf16 unit in the last place.
INTERPRETER_TRUNCATES_BF16 = DEVICE == "cpu"


@pytest.fixture(autouse=True, scope="module")
def triton_can_run():
    if DEVICE == "cpu":
        from kernels.elementwise import triton_kernels as elementwise_triton

        assert type(elementwise_triton._rms_norm_kernel).__name__ == "InterpretedFunction", \
            "kernels.elementwise.triton_kernels was imported before TRITON_INTERPRET=1 was set"


def make_case(num_tokens: int, hidden: int, dtype: torch.dtype, strided: bool, seed: int = 0):
    """x, residual `[T, H]` of different scales (x a column slice of a wider tensor when `strided`),
    weight `[H]` around 1."""
    gen = torch.Generator(DEVICE).manual_seed(seed)
    wide = torch.randn(num_tokens, hidden + (5 if strided else 0), generator=gen, device=DEVICE) * 3.0
    wide = wide.to(dtype)
    x = wide[:, :hidden]
    residual = (torch.randn(num_tokens, hidden, generator=gen, device=DEVICE) * 10.0).to(dtype)
    weight = (1.0 + 0.1 * torch.randn(hidden, generator=gen, device=DEVICE)).to(dtype)
    return x, weight, residual


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens,hidden,strided", [
    (1, 8, False), (3, 37, True), (4, 1000, False), (2, 4096, True), (2, 8193, False),
])
@pytest.mark.parametrize("with_residual", [False, True])
def test_matches_reference(dtype, num_tokens, hidden, strided, with_residual):
    x, weight, residual = make_case(num_tokens, hidden, dtype, strided)
    assert x.is_contiguous() != strided
    residual = residual if with_residual else None
    got = rmsnorm._triton_impl(x, weight, 1e-5, residual)
    want = rmsnorm._torch_impl(x, weight, 1e-5, residual)
    if with_residual:
        if dtype == torch.bfloat16 and INTERPRETER_TRUNCATES_BF16:
            assert_close(got[1], want[1])
        else:
            assert torch.equal(got[1], want[1]), "x + residual must be rounded exactly as torch rounds it"
        got, want = got[0], want[0]
    assert got.is_contiguous()
    assert_close(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_is_the_layer(dtype):
    x, weight, residual = make_case(3, 64, dtype, strided=True)
    layer = RMSNorm(64, eps=1e-6).to(DEVICE, dtype)
    layer.weight.copy_(weight)
    assert torch.equal(rmsnorm._torch_impl(x, weight, 1e-6), layer(x))
    for got, want in zip(rmsnorm._torch_impl(x, weight, 1e-6, residual), layer(x, residual), strict=True):
        assert torch.equal(got, want)


def test_eps_dominates_tiny_rows():
    """A zero row normalises to zero (eps keeps the rsqrt finite); a tiny row stays tiny."""
    x = torch.zeros(2, 48, device=DEVICE)
    x[1] = 1e-6
    weight = torch.ones(48, device=DEVICE)
    got = rmsnorm._triton_impl(x, weight, 1e-5)
    assert torch.equal(got[0], torch.zeros(48, device=DEVICE))
    assert_close(got, rmsnorm._torch_impl(x, weight, 1e-5))


def test_no_tokens():
    x, weight, residual = make_case(0, 16, torch.float32, strided=False)
    out, new_residual = rmsnorm._triton_impl(x, weight, 1e-6, residual)
    assert out.shape == new_residual.shape == (0, 16)


def test_dispatch(monkeypatch):
    """CPU tensors (or SLUICE_KERNELS=torch) take the reference; otherwise the Triton launcher."""
    calls = []
    monkeypatch.setattr(rmsnorm, "_triton_impl", lambda *args: calls.append("triton"))
    monkeypatch.setattr(rmsnorm, "_torch_impl", lambda *args: calls.append("torch"))
    x, weight, residual = make_case(2, 16, torch.float32, strided=False)
    monkeypatch.setenv("SLUICE_KERNELS", "torch")
    rmsnorm.rms_norm(x, weight, 1e-6, residual)
    monkeypatch.delenv("SLUICE_KERNELS")
    rmsnorm.rms_norm(x, weight, 1e-6, residual)
    assert calls == ["torch", "triton" if DEVICE == "cuda" else "torch"]


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda x, w, r: (x, w.float(), r), id="weight-dtype"),
    pytest.param(lambda x, w, r: (x, w[:-1], r), id="weight-shape"),
    pytest.param(lambda x, w, r: (x.t().contiguous().t(), w, r), id="column-stride"),
    pytest.param(lambda x, w, r: (x, w, r[:-1]), id="residual-shape"),
    pytest.param(lambda x, w, r: (x[None], w, None), id="3d"),
])
def test_launch_asserts(mutate):
    args = make_case(4, 16, torch.bfloat16, strided=False)
    x, weight, residual = mutate(*args)
    with pytest.raises(AssertionError):
        rmsnorm.rms_norm(x, weight, 1e-6, residual)


@pytest.mark.gpu
@pytest.mark.parametrize("num_tokens", [1, 64, 512, 8192])
@pytest.mark.parametrize("hidden", [4096, 5120, 8192])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_realistic_shapes(num_tokens, hidden, dtype):
    x, weight, residual = make_case(num_tokens, hidden, dtype, strided=False)
    out, new_residual = rmsnorm.rms_norm(x, weight, 1e-5, residual)
    want_out, want_residual = rmsnorm._torch_impl(x, weight, 1e-5, residual)
    assert torch.equal(new_residual, want_residual)
    assert_close(out, want_out)
    assert_close(rmsnorm.rms_norm(x, weight, 1e-5), rmsnorm._torch_impl(x, weight, 1e-5))


@pytest.mark.parametrize("num_warps", [1, 4])
def test_num_warps_override_changes_nothing_but_the_launch(num_warps):
    from kernels.elementwise.triton_kernels import rms_norm_triton

    x, weight, residual = make_case(3, 1000, torch.float32, strided=True)
    got = rms_norm_triton(x, weight, 1e-5, residual, num_warps=num_warps)
    want = rmsnorm._torch_impl(x, weight, 1e-5, residual)
    assert_close(got[0], want[0])
    assert torch.equal(got[1], want[1])
