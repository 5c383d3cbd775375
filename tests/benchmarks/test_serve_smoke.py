"""benchmarks.serve end to end on the demo model: in process, and over gRPC against the stack."""
from __future__ import annotations

import json

import pytest

from benchmarks.serve import main

WORKLOAD = ["--num-prompts", "4", "--input-len", "8", "--output-len", "8", "--num-warmups", "1",
            "--no-progress", "--save-detailed"]


def run_benchmark(tmp_path, *argv: str) -> dict:
    out = tmp_path / "result.json"
    assert main([*WORKLOAD, *argv, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def check_result(result: dict) -> None:
    d = result["detailed"]
    assert result["completed"] == 4 and result["failed"] == 0 and result["errors"] == {}
    assert d["output_lens"] == [8] * 4 and d["input_lens"] == [8] * 4
    assert d["finish_reasons"] == ["length"] * 4
    assert result["total_output_tokens"] == 32 and result["mismatched_output_lens"] == 0
    for key in ("request_throughput", "output_throughput", "total_token_throughput", "mean_ttft_ms",
                "mean_tpot_ms", "mean_itl_ms", "mean_e2el_ms", "p99_e2el_ms", "mean_decode_tok_per_s"):
        assert result[key] > 0, key
    for ttft, e2el, itls in zip(d["ttfts_s"], d["e2els_s"], d["itls_s"], strict=True):
        assert 0 < ttft <= e2el and sum(itls) == pytest.approx(e2el - ttft)


def test_inprocess_backend(tmp_path, demo_model_dir):
    result = run_benchmark(tmp_path, "--backend", "inprocess", "--model", demo_model_dir,
                           "--num-kv-blocks", "64", "--max-model-len", "64",
                           "--max-num-seqs", "2")
    check_result(result)
    assert result["backend"] == "inprocess" and result["server"]["vocab_size"] == 2000
    assert result["config"]["max_num_seqs"] == 2
    counters = result["server_counters"]  # this process's registry, differenced over the run
    assert counters["worker_tokens"] == 4 * (8 + 7)  # each prompt, then 7 decode steps (the 8th is sampled)
    assert counters["preemptions"] == 0 and counters["scheduler_steps"] >= 8
    assert "gpu_busy_s" not in counters  # a CPU worker records no GPU times


@pytest.mark.parametrize("backend, service, extra", [
    ("grpc", "tokenizer", ["--channels", "2", "--max-concurrency", "2", "--metrics-url", "scheduler",
                           "--metrics-url", "worker"]),
    ("scheduler", "scheduler", ["--request-rate", "40", "--dataset-seed", "3"]),
])
def test_grpc_backends_against_the_stack(tmp_path, stack, backend, service, extra):
    extra = [f"http://127.0.0.1:{stack.metrics_ports[arg]}/metrics" if arg in stack.metrics_ports else arg
             for arg in extra]
    result = run_benchmark(tmp_path, "--backend", backend, "--address", stack.address(service),
                           "--model", stack.model_dir, *extra)
    check_result(result)
    if backend == "grpc":  # counters read from the scheduler's and the worker's pages
        assert result["server_counters"]["worker_tokens"] == 4 * (8 + 7)
        assert result["server_counters"]["scheduler_steps"] >= 8
    else:
        assert set(result["server_counters"]) == {"client_cpu_s"}  # no --metrics-url given
    assert result["backend"] == backend and result["model"] == "demo"
    assert result["peak_in_flight"] <= (2 if backend == "grpc" else 4)
    load = stack.wait_idle()
    assert load.num_running == 0 and load.num_waiting == 0


def test_inprocess_start_failure_is_a_clear_error(demo_model_dir, capsys):
    argv = ["--backend", "inprocess", "--model", demo_model_dir, "--num-kv-blocks", "4"]
    assert main([*WORKLOAD, *argv]) == 2
    assert "cannot start the in-process engine: KV cache of 4 blocks" in capsys.readouterr().err


def test_unreachable_server_is_a_clear_error(capsys):
    assert main([*WORKLOAD, "--address", "127.0.0.1:1"]) == 2
    assert "cannot reach the Generation API at 127.0.0.1:1" in capsys.readouterr().err


def test_unreachable_metrics_page_is_a_clear_error(stack, capsys):
    argv = ["--backend", "scheduler", "--address", stack.address("scheduler"), "--model", stack.model_dir,
            "--metrics-url", "http://127.0.0.1:1/metrics"]
    assert main([*WORKLOAD, *argv]) == 2
    assert "cannot read the metrics pages" in capsys.readouterr().err


def test_metrics_url_is_refused_in_process(demo_model_dir, capsys):
    argv = ["--backend", "inprocess", "--model", demo_model_dir, "--metrics-url", "http://127.0.0.1:1/metrics"]
    assert main([*WORKLOAD, *argv]) == 2
    assert "--metrics-url apply to the grpc and scheduler backends only" in capsys.readouterr().err
