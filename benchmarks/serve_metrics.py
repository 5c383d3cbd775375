"""Per-request timelines of the serving benchmark, the metrics over them (the definitions of
`vllm bench serve`), and the printed result table.

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
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (90, 99)
MAX_ERRORS_REPORTED = 10


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


# ---------------------------------------------------------------- printed table


COUNTER_ROWS = (("gpu_busy_fraction", "GPU busy fraction"), ("gpu_busy_s", "GPU busy (s)"),
                ("gpu_idle_s", "GPU idle between steps (s)"), ("gpu_steps", "GPU steps"),
                ("scheduler_steps", "Scheduler steps"),
                ("preemptions", "Preemptions"), ("client_cpu_s", "Benchmark process CPU (s)"))


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
    counters = result.get("server_counters") or {}
    if counters:
        lines.append(f"{' Server (over the measured run) ':-^60}")
        lines += [_row(name, counters[key]) for key, name in COUNTER_ROWS if key in counters]
    lines.append("=" * 60)
    if result["errors"]:
        lines += ["Failures:"] + [f"  {count} x {error}" for error, count in result["errors"].items()]
    return "\n".join(lines)


def _row(name: str, value) -> str:
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    return f"{name + ':':<44}{text:>16}"
