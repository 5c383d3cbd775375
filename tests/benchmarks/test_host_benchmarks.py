"""The two CPU-side benchmarks run end to end at toy sizes and report what they measured."""
from __future__ import annotations

import re

from benchmarks import grpc_rate, host_step


def test_grpc_rate_reports_messages_per_second(capsys):
    assert grpc_rate.main(["--streams", "4", "--messages", "5"]) == 0
    rate = float(re.search(r"(\d+) messages/s", capsys.readouterr().out).group(1))
    assert rate > 0


def test_host_step_times_every_stage(capsys):
    assert host_step.main(["--batch", "4", "--context", "40", "--steps", "3", "--no-gc-tuning"]) == 0
    out = capsys.readouterr().out
    assert "batch 4, context ~40" in out
    stages = re.findall(r"^  (\w+: [^0-9]+?)\s+([0-9.]+) ms$", out, re.M)
    assert [name for name, _ in stages] == [
        "scheduler: schedule", "scheduler: plan -> bytes", "worker: bytes -> plan", "worker: launch + finish",
        "worker: result -> bytes", "scheduler: bytes -> result", "scheduler: update"]
    assert all(float(ms) >= 0 for _, ms in stages)
