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
JIT_COMPILES = Counter("sluice_worker_jit_compiles_total",
                       "Triton kernel variants compiled after start-up (each stalls a step for ~1 s)")
GPU_STEP = Histogram("sluice_worker_gpu_step_seconds",
                     "GPU time of one step: first kernel after the host built its inputs, to the last (CUDA events)",
                     buckets=LATENCY_BUCKETS)
GPU_IDLE = Histogram("sluice_worker_gpu_idle_seconds",
                     "GPU idle gap between the end of one step and the start of the next (CUDA events)",
                     buckets=(0.0, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05,
                              0.1, 1.0, 10.0))
