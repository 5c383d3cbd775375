"""Serving benchmark for Sluice, with the metric definitions of `vllm bench serve`.

A random-token workload (fixed input and output lengths; greedy, ignore_eos and
min_tokens = max_tokens = output length, so every request produces exactly `--output-len` tokens) is
sent to one of three backends and every request is timed on the client side:

- grpc: the public `sluice.v1.Generation` API (tokenizer front), prompts given as token ids;
- scheduler: the token-level `sluice.v1.Scheduler` API directly (no tokenizer service);
- inprocess: a SchedulerEngine driving a LocalWorkerLink in this process (no gRPC at all).

Definitions, per successful request: s = send time (after any --max-concurrency wait);
c_0 .. c_k = arrival times of the stream's chunks, a chunk being a message that carries at least one
token id or ends the stream; n = output tokens.

- TTFT = c_0 - s;  E2EL = c_k - s;  ITL = [c_i - c_(i-1) for i in 1..k], so sum(ITL) = E2EL - TTFT;
- TPOT = (E2EL - TTFT) / (n - 1), defined for n > 1 only; decode rate = 1 / TPOT tokens/s per stream
  (the "batch-1 tokens/s" figure when one request runs at a time);
- duration = first send .. last completion of the measured requests (warm-up excluded);
- request throughput = completed / duration; output token throughput = sum(n) / duration;
  total token throughput = (sum(prompt lengths) + sum(n)) / duration, over completed requests.

TTFT, TPOT and E2EL are aggregated over requests, ITL over the gaps of all requests together; each
gets mean, median, std, p90 and p99 (numpy's linear-interpolation percentiles) in milliseconds.

    python -m benchmarks.serve --backend grpc --address 127.0.0.1:50051 \\
        --num-prompts 64 --input-len 1024 --output-len 128 --max-concurrency 8 --out result.json
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np

BACKENDS = ("grpc", "scheduler", "inprocess")
DEFAULT_ADDRESSES = {"grpc": "127.0.0.1:50051", "scheduler": "127.0.0.1:50052"}
PERCENTILES = (90, 99)
RESULT_KIND = "sluice_serve"
INFO_TIMEOUT_S = 30.0
MAX_ERRORS_REPORTED = 10
DESCRIPTION = ("Serving benchmark with the metrics of `vllm bench serve` (TTFT, TPOT, ITL, E2EL, "
               "throughputs). The worker and scheduler flags apply to --backend inprocess only.")


class BenchmarkError(Exception):
    """A bad argument or an unusable server: reported as one line, exit status 2."""


# ---------------------------------------------------------------- workload


@dataclass(frozen=True)
class BenchRequest:
    request_id: str
    prompt_token_ids: list[int]
    output_len: int


def special_token_ids(model_dir: str | None) -> set[int]:
    """Ids of the special tokens that `model_dir`'s tokenizer.json (`added_tokens`) and
    tokenizer_config.json (`added_tokens_decoder`) declare; empty without a directory or files."""
    if not model_dir:
        return set()
    ids: set[int] = set()
    tokenizer_json = Path(model_dir) / "tokenizer.json"
    if tokenizer_json.is_file():
        added = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("added_tokens", [])
        ids |= {int(t["id"]) for t in added if t.get("special")}
    tokenizer_config = Path(model_dir) / "tokenizer_config.json"
    if tokenizer_config.is_file():
        decoder = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
        ids |= {int(i) for i, t in decoder.items() if t.get("special")}
    return ids


def allowed_token_ids(vocab_size: int, lo: int, excluded: set[int]) -> np.ndarray:
    """The ids in [lo, vocab_size) that are not in `excluded`."""
    ids = np.arange(lo, vocab_size)
    return ids[~np.isin(ids, sorted(excluded))]


def random_prompts(num: int, input_len: int, allowed: np.ndarray,
                   rng: np.random.Generator) -> list[list[int]]:
    """`num` prompts of `input_len` ids drawn uniformly, with replacement, from `allowed`."""
    return rng.choice(allowed, size=(num, input_len)).tolist()


def arrival_offsets(num: int, request_rate: float, burstiness: float,
                    rng: np.random.Generator) -> list[float]:
    """Send times in seconds from the benchmark start.

    request_rate = inf: every request at 0 (all at once). Otherwise the first request goes at 0 and
    the gaps between successive requests are gamma(shape=burstiness, scale=1/(rate*burstiness))
    draws: mean 1/rate; burstiness 1 makes them exponential, i.e. Poisson arrivals at `rate`
    requests/s (coefficient of variation 1/sqrt(burstiness)).
    """
    if math.isinf(request_rate):
        return [0.0] * num
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=num - 1)
    return [0.0, *np.cumsum(gaps).tolist()]


def make_requests(prefix: str, prompts: list[list[int]], output_len: int) -> list[BenchRequest]:
    return [BenchRequest(f"{prefix}-{i}", prompt, output_len) for i, prompt in enumerate(prompts)]


# ---------------------------------------------------------------- per-request timelines and metrics


@dataclass(frozen=True)
class Chunk:
    """One streamed message as the benchmark sees it."""

    num_tokens: int
    finish_reason: str | None  # "stop", "length", "abort", "error" on the last message only


@dataclass
class RequestRecord:
    """One request's client-side timeline, in time.perf_counter() seconds."""

    prompt_len: int
    send_time: float = math.nan
    chunk_times: list[float] = field(default_factory=list)
    output_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None

    def add_chunk(self, now: float, chunk: Chunk) -> None:
        """Record a message that carries tokens or ends the stream; others are not chunks."""
        if chunk.num_tokens == 0 and chunk.finish_reason is None:
            return
        self.chunk_times.append(now)
        self.output_tokens += chunk.num_tokens
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason

    @property
    def success(self) -> bool:
        """Ended with stop or length, no error, at least one token."""
        return (self.error is None and self.finish_reason in ("stop", "length")
                and self.output_tokens > 0)

    @property
    def ttft(self) -> float:
        """First chunk's arrival minus the send time."""
        return self.chunk_times[0] - self.send_time

    @property
    def e2el(self) -> float:
        """Last chunk's arrival minus the send time."""
        return self.chunk_times[-1] - self.send_time

    @property
    def itls(self) -> list[float]:
        """Gaps between successive chunks."""
        return np.diff(self.chunk_times).tolist()

    @property
    def tpot(self) -> float | None:
        """(E2EL - TTFT) / (n - 1); None for a single output token."""
        if self.output_tokens < 2:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)


