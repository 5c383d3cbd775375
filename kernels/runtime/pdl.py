"""Programmatic dependent launch (PDL, sm_90 and newer) for the kernels of a decode step.

Between two kernels on a stream the GPU normally drains the first grid, then launches the second:
a few microseconds per boundary, and a decode step of an 8B model has about 250 of them. A kernel
launched with `launch_pdl=True` may instead be scheduled as soon as every program of the kernel
before it has executed `gdc_launch_dependents()`; it then blocks in `gdc_wait()` until that kernel
has completed and its writes are visible.

The contract every kernel compiled with `USE_PDL` keeps:
1. it calls `gdc_launch_dependents()` at its start, so the next kernel can be made resident early;
2. before `gdc_wait()` it writes nothing and reads only what was complete before the forward pass
   began: weights, the step's metadata (positions, slot mapping, sequence lengths, block
   tables), which the worker writes before the forward pass, and the KV cache of positions that
   earlier steps computed (a decode row's context but its newest token). A model's forward pass starts with a
   kernel launched without PDL (the embedding lookup), and a PDL kernel cannot start before a
   non-PDL kernel ahead of it has completed, so no PDL kernel overlaps those writes.
A kernel completes only after its own wait returned, so when kernel N+2 passes its wait, N+1 and
therefore N have completed: ordering stays transitive along the chain, whatever ran early. The
GEMV loads its first weight tile in the window, decode attention its first K/V tile, rotary its
metadata.

`SLUICE_PDL=0` (read at every launch) turns it off; it is off under the Triton interpreter, which
has no grid-dependency instructions, and on GPUs before sm_90. Imported by the Triton kernel
modules only.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


def launch_options(device: torch.device) -> dict[str, bool]:
    """The keyword arguments that make a launch on `device` use PDL or not: the kernel's `USE_PDL`
    constexpr and Triton's `launch_pdl` launch option, always equal."""
    use_pdl = enabled(device)
    return {"USE_PDL": use_pdl, "launch_pdl": use_pdl}


def enabled(device: torch.device) -> bool:
    """Whether kernels launched now on `device` use programmatic dependent launch."""
    if os.environ.get("SLUICE_PDL", "1") == "0" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return device.type == "cuda" and _capability(device.index) >= (9, 0)


@functools.cache
def _capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


@triton.jit
def allow_next(USE_PDL: tl.constexpr):
    """Contract point 1: the next kernel may be scheduled (a kernel's first statement)."""
    if USE_PDL:
        gdc_launch_dependents()


@triton.jit
def wait_previous(USE_PDL: tl.constexpr):
    """Block until the previous kernel has completed and its writes are visible (contract point 2:
    nothing but weights and step metadata may be read before this)."""
    if USE_PDL:
        gdc_wait()


@triton.jit
def start(USE_PDL: tl.constexpr):
    """The first statement of a kernel that reads nothing before waiting."""
    allow_next(USE_PDL)
    wait_previous(USE_PDL)
