"""What each kind of kernel costs a batch-1 decode step: the graph replay time with kernels left out.

`python -m benchmarks.ablate_decode MODEL_DIR [--context 384] [--out FILE]` builds the worker's
`ModelRunner` (random weights), then re-captures the batch-1 decode CUDA graph with one kind of
kernel replaced by a no-op and times 100 replays of each:

- `none`: the step as served;
- `norm`: every RMSNorm returns its input (and the residual unchanged): no norm kernels;
- `attention`: every attention layer returns its query: no rotary, KV-write or attention kernels;
- `norm+attention`: what is left is the GEMV chain (plus the embedding and the argmax);
- `rotary`: no separate rotary + KV-write kernel (the attention kernel still runs). A batch-1
  decode step does both inside its attention launch (`ROTARY_IN_DECODE_MAX_BATCH`), so this
  leaves out nothing there;
- `decode`: no decode-attention kernel (at batch 1 that includes the rotary and KV write);
- `splits=N`: the decode attention split over N pieces of the context (served: by `choose_num_splits`);
- `decode-config=BLOCK_N,WARPS,STAGES`: the decode-attention tile configuration for bf16, head dim 128;
- `norm-warps=N`: the RMSNorm kernel with N warps (served: one per 512 channels);
- `gemv=N:K:BLOCK_N,BLOCK_K,WARPS,STAGES`: the GEMV tiles of the `[N, K]` weights, STAGES 1 for
  register tiles, 2+ for the shared-memory pipeline (served: `pick_config`);
- `no-pdl`: the served step with programmatic dependent launch off (`SLUICE_PDL=0`).

Parts joined by `+` apply together (`splits=2+decode-config=128,8,1`); an unknown or malformed name
is an error before the model is built.

`--sustained SECONDS` times the graphs as serving runs them: it captures every variant first,
replays the first one back to back for SECONDS, then times the variants in alternation (three rounds
of 200 replays each; the rows give their means). Right after idling an H200 runs the step faster
than under load, where it can sit at its power cap with lowered clocks, and a tile that wins cold
can lose sustained (`benchmarks/results/2026-11-29-session8`).

The outputs of an ablated step are wrong; only its time means something. The difference to `none`
is what that kind of kernel costs on the step's critical path (under PDL, kernel sums overlap and
cannot say this). Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import time
from pathlib import Path
from unittest import mock

from benchmarks.profile_decode import copy_bandwidth, decode_weight_bytes, fill_graph_inputs, time_calls
from kernels import attention
from kernels.attention import decode as decode_attention
from services.worker.config import WorkerConfig
from services.worker.cuda_graphs import StepGraphs
from services.worker.layers import attention as attention_layer
from services.worker.layers import norm as norm_layer
from services.worker.model_runner import ModelRunner


def _skip_norm(x, weight, eps, residual=None):
    return x if residual is None else (x, residual)


def _skip_attention(self, query, key, value, metadata, positions=None):
    return query


def _skip_rotary(*args):
    return None


def _skip_decode(self, query, *args, **kwargs):
    return query


def _patches(name: str) -> contextlib.ExitStack:
    """The patches of an ablation name: parts joined by `+`, each one of the module docstring's."""
    stack = contextlib.ExitStack()
    try:
        for part in name.split("+"):
            _patch(stack, part)
    except BaseException:
        stack.close()
        raise
    return stack


def _patch(stack: contextlib.ExitStack, part: str) -> None:
    key, _, value = part.partition("=")
    if part == "none":
        return
    if part == "norm":
        stack.enter_context(mock.patch.object(norm_layer, "rms_norm", _skip_norm))
    elif part == "attention":
        stack.enter_context(mock.patch.object(attention_layer.Attention, "forward", _skip_attention))
    elif part == "rotary":
        stack.enter_context(mock.patch.object(attention_layer, "rotary_and_write_kv", _skip_rotary))
    elif part == "decode":
        stack.enter_context(mock.patch.object(attention_layer.Attention, "_decode", _skip_decode))
    elif part == "no-pdl":
        stack.enter_context(mock.patch.dict(os.environ, {"SLUICE_PDL": "0"}))
    elif key == "splits":
        splits = int(value)
        stack.enter_context(mock.patch.object(attention, "choose_num_splits", lambda *args: splits))
    elif key == "decode-config":
        config = tuple(int(v) for v in value.split(","))
        if len(config) != 3:
            raise ValueError(f"{part!r}: decode-config=BLOCK_N,WARPS,STAGES")
        stack.enter_context(mock.patch.dict(decode_attention._CONFIGS, {(128, False): config}))
    elif key == "norm-warps":
        from kernels.elementwise import triton_kernels as elementwise_triton

        stack.enter_context(mock.patch.object(elementwise_triton, "rms_norm_triton",
                                              functools.partial(elementwise_triton.rms_norm_triton,
                                                                num_warps=int(value))))
    elif key == "gemv":
        from kernels.gemm import gemv_triton

        n, k, config = value.split(":")
        override = {(int(n), int(k)): tuple(int(v) for v in config.split(","))}
        if any(len(c) != 4 for c in override.values()):
            raise ValueError(f"{part!r}: gemv=N:K:BLOCK_N,BLOCK_K,WARPS,STAGES")
        served = gemv_triton.pick_config
        stack.enter_context(mock.patch.object(
            gemv_triton, "pick_config", lambda n, k, gated=False: override.get((n, k)) or served(n, k, gated)))
    else:
        raise ValueError(f"unknown ablation {part!r} (see `python -m benchmarks.ablate_decode --help`)")