def summarize_ms(name: str, values_s: list[float]) -> dict[str, float]:
    """mean, median, std (population) and PERCENTILES of `values_s` (seconds), in milliseconds,
    keyed like vLLM (`mean_ttft_ms`, `p99_ttft_ms`, ...). An empty list gives zeros."""
    ms = np.asarray(values_s or [0.0], dtype=float) * 1000.0
    out = {f"mean_{name}_ms": float(np.mean(ms)), f"median_{name}_ms": float(np.median(ms)),
           f"std_{name}_ms": float(np.std(ms))}
    out.update({f"p{p}_{name}_ms": float(np.percentile(ms, p)) for p in PERCENTILES})
    return out


def throughputs(done: list[RequestRecord], duration_s: float) -> dict[str, float]:
    """Counts and per-second rates over the completed requests."""
    total_in = sum(r.prompt_len for r in done)
    total_out = sum(r.output_tokens for r in done)
    return {"total_input_tokens": total_in, "total_output_tokens": total_out,
            "request_throughput": len(done) / duration_s,
            "output_throughput": total_out / duration_s,
            "total_token_throughput": (total_in + total_out) / duration_s}


def decode_rates(tpots_s: list[float]) -> dict[str, float]:
    """Per-stream decode rate 1/TPOT (tokens/s): mean and median over requests; 0 without any."""
    rates = [1.0 / t for t in tpots_s if t > 0]
    return {"mean_decode_tok_per_s": float(np.mean(rates)) if rates else 0.0,
            "median_decode_tok_per_s": float(np.median(rates)) if rates else 0.0}


def compute_metrics(records: list[RequestRecord], duration_s: float) -> dict[str, float]:
    """Every aggregate metric of a run (see the module docstring for the definitions)."""
    done = [r for r in records if r.success]
    tpots = [r.tpot for r in done if r.tpot is not None]
    metrics: dict[str, float] = {"completed": len(done), "failed": len(records) - len(done),
                                 "duration_s": duration_s}
    metrics.update(throughputs(done, duration_s))
    metrics.update(summarize_ms("ttft", [r.ttft for r in done]))
    metrics.update(summarize_ms("tpot", tpots))
    metrics.update(summarize_ms("itl", [gap for r in done for gap in r.itls]))
    metrics.update(summarize_ms("e2el", [r.e2el for r in done]))
    metrics.update(decode_rates(tpots))
    return metrics


