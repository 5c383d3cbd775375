"""Triton kernels run under the interpreter on a machine without CUDA.

`TRITON_INTERPRET` is read when a `@triton.jit` function is defined, so it must be set before any
kernel module is imported; pytest loads this file before collecting the tests beside it.

The interpreter of Triton 3.9 multiplies bfloat16 `tl.dot` operands as their raw uint16 bits; the
patch below widens them to float32 first (exact: bf16 products summed in float32, as on a GPU).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _widen_bf16_dot_operands_in_interpreter() -> None:
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter.InterpreterBuilder.create_dot

    def widen(handle):
        if handle.dtype != tl.bfloat16:
            return handle
        return interpreter.TensorHandle((handle.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    interpreter.InterpreterBuilder.create_dot = create_dot


if os.environ.get("TRITON_INTERPRET") == "1":
    _widen_bf16_dot_operands_in_interpreter()
