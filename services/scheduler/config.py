"""Scheduler configuration: one frozen dataclass, validated once at start-up."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256  # cap on running sequences (requests holding KV blocks on the worker)
    max_num_batched_tokens: int = 4096  # per-step token budget; long prompts are prefilled in chunks
    max_waiting_requests: int = 4096  # admission control: add_request beyond this is refused
    enable_prefix_caching: bool = True  # reuse KV blocks of identical full-block token prefixes
    # Steps in flight at once: 2 schedules step N+1 while the worker runs step N (overlap); 1 waits.
    pipeline_depth: int = 2
    # Tokens per streamed message after the first: n > 1 holds a request's tokens back until n are
    # ready (or it finishes), so every hop of the stream carries 1/n as many messages.
    stream_interval: int = 1

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_waiting_requests",
                     "pipeline_depth", "stream_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.pipeline_depth > 2:
            raise ValueError(f"pipeline_depth must be 1 or 2, got {self.pipeline_depth}")
        if not isinstance(self.enable_prefix_caching, bool):
            raise ValueError(
                f"enable_prefix_caching must be a bool, got {self.enable_prefix_caching!r}")
