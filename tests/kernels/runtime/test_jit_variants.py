"""Nothing that changes from one serving step to the next may select a new compiled variant of a
kernel (Triton JIT-compiles it then, a ~1 s stall mid-serving): these arguments are declared
unspecialised, and the worker counts any compile that still happens after start-up."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import triton

from kernels.runtime import jit_watch

# Index tensors of a step are views into one packed buffer (any alignment), or slices of them in a
# mixed step; the split count and block-table width vary with the batch.
EXPECTED = {
    "kernels.attention.decode._decode_kernel": (
        {"block_tables_ptr", "seq_lens_ptr", "mid_lse_ptr", "counters_ptr"}, {"stride_bt", "num_splits"}),
    "kernels.attention.extend._extend_kernel": (
        {"query_start_loc_ptr", "seq_lens_ptr", "block_tables_ptr"}, {"stride_bt"}),
    "kernels.elementwise.triton_kernels._rotary_kv_kernel": ({"positions_ptr", "slot_mapping_ptr"}, set()),
    "kernels.elementwise.triton_kernels._rotary_kernel": ({"positions_ptr"}, set()),
    "kernels.elementwise.triton_kernels._write_kv_kernel": ({"slot_mapping_ptr"}, set()),
}

PROBE = """
import importlib, json, sys
out = {}
for name in sys.argv[1:]:
    module, attr = name.rsplit(".", 1)
    kernel = getattr(importlib.import_module(module), attr)
    out[name] = [sorted(p.name for p in kernel.params if p.do_not_specialize_on_alignment),
                 sorted(p.name for p in kernel.params if p.do_not_specialize)]
print(json.dumps(out))
"""


def test_step_varying_arguments_are_not_specialised_on():
    # The interpreter (TRITON_INTERPRET=1, set for these tests) keeps no specialisation settings:
    # read them from the real JIT in a fresh process (building a JITFunction needs no GPU).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", PROBE, *EXPECTED], capture_output=True, text=True, env=env,
                          check=True, timeout=120)
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (alignment, value) in EXPECTED.items():
        assert alignment <= set(found[name][0]), (name, found[name][0])
        assert value <= set(found[name][1]), (name, found[name][1])


def test_on_compile_calls_back_and_lets_triton_compile():
    previous = triton.knobs.runtime.jit_cache_hook
    seen = []
    try:
        assert jit_watch.on_compile(seen.append)
        hook = triton.knobs.runtime.jit_cache_hook
        assert hook(key="k", repr="_kernel[num_warps=4](x: *bf16)", fn=None, compile={"key": "k"}) is None
    finally:
        triton.knobs.runtime.jit_cache_hook = previous
    assert len(seen) == 1 and seen[0].startswith("_kernel[num_warps=4](x: *bf16)") and "'key': 'k'" in seen[0]
