"""Serving benchmark for Sluice, with the metric definitions of `vllm bench serve`.

A random-token workload (fixed input and output lengths; greedy, ignore_eos and
min_tokens = max_tokens = output length, so every request produces exactly `--output-len` tokens) is
sent to one of three backends and every request is timed on the client side. The parts:

- benchmarks.workload: the random prompts and the send times;
- benchmarks.backends: the grpc, scheduler and inprocess clients;
- benchmarks.serve_metrics: the per-request timelines, the metric definitions and computations,
  and the printed table;
- this module: the command line, the request schedule (Runner), the run and its result dict.

    python -m benchmarks.serve --backend grpc --address 127.0.0.1:50051 \\
        --num-prompts 64 --input-len 1024 --output-len 128 --max-concurrency 8 --out result.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
import uuid
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks import server_counters
from benchmarks.backends import Backend, BenchmarkError, ServerInfo, describe_error, make_backend
from benchmarks.serve_metrics import (
    RequestRecord,
    compute_metrics,
    detailed_arrays,
    error_counts,
    format_table,
)
from benchmarks.workload import (
    BenchRequest,
    allowed_token_ids,
    arrival_offsets,
    make_requests,
    random_prompts,
    special_token_ids,
)

BACKENDS = ("grpc", "scheduler", "inprocess")
DEFAULT_ADDRESSES = {"grpc": "127.0.0.1:50051", "scheduler": "127.0.0.1:50052"}
RESULT_KIND = "sluice_serve"
DESCRIPTION = ("Serving benchmark with the metrics of `vllm bench serve` (TTFT, TPOT, ITL, E2EL, "
               "throughputs). The worker and scheduler flags apply to --backend inprocess only.")


# ---------------------------------------------------------------- running


class Runner:
    """Sends requests to a backend on a schedule, at most `max_concurrency` in flight, and records
    each request's timeline."""

    def __init__(self, backend: Backend, max_concurrency: int | None, progress=None):
        self.backend = backend
        self.semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self.progress = progress
        self.in_flight = 0
        self.peak_in_flight = 0

    async def run(self, requests: list[BenchRequest],
                  offsets: list[float]) -> tuple[list[RequestRecord], float, float]:
        """Run every request; returns (records in request order, start time, duration in s)."""
        records = [RequestRecord(prompt_len=len(r.prompt_token_ids)) for r in requests]
        start = time.perf_counter()
        await asyncio.gather(*(self._launch(req, rec, start + off)
                               for req, rec, off in zip(requests, records, offsets, strict=True)))
        return records, start, time.perf_counter() - start

    async def _launch(self, request: BenchRequest, record: RequestRecord, at: float) -> None:
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.semaphore is None:
            await self._send(request, record)
            return
        async with self.semaphore:
            await self._send(request, record)

    async def _send(self, request: BenchRequest, record: RequestRecord) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        record.send_time = time.perf_counter()
        try:
            async for chunk in self.backend.generate(request.request_id, request.prompt_token_ids,
                                                     request.output_len):
                record.add_chunk(time.perf_counter(), chunk)
            if record.finish_reason is None:
                record.error = "stream ended without a finish reason"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed request is data, not a crash
            record.error = describe_error(exc)
        finally:
            self.in_flight -= 1
            if self.progress is not None:
                self.progress.update(1)


def concurrency(args: argparse.Namespace) -> int | None:
    """Requests in flight in steady state: --max-concurrency, or all of them at rate inf; None when
    a finite request rate decides."""
    if args.max_concurrency:
        return min(args.max_concurrency, args.num_prompts)
    return args.num_prompts if math.isinf(args.request_rate) else None


def check_server(args: argparse.Namespace, info: ServerInfo) -> None:
    """Raise BenchmarkError when the workload cannot run on this server."""
    if args.input_len + args.output_len > info.max_model_len:
        raise BenchmarkError(f"--input-len {args.input_len} + --output-len {args.output_len} exceeds "
                             f"the server's max_model_len {info.max_model_len}")
    if args.token_id_lo >= info.vocab_size:
        raise BenchmarkError(f"--token-id-lo {args.token_id_lo} is not below the server's "
                             f"vocab_size {info.vocab_size}")


def special_ids_source(args: argparse.Namespace) -> str | None:
    """The model directory whose tokenizer names the special ids to avoid."""
    if args.backend == "inprocess":
        from services import cli
        return cli._model_dir(args)
    return args.model


