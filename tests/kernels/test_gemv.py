"""Triton decode-size linear layers (kernels/gemv.py) vs their torch references.

Run under TRITON_INTERPRET=1 on the CPU (tests/kernels/conftest.py); on a GPU machine the same tests
run the compiled kernels, plus the Llama-3-8B shapes marked `gpu`.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import activation, gemv, rmsnorm
from kernels.gemv_triton import gemv_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INTERPRETER_TRUNCATES_BF16 = DEVICE == "cpu"  # numpy has no bfloat16: the interpreter truncates
# rows: 1 and 4 fill one row block, 3 leaves padding rows, 6 takes two row blocks.
# (n, k): ragged N against BLOCK_N = 8 and ragged K against the BLOCK_K the launcher picks.
SHAPES = [(1, 32, 64), (3, 24, 48), (4, 40, 96), (6, 16, 64)]


def tolerance(dtype: torch.dtype) -> dict:
    return {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float16: {"rtol": 2e-3, "atol": 2e-3},
            torch.bfloat16: {"rtol": 1.6e-2, "atol": 1.6e-2}}[dtype]


def make(shape, dtype, seed, bias=False, x_width=None):
    rows, n, k = shape
    gen = torch.Generator().manual_seed(seed)
    width = x_width or k
    x = torch.randn(rows, width, generator=gen).to(DEVICE, dtype)
    weight = (torch.randn(n, k, generator=gen) / k ** 0.5).to(DEVICE, dtype)
    b = torch.randn(n, generator=gen).to(DEVICE, dtype) if bias else None
    return x, weight, b


def triton_path(prologue, x, weight, bias=None, **kwargs):
    """The Triton launcher itself (the entry points run it only where `use_triton` says so)."""
    return gemv_triton(prologue, x, weight, bias, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_f_linear(bias, shape, dtype):
    x, weight, b = make(shape, dtype, seed=shape[0] + shape[1], bias=bias)
    torch.testing.assert_close(triton_path("none", x, weight, b), F.linear(x, weight, b), **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_linear_matches_norm_then_linear(with_residual, shape, dtype):
    k = shape[2]
    x, weight, b = make(shape, dtype, seed=7 + k)
    residual = torch.randn_like(x) if with_residual else None
    norm_weight = (1 + 0.1 * torch.randn(k)).to(DEVICE, dtype)
    new_residual = torch.full_like(x, float("nan")) if with_residual else None
    y = triton_path("rms_norm", x, weight, b, residual=residual, norm_weight=norm_weight, eps=1e-5,
                    new_residual=new_residual)
    if with_residual:
        normed, expected_residual = rmsnorm._torch_impl(x, norm_weight, 1e-5, residual)
        if dtype == torch.bfloat16 and INTERPRETER_TRUNCATES_BF16:
            torch.testing.assert_close(new_residual, expected_residual)
        else:
            assert torch.equal(new_residual, expected_residual)  # rounded exactly as torch rounds it
    else:
        normed = rmsnorm._torch_impl(x, norm_weight, 1e-5)
    torch.testing.assert_close(y, F.linear(normed, weight), **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_silu_and_mul_linear_matches_activation_then_linear(shape, dtype):
    _, n, k = shape
    x, weight, b = make(shape, dtype, seed=11 + n, bias=True, x_width=2 * k)
    y = triton_path("silu_and_mul", x, weight, b)
    torch.testing.assert_close(y, F.linear(activation._torch_impl(x), weight, b), **tolerance(dtype))


def test_strided_input_rows():
    """x as a view into wider rows (a slice of a packed projection's output)."""
    wide = torch.randn(3, 100, device=DEVICE)
    x = wide[:, 10:74]
    weight = torch.randn(16, 64, device=DEVICE)
    torch.testing.assert_close(triton_path("none", x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-5)
    gate_up = wide[:, 2:98]  # [3, 96]: gate 48 | up 48
    weight = torch.randn(8, 48, device=DEVICE)
    torch.testing.assert_close(triton_path("silu_and_mul", gate_up, weight),
                               F.linear(activation._torch_impl(gate_up), weight), rtol=1e-5, atol=1e-5)


def test_small_configs_agree():
    """Every tile shape computes the same product (BLOCK_K below K exercises the loop over K)."""
    x, weight, _ = make((2, 48, 96), torch.float32, seed=5)
    expected = F.linear(x, weight)
    for config in [(8, 32, 4, 1), (16, 64, 4, 2), (32, 128, 2, 1)]:
        torch.testing.assert_close(triton_path("none", x, weight, config=config), expected, rtol=1e-5, atol=1e-5)


def test_entry_points_fall_back_to_references_on_cpu():
    """On CPU tensors without the interpreter path the entry points are exactly the references."""
    if DEVICE == "cuda":
        pytest.skip("CPU fallback")
    x, weight, b = make((2, 16, 32), torch.float32, seed=3, bias=True)
    residual = torch.randn_like(x)
    norm_weight = torch.rand(32)
    y, new_residual = gemv.rms_norm_linear(x, residual, norm_weight, 1e-6, weight, b)
    normed, expected_residual = rmsnorm._torch_impl(x, norm_weight, 1e-6, residual)
    assert torch.equal(new_residual, expected_residual)
    assert torch.equal(y, F.linear(normed, weight, b))
    y, same = gemv.rms_norm_linear(x, None, norm_weight, 1e-6, weight)
    assert same is x and torch.equal(y, F.linear(rmsnorm._torch_impl(x, norm_weight, 1e-6), weight))
    gate_up, down = torch.randn(2, 32), weight[:, :16].contiguous()
    assert torch.equal(gemv.silu_and_mul_linear(gate_up, down), F.linear(activation._torch_impl(gate_up), down))


def test_bad_shapes_are_rejected():
    x, weight, _ = make((1, 16, 32), torch.float32, seed=1)
    with pytest.raises(AssertionError):
        gemv.linear(x, weight.t().contiguous())
    with pytest.raises(AssertionError):
        gemv.silu_and_mul_linear(x, weight)  # silu halves x: K would be 16, weight has 32


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize("name,n,k", [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096),
                                      ("down", 4096, 14336)])
def test_llama3_8b_shapes_on_gpu(name, n, k, rows):
    x, weight, _ = make((rows, n, k), torch.bfloat16, seed=rows)
    expected = F.linear(x.float(), weight.float())
    torch.testing.assert_close(gemv.linear(x, weight).float(), expected, rtol=2e-2, atol=2e-2)
    residual = torch.randn_like(x)
    norm_weight = torch.ones(k, device=DEVICE, dtype=torch.bfloat16)
    y, new_residual = gemv.rms_norm_linear(x, residual, norm_weight, 1e-5, weight)
    normed, expected_residual = rmsnorm._torch_impl(x, norm_weight, 1e-5, residual)
    assert torch.equal(new_residual, expected_residual)
    torch.testing.assert_close(y, F.linear(normed, weight), rtol=2e-2, atol=2e-2)