def detailed_arrays(records: list[RequestRecord], origin: float) -> dict[str, list]:
    """Per-request arrays in request order, times in seconds (send times from the benchmark start);
    ttft/e2el/tpot are null for a failed request (tpot also for a single output token)."""
    def of_completed(name: str) -> list[float | None]:
        return [getattr(r, name) if r.success else None for r in records]

    return {
        "input_lens": [r.prompt_len for r in records],
        "output_lens": [r.output_tokens for r in records],
        "send_times_s": [r.send_time - origin for r in records],
        "ttfts_s": of_completed("ttft"),
        "e2els_s": of_completed("e2el"),
        "tpots_s": of_completed("tpot"),
        "itls_s": [r.itls if r.success else [] for r in records],
        "finish_reasons": [r.finish_reason for r in records],
        "errors": [r.error for r in records],
    }


def error_counts(records: list[RequestRecord]) -> dict[str, int]:
    """The most frequent failure descriptions and how many requests each ended."""
    reasons = Counter(r.error or f"finished with {r.finish_reason}" for r in records if not r.success)
    return dict(reasons.most_common(MAX_ERRORS_REPORTED))


# ---------------------------------------------------------------- backends


@dataclass(frozen=True)
class ServerInfo:
    model_name: str
    vocab_size: int
    max_model_len: int
    eos_token_ids: list[int]


class Backend(Protocol):
    """Where requests go. `start` before anything else; `close` always."""

    async def start(self) -> ServerInfo: ...

    def generate(self, request_id: str, prompt_token_ids: list[int],
                 output_len: int) -> AsyncIterator[Chunk]: ...

    async def close(self) -> None: ...


def fixed_length_sampling(output_len: int):
    """Greedy, EOS ignored and min_tokens = max_tokens: exactly `output_len` tokens."""
    from services.common.sampling import SamplingParams
    return SamplingParams(temperature=0.0, max_tokens=output_len, min_tokens=output_len,
                          ignore_eos=True)


def describe_error(exc: BaseException) -> str:
    """`CODE: details` for a gRPC error, `Type: message` for anything else."""
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return f"{type(exc).__name__}: {exc}"


class _GrpcBackend:
    """Streams over `num_channels` grpc.aio channels to one address, picked round-robin per request.
    Each channel has its own subchannel pool, hence its own HTTP/2 connection."""

    service = ""

    def __init__(self, address: str, num_channels: int, timeout: float | None):
        self.address = address
        self.num_channels = num_channels
        self.timeout = timeout
        self.channels: list = []
        self.stubs: list = []
        self._turn = itertools.count()

    def _stub_class(self):
        raise NotImplementedError

    async def _info(self, stub) -> ServerInfo:
        raise NotImplementedError

    def _request(self, request_id: str, prompt_token_ids: list[int], output_len: int):
        raise NotImplementedError

    async def start(self) -> ServerInfo:
        import grpc
        options = [("grpc.use_local_subchannel_pool", 1)]
        self.channels = [grpc.aio.insecure_channel(self.address, options=options)
                         for _ in range(self.num_channels)]
        self.stubs = [self._stub_class()(channel) for channel in self.channels]
        try:
            return await self._info(self.stubs[0])
        except grpc.aio.AioRpcError as exc:
            raise BenchmarkError(f"cannot reach the {self.service} API at {self.address}: "
                                 f"{describe_error(exc)}") from exc

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       output_len: int) -> AsyncIterator[Chunk]:
        from services.common.convert import FINISH_REASON_FROM_PB
        stub = self.stubs[next(self._turn) % len(self.stubs)]
        call = stub.Generate(self._request(request_id, prompt_token_ids, output_len),
                             timeout=self.timeout)
        async for response in call:
            yield Chunk(len(response.token_ids), FINISH_REASON_FROM_PB[response.finish_reason])

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


class GenerationBackend(_GrpcBackend):
    """The public Generation API (tokenizer front), prompts sent as token ids."""

    service = "Generation"

    def _stub_class(self):
        from services.common.pb import tokenizer_pb2_grpc
        return tokenizer_pb2_grpc.GenerationStub

    async def _info(self, stub) -> ServerInfo:
        from services.common.pb import tokenizer_pb2
        info = await stub.GetModelInfo(tokenizer_pb2.GetModelInfoRequest(), timeout=INFO_TIMEOUT_S)
        return ServerInfo(info.model_name, info.vocab_size, info.max_model_len, list(info.eos_token_ids))

    def _request(self, request_id: str, prompt_token_ids: list[int], output_len: int):
        from services.common.convert import sampling_to_pb
        from services.common.pb import tokenizer_pb2
        return tokenizer_pb2.GenerateRequest(
            request_id=request_id, token_ids=tokenizer_pb2.TokenIds(ids=prompt_token_ids),
            sampling=sampling_to_pb(fixed_length_sampling(output_len)))


