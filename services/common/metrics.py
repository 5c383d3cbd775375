"""Prometheus helpers. Each service defines its own metrics (prefixed `sluice_<service>_`) in its
own `metrics.py`; this module only serves them and holds shared bucket layouts."""
from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger(__name__)

# Seconds, from a fast decode step to a long request.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 120.0, 300.0)
TOKEN_BUCKETS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


def serve_metrics(host: str, port: int) -> None:
    """Serve /metrics on host:port in a daemon thread; port 0 disables it."""
    if port:
        start_http_server(port, addr=host)
        log.info("metrics on http://%s:%d/metrics", host, port)
