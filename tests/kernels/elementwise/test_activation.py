"""Triton `silu_and_mul` vs the pure-torch reference (TRITON_INTERPRET=1 on CPU)."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch.nn.functional as F

from kernels.elementwise import activation
from tests.kernels.elementwise_tolerance import DTYPES, assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True, scope="module")
def triton_can_run():
    if DEVICE == "cpu":
        from kernels.elementwise import triton_kernels as elementwise_triton

        assert type(elementwise_triton._silu_and_mul_kernel).__name__ == "InterpretedFunction", \
            "kernels.elementwise.triton_kernels was imported before TRITON_INTERPRET=1 was set"


def make_case(num_tokens: int, inter: int, dtype: torch.dtype, strided: bool, seed: int = 0) -> torch.Tensor:
    """x `[T, 2I]` (a column slice of a wider tensor when `strided`), with a few extreme gate values."""
    gen = torch.Generator(DEVICE).manual_seed(seed)
    wide = torch.randn(num_tokens, 2 * inter + (3 if strided else 0), generator=gen, device=DEVICE) * 4.0
    wide[:, 0] = -80.0
    wide[:, inter - 1] = 60.0
    return wide.to(dtype)[:, : 2 * inter]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens,inter,strided", [
    (1, 1, False), (3, 37, True), (4, 1500, False), (2, 2048, True),
])
def test_matches_reference(dtype, num_tokens, inter, strided):
    x = make_case(num_tokens, inter, dtype, strided)
    assert x.is_contiguous() != strided
    got = activation._triton_impl(x)
    assert got.is_contiguous()
    assert_close(got, activation._torch_impl(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_is_hf_arithmetic(dtype):
    x = make_case(3, 40, dtype, strided=True)
    gate, up = x[:, :40], x[:, 40:]
    assert torch.equal(activation._torch_impl(x), F.silu(gate) * up)


def test_no_tokens():
    assert activation._triton_impl(make_case(0, 8, torch.float32, strided=False)).shape == (0, 8)


def test_dispatch(monkeypatch):
    """CPU tensors (or SLUICE_KERNELS=torch) take the reference; otherwise the Triton launcher."""
    calls = []
    monkeypatch.setattr(activation, "_triton_impl", lambda *args: calls.append("triton"))
    monkeypatch.setattr(activation, "_torch_impl", lambda *args: calls.append("torch"))
    x = make_case(2, 8, torch.float32, strided=False)
    monkeypatch.setenv("SLUICE_KERNELS", "torch")
    activation.silu_and_mul(x)
    monkeypatch.delenv("SLUICE_KERNELS")
    activation.silu_and_mul(x)
    assert calls == ["torch", "triton" if DEVICE == "cuda" else "torch"]


@pytest.mark.parametrize("x", [
    pytest.param(torch.zeros(2, 7), id="odd-width"),
    pytest.param(torch.zeros(2, 8).t(), id="column-stride"),
    pytest.param(torch.zeros(2, 3, 8), id="3d"),
    pytest.param(torch.zeros(2, 8, dtype=torch.int32), id="int"),
])
def test_launch_asserts(x):
    with pytest.raises(AssertionError):
        activation.silu_and_mul(x.to(DEVICE))


@pytest.mark.gpu
@pytest.mark.parametrize("num_tokens", [1, 64, 512, 8192])
@pytest.mark.parametrize("inter", [14336, 11008, 1000])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_realistic_shapes(num_tokens, inter, dtype):
    x = make_case(num_tokens, inter, dtype, strided=False)
    assert_close(activation.silu_and_mul(x), activation._torch_impl(x))
