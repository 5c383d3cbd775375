"""When kernels use programmatic dependent launch (`kernels/runtime/pdl.py`)."""
from __future__ import annotations

import pytest
import torch

from kernels.runtime import pdl


def test_off_for_cpu_tensors_and_under_the_interpreter(monkeypatch):
    monkeypatch.delenv("SLUICE_PDL", raising=False)
    assert not pdl.enabled(torch.device("cpu"))
    if torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert not pdl.enabled(torch.device("cuda"))


def test_sluice_pdl_0_turns_it_off(monkeypatch):
    monkeypatch.setenv("SLUICE_PDL", "0")
    assert not pdl.enabled(torch.device("cuda"))  # decided before asking the device


@pytest.mark.gpu
def test_on_for_hopper_and_newer(monkeypatch):
    monkeypatch.delenv("SLUICE_PDL", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert pdl.enabled(torch.device("cuda")) == (torch.cuda.get_device_capability() >= (9, 0))