class SchedulerBackend(_GrpcBackend):
    """The token-level Scheduler API, called directly."""

    service = "Scheduler"

    def _stub_class(self):
        from services.common.pb import scheduler_pb2_grpc
        return scheduler_pb2_grpc.SchedulerStub

    async def _info(self, stub) -> ServerInfo:
        from services.common.pb import scheduler_pb2
        info = await stub.GetInfo(scheduler_pb2.GetInfoRequest(), timeout=INFO_TIMEOUT_S)
        return ServerInfo(info.model_name, info.vocab_size, info.max_model_len, list(info.eos_token_ids))

    def _request(self, request_id: str, prompt_token_ids: list[int], output_len: int):
        from services.common.convert import sampling_to_pb
        from services.common.pb import scheduler_pb2
        return scheduler_pb2.GenerateTokensRequest(
            request_id=request_id, prompt_token_ids=prompt_token_ids,
            sampling=sampling_to_pb(fixed_length_sampling(output_len), include_stop=False))


class InProcessBackend:
    """SchedulerEngine + LocalWorkerLink in this process and event loop: no gRPC, no tokenizer."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.engine = None
        self.link = None

    async def start(self) -> ServerInfo:
        from services import cli
        from services.scheduler.engine import SchedulerEngine
        from services.worker.local_link import LocalWorkerLink
        try:
            worker_config, scheduler_config = cli._worker_config(self.args), cli._scheduler_config(self.args)
        except ValueError as exc:
            raise BenchmarkError(str(exc)) from exc
        self.link = LocalWorkerLink(worker_config)
        self.engine = SchedulerEngine(scheduler_config, self.link)
        try:
            spec = await self.engine.start()
        except ValueError as exc:
            raise BenchmarkError(f"cannot start the in-process engine: {exc}") from exc
        return ServerInfo(spec.model_name, spec.vocab_size, spec.max_model_len, list(spec.eos_token_ids))

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       output_len: int) -> AsyncIterator[Chunk]:
        self.engine.add_request(request_id, prompt_token_ids, fixed_length_sampling(output_len))
        async for out in self.engine.stream(request_id):
            yield Chunk(len(out.new_token_ids), out.finish_reason.value if out.finished else None)

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.stop()
        if self.link is not None:
            self.link.close()


def make_backend(args: argparse.Namespace) -> Backend:
    if args.backend == "grpc":
        return GenerationBackend(args.address, args.channels, args.request_timeout)
    if args.backend == "scheduler":
        return SchedulerBackend(args.address, args.channels, args.request_timeout)
    return InProcessBackend(args)


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
        with tqdm(total=len(measured), desc="requests", disable=args.no_progress) as progress:
            runner = Runner(backend, args.max_concurrency, progress)
            records, origin, duration = await runner.run(measured, offsets)
    finally:
        await backend.close()
    timings = {"started_at": started_at, "setup_s": setup_s, "warmup_s": warmup_s}
    return build_result(args, info, records, origin, duration, timings, runner.peak_in_flight)


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


def format_table(result: dict) -> str:
    """The result as a readable block, in the layout of `vllm bench serve`."""
    rows = [
        ("Backend", result["backend"]), ("Model", result["model"]),
        ("Successful requests", result["completed"]), ("Failed requests", result["failed"]),
        ("Concurrency (peak in flight)", result["peak_in_flight"]),
        ("Benchmark duration (s)", result["duration_s"]),
        ("Total input tokens", result["total_input_tokens"]),
        ("Total generated tokens", result["total_output_tokens"]),
        ("Request throughput (req/s)", result["request_throughput"]),
        ("Output token throughput (tok/s)", result["output_throughput"]),
        ("Total token throughput (tok/s)", result["total_token_throughput"]),
        ("Mean decode rate per stream (tok/s)", result["mean_decode_tok_per_s"]),
    ]
    lines = [f"{' Serving Benchmark Result ':=^60}"]
    lines += [_row(name, value) for name, value in rows]
    for key, title in (("ttft", "Time to First Token"), ("tpot", "Time per Output Token (excl. 1st)"),
                       ("itl", "Inter-token Latency"), ("e2el", "End-to-end Latency")):
        lines.append(f"{' ' + title + ' ':-^60}")
        lines += [_row(f"{stat.capitalize()} {key.upper()} (ms)", result[f"{stat}_{key}_ms"])
                  for stat in ("mean", "median", *(f"p{p}" for p in PERCENTILES))]
    lines.append("=" * 60)
    if result["errors"]:
        lines += ["Failures:"] + [f"  {count} x {error}" for error, count in result["errors"].items()]
    return "\n".join(lines)


def _row(name: str, value) -> str:
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    return f"{name + ':':<44}{text:>16}"


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
        if args.address is not None or args.channels != 1:
            raise BenchmarkError("--address and --channels apply to the grpc and scheduler backends only")
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
