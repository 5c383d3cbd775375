"""Compile the decode step's Triton kernels for sm_90 without a GPU (run by test_compile_sm90.py in
a process of its own: under TRITON_INTERPRET=1 kernels are not compilable objects). Prints one
line per check; exits non-zero on the first failure, 77 when Triton has no NVIDIA tool chain."""
from __future__ import annotations

import inspect
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)


def compile_sm90(kernel, types: dict[str, str], constexprs: dict, num_warps: int = 4, fp_fusion: bool = True,
                 num_stages: int = 3, aligned: tuple[str, ...] = ()) -> str:
    """PTX of `kernel`; parameters are constexpr when upper case, else their `types` entry (i32).
    Pointers and the integers named in `aligned` are declared divisible by 16, as the launcher
    specialises them for aligned tensors and sizes (without it no load is wide enough for cp.async)."""
    names = list(inspect.signature(kernel.fn).parameters)
    sig = {n: "constexpr" if n.isupper() else types.get(n, "i32") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if sig[n].startswith("*") or n in aligned}
    compiled = triton.compile(ASTSource(kernel, sig, constexprs=constexprs, attrs=attrs), target=TARGET,
                              options={"num_warps": num_warps, "num_stages": num_stages, "launch_pdl": True,
                                       "enable_fp_fusion": fp_fusion})
    return compiled.asm["ptx"]


def main() -> int:
    from kernels.elementwise.triton_kernels import _rms_norm_kernel
    from kernels.gemm.gemv_triton import _gemv_kernel
    from kernels.sampling.argmax_triton import _chunk_kernel, _merge_kernel

    try:
        for dtype in ("*bf16", "*fp16", "*fp32"):
            ptx = compile_sm90(_chunk_kernel, {"x_ptr": dtype, "partial_ptr": "*i64"}, {"BLOCK": 1024, "USE_PDL": True})
            assert "griddepcontrol.wait" in ptx
        compile_sm90(_merge_kernel, {"partial_ptr": "*i64", "out_ptr": "*i64"}, {"BLOCK": 64, "USE_PDL": True}, 1)
        print("argmax: ok")
        for gated in (False, True):
            for block_n, block_k, stages in ((8, 512, 1), (4, 1024, 2)):
                ptx = compile_sm90(_gemv_kernel, dict.fromkeys(("x_ptr", "w_ptr", "bias_ptr", "y_ptr"), "*bf16"),
                                   dict(BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=True, HAS_BIAS=False, GATED=gated,
                                        STAGES=stages, USE_PDL=True),
                                   num_stages=stages, aligned=("n", "k", "x_row_stride"))
                assert ptx.index("ld.global") < ptx.index("griddepcontrol.wait"), "no weight load before the PDL wait"
                assert ("cp.async" in ptx) == (stages > 1), f"STAGES={stages}: shared-memory pipeline or not"
        print("gemv: ok, a weight tile loads before the PDL wait; STAGES > 1 streams the rest through cp.async")
        ptrs = dict.fromkeys(("x_ptr", "residual_ptr", "weight_ptr", "out_ptr", "new_residual_ptr"), "*bf16")
        compile_sm90(_rms_norm_kernel, {**ptrs, "eps": "fp32"}, dict(HAS_RESIDUAL=True, BLOCK=4096, USE_PDL=True), 8)
        print("rms_norm: ok")
        from kernels.attention.decode import _decode_kernel

        types = {name: "*bf16" for name in ("q_ptr", "k_cache_ptr", "v_cache_ptr", "out_ptr", "key_ptr", "value_ptr")}
        types.update(block_tables_ptr="*i32", seq_lens_ptr="*i32", counters_ptr="*i32", mid_out_ptr="*fp32",
                     mid_lse_ptr="*fp32", positions_ptr="*i64", slot_mapping_ptr="*i64", cos_sin_ptr="*fp32",
                     qk_scale="fp32")
        for rotary, split in ((False, False), (False, True), (True, False), (True, True)):
            constexprs = dict(GROUP=4, HEAD_DIM=128, BLOCK_SIZE=16, BLOCK_H=16, BLOCK_N=64, SPLIT=split,
                              BLOCK_S=8 if split else 1, IS_FP32=False, ROTARY=rotary, USE_PDL=True)
            ptx = compile_sm90(_decode_kernel, types, constexprs, fp_fusion=not rotary)  # as decode_attention_fwd
            before_wait = ptx[:ptx.index("griddepcontrol.wait")]
            assert before_wait.count("ld.global") >= 3, "no block-table and K/V loads before the PDL wait"
            if rotary:  # the rotation rounds its product and its sum, as rotary_and_write_kv does
                assert "fma.rn.bf16" not in ptx, "the rotation's product and sum fused into one rounding"
                fused = compile_sm90(_decode_kernel, types, constexprs, fp_fusion=True)
                assert "fma.rn.bf16" in fused, "the check above can no longer see the hazard it guards"
        print("decode attention: ok, the first K/V tile loads before the PDL wait")
    except RuntimeError as exc:
        if "ptxas" in str(exc):
            print(f"no NVIDIA tool chain: {exc}")
            return 77
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