def capture(runner: ModelRunner, context: int) -> StepGraphs:
    """Capture the batch-1 decode graph afresh (under the caller's patches), inputs loaded."""
    runner.graphs = StepGraphs(runner.model, 1, 0, -(-runner.max_model_len // runner.config.block_size),
                               runner.max_model_len, runner.device)
    runner.graphs.capture()
    fill_graph_inputs(runner, 1, context)
    return runner.graphs


def graph_ms(runner: ModelRunner, context: int) -> float:
    """Capture the batch-1 decode graph afresh (under the caller's patches) and time its replay."""
    return time_calls(capture(runner, context).graphs[1, 1].replay, steps=100, warmups=5)


def sustained_ms(replays: list, seconds: float, timer=time_calls, clock=time.perf_counter, rounds: int = 3,
                 steps: int = 200) -> list[float]:
    """Mean milliseconds per replay of each of `replays`, timed in alternation over `rounds` after
    `replays[0]` ran back to back for `seconds` (`timer(replay, steps=, warmups=)` as `time_calls`)."""
    deadline = clock() + seconds
    while clock() < deadline:
        timer(replays[0], steps=20, warmups=0)
    times = [[] for _ in replays]
    for _ in range(rounds):
        for replay, row in zip(replays, times):
            row.append(timer(replay, steps=steps, warmups=20))
    return [sum(row) / len(row) for row in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--context", type=int, default=384)
    parser.add_argument("--ablations", nargs="+", default=["none", "norm", "attention", "norm+attention", "no-pdl"],
                        help="none, norm, attention, rotary, decode, no-pdl, splits=N, "
                             "decode-config=BLOCK_N,WARPS,STAGES, norm-warps=N, gemv=N:K:BLOCK_N,BLOCK_K,WARPS,STAGES; "
                             "parts joined by + apply together")
    parser.add_argument("--sustained", type=float, default=0.0, metavar="SECONDS",
                        help="warm the GPU for SECONDS, then time the variants in alternation")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    for name in args.ablations:  # a malformed name fails now, not after the model is built
        _patches(name).close()

    runner = ModelRunner(WorkerConfig(model=args.model, load_format="dummy", dtype="bfloat16", max_model_len=4096,
                                      gpu_memory_utilization=0.85, max_graph_batch_size=1,
                                      max_graph_prefill_tokens=0))
    floor_ms = decode_weight_bytes(runner.model) / copy_bandwidth() * 1e3
    print(f"weights floor {floor_ms:.3f} ms/step")
    if args.sustained:
        graphs = []  # every variant's graph stays alive until all are timed
        for name in args.ablations:
            with _patches(name):
                graphs.append(capture(runner, args.context))
        times = sustained_ms([g.graphs[1, 1].replay for g in graphs], args.sustained)
    rows = []
    for i, name in enumerate(args.ablations):
        if args.sustained:
            ms = times[i]
        else:
            with _patches(name):
                ms = graph_ms(runner, args.context)
        rows.append({"ablation": name, "step_ms": ms, "saved_ms": rows[0]["step_ms"] - ms if rows else 0.0})
        print(f"  {name:16s} {ms:.3f} ms/step  ({rows[-1]['saved_ms']:+.3f} ms against {rows[0]['ablation']})")
    if args.out:
        args.out.write_text(json.dumps({"what": "ablate_decode", "model": args.model, "context": args.context,
                                        "sustained_s": args.sustained, "floor_ms": floor_ms, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
