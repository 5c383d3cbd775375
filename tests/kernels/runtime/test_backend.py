"""Which implementation `kernels.runtime.backend.use_triton` picks."""
from __future__ import annotations

import pytest
import torch

from kernels.runtime.backend import use_triton


def test_cpu_tensors_use_torch(monkeypatch):
    monkeypatch.delenv("SLUICE_KERNELS", raising=False)
    assert not use_triton(torch.zeros(2), torch.zeros(3))


@pytest.mark.gpu
def test_cuda_tensors_use_triton_unless_told(monkeypatch):
    monkeypatch.delenv("SLUICE_KERNELS", raising=False)
    cuda = torch.zeros(2, device="cuda")
    assert use_triton(cuda, cuda)
    assert not use_triton(cuda, torch.zeros(2))
    monkeypatch.setenv("SLUICE_KERNELS", "torch")
    assert not use_triton(cuda)