def workloads(args: argparse.Namespace, info: ServerInfo) -> tuple[list, list, list[float]]:
    """(measured requests, warm-up requests, measured send offsets), all from --dataset-seed."""
    excluded = set(info.eos_token_ids) | special_token_ids(special_ids_source(args))
    allowed = allowed_token_ids(info.vocab_size, args.token_id_lo, excluded)
    if allowed.size == 0:
        raise BenchmarkError(f"no token id in [{args.token_id_lo}, {info.vocab_size}) is "
                             "outside the special/EOS ids")
    prompt_seed, warmup_seed, arrival_seed = np.random.SeedSequence(args.dataset_seed).spawn(3)
    nonce = uuid.uuid4().hex[:8]
    measured = make_requests(f"bench-{nonce}", random_prompts(
        args.num_prompts, args.input_len, allowed, np.random.default_rng(prompt_seed)), args.output_len)
    warmup = make_requests(f"warmup-{nonce}", random_prompts(
        args.num_warmups, args.input_len, allowed, np.random.default_rng(warmup_seed)), args.output_len)
    offsets = arrival_offsets(args.num_prompts, args.request_rate, args.burstiness,
                              np.random.default_rng(arrival_seed))
    return measured, warmup, offsets


async def warm_up(backend: Backend, requests: list[BenchRequest], max_concurrency: int | None) -> float:
    """Run the warm-up requests all at once (within --max-concurrency); seconds taken. Any failure
    stops the benchmark: the measured run would fail the same way."""
    if not requests:
        return 0.0
    records, _, duration = await Runner(backend, max_concurrency).run(requests, [0.0] * len(requests))
    failed = [r for r in records if not r.success]
    if failed:
        raise BenchmarkError(f"{len(failed)} of {len(records)} warm-up requests failed: "
                             f"{next(iter(error_counts(failed)))}")
    return duration


async def benchmark(args: argparse.Namespace) -> dict:
    """Start the backend, warm up, run the measured requests, and return the result dict."""
    from tqdm import tqdm
    backend = make_backend(args)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        t0 = time.perf_counter()
        info = await backend.start()
        setup_s = time.perf_counter() - t0
        check_server(args, info)
        measured, warmup, offsets = workloads(args, info)
        warmup_s = await warm_up(backend, warmup, args.max_concurrency)
        before = await counters_snapshot(args)
        cpu_before = time.process_time()
        with tqdm(total=len(measured), desc="requests", disable=args.no_progress) as progress:
            runner = Runner(backend, args.max_concurrency, progress)
            records, origin, duration = await runner.run(measured, offsets)
        counters = server_counters.difference(before, await counters_snapshot(args), duration)
        counters["client_cpu_s"] = time.process_time() - cpu_before  # this process (all of it, inprocess)
    finally:
        await backend.close()
    timings = {"started_at": started_at, "setup_s": setup_s, "warmup_s": warmup_s}
    result = build_result(args, info, records, origin, duration, timings, runner.peak_in_flight)
    result["server_counters"] = counters
    return result


async def counters_snapshot(args: argparse.Namespace) -> dict[str, float]:
    """The servers' counters now: this process's registry (inprocess) or the --metrics-url pages."""
    if args.backend == "inprocess":
        return server_counters.snapshot_registry()
    if not args.metrics_url:
        return {}
    try:
        return await asyncio.to_thread(server_counters.snapshot_urls, args.metrics_url)
    except OSError as exc:
        raise BenchmarkError(f"cannot read the metrics pages {args.metrics_url}: {exc}") from exc


# ---------------------------------------------------------------- result


