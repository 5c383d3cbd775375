"""The whole stack as three real processes on loopback (`sluice serve`), shared by the e2e tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import grpc
import pytest

from services.common.pb import scheduler_pb2, scheduler_pb2_grpc, tokenizer_pb2_grpc

NUM_KV_BLOCKS = 512
BLOCK_SIZE = 16


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class Stack:
    proc: subprocess.Popen
    ports: dict[str, int]
    metrics_ports: dict[str, int]
    model_dir: str

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    def generation(self) -> tokenizer_pb2_grpc.GenerationStub:
        return tokenizer_pb2_grpc.GenerationStub(grpc.insecure_channel(self.address("tokenizer")))

    def scheduler(self) -> scheduler_pb2_grpc.SchedulerStub:
        return scheduler_pb2_grpc.SchedulerStub(grpc.insecure_channel(self.address("scheduler")))

    def load(self) -> scheduler_pb2.Load:
        return self.scheduler().GetLoad(scheduler_pb2.GetLoadRequest(), timeout=5)

    def wait_idle(self, timeout: float = 10.0) -> scheduler_pb2.Load:
        """The load once nothing runs or waits (aborts propagate asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            load = self.load()
            if (load.num_running == 0 and load.num_waiting == 0) or time.monotonic() > deadline:
                return load
            time.sleep(0.05)


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory) -> str:
    from services.common.demo_model import ensure_demo_model
    return ensure_demo_model(str(tmp_path_factory.mktemp("models") / "demo"))


@pytest.fixture(scope="session")
def stack(demo_model_dir) -> Stack:
    p = free_ports(6)
    ports = {"tokenizer": p[0], "scheduler": p[1], "worker": p[2]}
    metrics_ports = {"tokenizer": p[3], "scheduler": p[4], "worker": p[5]}
    argv = [sys.executable, "-m", "services.cli", "serve", "--model", demo_model_dir,
            "--num-kv-blocks", str(NUM_KV_BLOCKS), "--block-size", str(BLOCK_SIZE),
            "--log-level", "WARNING", "--startup-timeout", "120"]
    for name in ports:
        argv += [f"--{name}-port", str(ports[name]), f"--{name}-metrics-port", str(metrics_ports[name])]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env={**os.environ})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "Sluice is ready" in line:
            break
        if not line and proc.poll() is not None:
            pytest.fail(f"sluice serve exited with {proc.returncode}")
    else:
        proc.kill()
        pytest.fail("sluice serve did not become ready")
    yield Stack(proc, ports, metrics_ports, demo_model_dir)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
