"""Scheduler metrics (`sluice_scheduler_*`). Label values come from fixed sets only."""
from prometheus_client import Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS, TOKEN_BUCKETS

RUNNING = Gauge("sluice_scheduler_running_requests", "Requests in the running batch")
WAITING = Gauge("sluice_scheduler_waiting_requests", "Requests queued, preempted ones included")
KV_USAGE = Gauge("sluice_scheduler_kv_usage_ratio", "Fraction of KV cache blocks in use (0..1)")
PREEMPTIONS = Counter("sluice_scheduler_preemptions_total", "Requests preempted by recompute")
PREFIX_HIT_TOKENS = Counter("sluice_scheduler_prefix_cache_hit_tokens_total",
                            "Prompt tokens served from the prefix cache")
REQUESTS = Counter("sluice_scheduler_requests_total", "Finished requests by finish reason",
                   ["finish_reason"])  # stop | length | abort | error
REJECTED = Counter("sluice_scheduler_rejected_requests_total", "Requests refused at admission",
                   ["reason"])  # queue_full | too_large | invalid
PROMPT_TOKENS = Counter("sluice_scheduler_prompt_tokens_total", "Prompt tokens of admitted requests")
GENERATION_TOKENS = Counter("sluice_scheduler_generation_tokens_total", "Tokens generated")
TTFT = Histogram("sluice_scheduler_time_to_first_token_seconds",
                 "Arrival to first generated token", buckets=LATENCY_BUCKETS)
TPOT = Histogram("sluice_scheduler_time_per_output_token_seconds",
                 "Mean time between output tokens of a finished request", buckets=LATENCY_BUCKETS)
E2E = Histogram("sluice_scheduler_e2e_request_latency_seconds", "Arrival to finish",
                buckets=LATENCY_BUCKETS)
STEP = Histogram("sluice_scheduler_step_seconds",
                 "Wall time of one step as seen by the scheduler (schedule, worker round trip, update)",
                 buckets=LATENCY_BUCKETS)
STEP_TOKENS = Histogram("sluice_scheduler_step_tokens", "Tokens scheduled per step",
                        buckets=TOKEN_BUCKETS)
WORKER_FAILURES = Counter("sluice_scheduler_worker_failures_total",
                          "Steps that failed on the worker (the running requests end with error)")
