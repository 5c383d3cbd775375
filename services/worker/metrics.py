"""Worker metrics (`sluice_worker_*`). Label values come from fixed sets only."""
from prometheus_client import Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS, TOKEN_BUCKETS

STEP_LATENCY = Histogram("sluice_worker_step_seconds", "Forward pass plus sampling of one step",
                         buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram("sluice_worker_batch_size", "Requests computed per step", buckets=TOKEN_BUCKETS)
STEP_TOKENS = Histogram("sluice_worker_step_tokens", "Tokens computed per step", buckets=TOKEN_BUCKETS)
TOKENS = Counter("sluice_worker_tokens_total", "Tokens computed (prefill and decode)")
STEP_ERRORS = Counter("sluice_worker_step_errors_total", "Steps that raised")
KV_BLOCKS = Gauge("sluice_worker_kv_cache_blocks", "KV cache blocks allocated")
ACTIVE_REQUESTS = Gauge("sluice_worker_active_requests", "Requests whose state the worker holds")