def _json_safe(value):
    """Non-finite floats as strings ("inf"), so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def config_dict(args: argparse.Namespace) -> dict:
    """Every plain-valued argument (callables and other objects an embedding CLI adds are left out)."""
    plain = (str, int, float, bool, type(None))
    return {k: _json_safe(v) for k, v in sorted(vars(args).items()) if isinstance(v, plain)}


def build_result(args, info: ServerInfo, records: list[RequestRecord], origin: float,
                 duration_s: float, timings: dict, peak_in_flight: int) -> dict:
    result = {
        "what": RESULT_KIND, "label": args.label, "backend": args.backend, "model": info.model_name,
        "num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len,
        "request_rate": _json_safe(args.request_rate), "max_concurrency": args.max_concurrency,
        "concurrency": concurrency(args), "peak_in_flight": peak_in_flight,
        "config": config_dict(args), "server": asdict(info), "timings": timings,
        **compute_metrics(records, duration_s),
        "mismatched_output_lens": sum(r.success and r.output_tokens != args.output_len for r in records),
        "errors": error_counts(records),
    }
    if args.save_detailed:
        result["detailed"] = detailed_arrays(records, origin)
    return result


def write_result(result: dict, path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- command line


def _rate(text: str) -> float:
    value = float(text)
    if math.isnan(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"request rate must be > 0 or inf, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's flags, plus `sluice serve`'s worker and scheduler flags (inprocess only)."""
    from services import cli
    parser.add_argument("--backend", choices=BACKENDS, default="grpc",
                        help="grpc: public Generation API; scheduler: Scheduler API; "
                             "inprocess: engine + model in this process")
    parser.add_argument("--address", default=None,
                        help="host:port of the API (default 127.0.0.1:50051 for grpc, :50052 for scheduler)")
    parser.add_argument("--channels", type=int, default=1,
                        help="gRPC channels (connections) to spread the streams over")
    parser.add_argument("--request-timeout", type=float, default=None, help="per-request deadline (s)")
    parser.add_argument("--model", default=None,
                        help="model directory: run it (inprocess; default: the demo model) or read "
                             "its special token ids to avoid (grpc, scheduler)")
    g = parser.add_argument_group("workload")
    g.add_argument("--num-prompts", type=int, default=100, help="measured requests")
    g.add_argument("--input-len", "--random-input-len", dest="input_len", type=int, default=1024,
                   help="prompt tokens per request")
    g.add_argument("--output-len", "--random-output-len", dest="output_len", type=int, default=128,
                   help="output tokens per request (exactly: greedy, EOS ignored)")
    g.add_argument("--token-id-lo", type=int, default=0,
                   help="prompt ids are drawn from [lo, vocab_size) minus special and EOS ids")
    g.add_argument("--dataset-seed", type=int, default=0, help="seeds prompts and arrival times")
    g.add_argument("--request-rate", type=_rate, default=math.inf,
                   help="requests/s with Poisson arrivals, or inf: all at once")
    g.add_argument("--burstiness", type=float, default=1.0,
                   help="gamma shape of the arrival gaps: 1 is Poisson, < 1 burstier")
    g.add_argument("--max-concurrency", type=int, default=None, help="most requests in flight")
    g.add_argument("--num-warmups", type=int, default=1, help="uncounted requests sent first")
    g = parser.add_argument_group("output")
    g.add_argument("--out", default=None, help="write the result JSON here")
    g.add_argument("--label", default=None, help="free text stored in the result")
    g.add_argument("--save-detailed", action="store_true", help="add the per-request arrays")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--metrics-url", action="append", default=[],
                   help="a service's Prometheus page (repeatable; grpc and scheduler backends): "
                        "GPU busy/idle time, steps and preemptions over the run go into the result")
    cli._add_worker_flags(parser, own_budget=False)
    cli._add_scheduler_flags(parser)


def build_parser(prog: str = "python -m benchmarks.serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Raise BenchmarkError for arguments that cannot describe a run; fill in the default address."""
    positive = ("num_prompts", "input_len", "output_len", "channels")
    for name in positive:
        if getattr(args, name) < 1:
            raise BenchmarkError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise BenchmarkError(f"--max-concurrency must be >= 1, got {args.max_concurrency}")
    if args.num_warmups < 0 or args.token_id_lo < 0:
        raise BenchmarkError("--num-warmups and --token-id-lo must be >= 0")
    if not args.burstiness > 0:
        raise BenchmarkError(f"--burstiness must be > 0, got {args.burstiness}")
    if args.request_timeout is not None and not args.request_timeout > 0:
        raise BenchmarkError(f"--request-timeout must be > 0, got {args.request_timeout}")
    if args.model is not None and not Path(args.model).is_dir():
        raise BenchmarkError(f"--model {args.model} is not a directory")
    if args.backend == "inprocess":
        if args.address is not None or args.channels != 1 or args.metrics_url:
            raise BenchmarkError("--address, --channels and --metrics-url apply to the grpc and "
                                 "scheduler backends only")
    elif args.address is None:
        args.address = DEFAULT_ADDRESSES[args.backend]


def run(args: argparse.Namespace) -> int:
    """Run a parsed command line. 0: every measured request completed; 1: some failed (the result
    is still written); 2: bad arguments or an unusable server."""
    try:
        validate_args(args)
        result = asyncio.run(benchmark(args))
    except BenchmarkError as exc:
        print(f"benchmark error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.out:
        write_result(result, args.out)
        print(f"result written to {args.out}")
    return 0 if result["failed"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
