"""`sluice serve`: the three services as separate processes on loopback, started in order, watched,
and stopped together."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def wait_serving(address: str, timeout: float, procs: dict[str, subprocess.Popen]) -> None:
    """Block until the gRPC server at address reports SERVING; fail fast if a process died."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            for name, p in procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"the {name} exited with code {p.returncode}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{address} not serving after {timeout:.0f}s")


def stop_all(procs: list[subprocess.Popen], timeout: float = 10.0) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def serve(commands: list[tuple[str, list[str], str]], startup_timeout: float) -> int:
    """commands: (name, argv for `sluice`, gRPC address) in start order (worker first)."""
    procs: dict[str, subprocess.Popen] = {}
    # Ctrl-C and SIGTERM both stop the stack. SIGINT is set explicitly because a shell starts
    # background jobs with SIGINT ignored, and Python then never raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        for name, argv, _ in commands:
            procs[name] = subprocess.Popen([sys.executable, "-m", "services.cli", *argv])
        started = time.monotonic()
        for name, _, address in commands:
            wait_serving(address, startup_timeout, procs)
            print(f"  {name:<9} serving on {address} ({time.monotonic() - started:.1f} s)", flush=True)
        print(f"Sluice is ready: Generation API on {commands[-1][2]} (Ctrl-C stops all three)",
              flush=True)
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
        name, dead = next((n, p) for n, p in procs.items() if p.poll() is not None)
        print(f"the {name} exited (code {dead.returncode}); stopping the others", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"start-up failed: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan children
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_all(list(procs.values()))
