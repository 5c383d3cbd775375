"""Scheduler configuration: one frozen dataclass, validated once at start-up."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256  # cap on running sequences (requests holding KV blocks on the worker)
    max_num_batched_tokens: int = 4096  # per-step token budget; long prompts are prefilled in chunks
    max_waiting_requests: int = 4096  # admission control: add_request beyond this is refused
    enable_prefix_caching: bool = True  # reuse KV blocks of identical full-block token prefixes

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_waiting_requests"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.enable_prefix_caching, bool):
            raise ValueError(
                f"enable_prefix_caching must be a bool, got {self.enable_prefix_caching!r}")
