"""Server-side counters over one benchmark run: how busy the GPU was, how much it idled between
steps, how many steps and preemptions there were.

A snapshot is taken before and after the measured requests, from the services' Prometheus
endpoints (`--metrics-url`, grpc and scheduler backends) or from this process's own registry (the
inprocess backend, whose worker and scheduler live here); the result holds the differences:

- gpu_busy_s: sum of the worker's GPU step times (first to last kernel of each step, CUDA events);
- gpu_idle_s: sum of the GPU's gaps between consecutive steps;
- gpu_steps, scheduler_steps, preemptions, worker_tokens (prefill + decode tokens computed).

gpu_busy_fraction = gpu_busy_s / the run's duration: near 1, the run was bound by the GPU; well
below, by the host (Python, gRPC, the client). The benchmark adds client_cpu_s, the CPU seconds of
its own process over the run (which is the whole server too, for the inprocess backend). Series
that are absent are left out, and so are the GPU figures when no GPU step was timed (a CPU worker).
"""
from __future__ import annotations

import urllib.request

SERIES = {
    "gpu_busy_s": "sluice_worker_gpu_step_seconds_sum",
    "gpu_steps": "sluice_worker_gpu_step_seconds_count",
    "gpu_idle_s": "sluice_worker_gpu_idle_seconds_sum",
    "worker_tokens": "sluice_worker_tokens_total",
    "scheduler_steps": "sluice_scheduler_step_seconds_count",
    "preemptions": "sluice_scheduler_preemptions_total",
}
URL_TIMEOUT_S = 5.0


def parse_exposition(text: str) -> dict[str, float]:
    """Values of the unlabelled series of SERIES in Prometheus text format, by SERIES key."""
    wanted = {series: key for key, series in SERIES.items()}
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            values[wanted[name]] = values.get(wanted[name], 0.0) + float(value.split()[0])
    return values


def snapshot_urls(urls: list[str]) -> dict[str, float]:
    """One snapshot over several endpoints (each service exposes its own series)."""
    values: dict[str, float] = {}
    for url in urls:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response:
            for key, value in parse_exposition(response.read().decode()).items():
                values[key] = values.get(key, 0.0) + value
    return values


def snapshot_registry() -> dict[str, float]:
    """A snapshot of this process's default Prometheus registry."""
    from prometheus_client import REGISTRY, generate_latest
    return parse_exposition(generate_latest(REGISTRY).decode())


def difference(before: dict[str, float], after: dict[str, float], duration_s: float) -> dict[str, float]:
    """after - before for the series present in both, plus gpu_busy_fraction when GPU times exist."""
    delta = {key: after[key] - before[key] for key in SERIES if key in before and key in after}
    if not delta.get("gpu_steps"):  # no GPU step was timed (a CPU worker): no GPU figures
        for key in ("gpu_busy_s", "gpu_steps", "gpu_idle_s"):
            delta.pop(key, None)
    elif duration_s > 0:
        delta["gpu_busy_fraction"] = delta["gpu_busy_s"] / duration_s
    return delta
