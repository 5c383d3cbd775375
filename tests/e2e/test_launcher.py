"""`sluice serve` stops all three services on SIGINT, also when started with SIGINT ignored (as a
shell starts background jobs), and leaves no process listening."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

from tests.stack import free_ports


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_sigint_stops_every_service_even_if_inherited_as_ignored(demo_model_dir):
    ports = free_ports(3)
    argv = [sys.executable, "-m", "services.cli", "serve", "--model", demo_model_dir,
            "--num-kv-blocks", "128", "--log-level", "WARNING"]
    for name, port in zip(("tokenizer", "scheduler", "worker"), ports):
        argv += [f"--{name}-port", str(port), f"--{name}-metrics-port", "0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 120
        while "Sluice is ready" not in (line := proc.stdout.readline()):
            assert line or proc.poll() is None, f"serve exited with {proc.returncode}"
            assert time.monotonic() < deadline, "serve did not become ready"
        assert all(_listening(p) for p in ports)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert not any(_listening(p) for p in ports), "a service outlived the launcher"
    finally:
        if proc.poll() is None:
            proc.kill()
