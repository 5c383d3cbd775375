"""benchmarks.server_counters: parsing the exposition format and differencing two snapshots."""
from __future__ import annotations

import pytest

from benchmarks.server_counters import difference, parse_exposition

PAGE = """# HELP sluice_worker_gpu_step_seconds GPU time of one step
sluice_worker_gpu_step_seconds_bucket{le="0.001"} 3.0
sluice_worker_gpu_step_seconds_count 10.0
sluice_worker_gpu_step_seconds_sum 2.5
sluice_worker_gpu_idle_seconds_sum 0.25
sluice_worker_tokens_total 1234.0
sluice_worker_tokens_created 1.79e+09
sluice_scheduler_preemptions_total 7.0
sluice_scheduler_step_seconds_count 11.0
"""


def test_parse_reads_only_the_known_unlabelled_series():
    assert parse_exposition(PAGE) == {"gpu_steps": 10.0, "gpu_busy_s": 2.5, "gpu_idle_s": 0.25,
                                      "worker_tokens": 1234.0, "preemptions": 7.0, "scheduler_steps": 11.0}


def test_difference_and_busy_fraction():
    before = parse_exposition(PAGE)
    after = {**before, "gpu_busy_s": 6.5, "gpu_steps": 12.0, "preemptions": 9.0}
    delta = difference(before, after, duration_s=8.0)
    assert delta["gpu_busy_s"] == 4.0 and delta["preemptions"] == 2.0 and delta["gpu_steps"] == 2.0
    assert delta["gpu_busy_fraction"] == pytest.approx(0.5)


def test_difference_leaves_out_absent_series_and_untimed_gpu():
    assert difference({"worker_tokens": 1.0}, {"worker_tokens": 5.0, "gpu_busy_s": 2.0}, 1.0) == {"worker_tokens": 4.0}
    cpu = {"gpu_busy_s": 0.0, "gpu_steps": 0.0, "gpu_idle_s": 0.0, "preemptions": 0.0}
    assert difference(cpu, cpu, 1.0) == {"preemptions": 0.0}
