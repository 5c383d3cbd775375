"""Workload generation of benchmarks.workload (Poisson arrivals, random prompts) and the argument and
server checks of benchmarks.serve."""
from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.backends import BenchmarkError, ServerInfo
from benchmarks.serve import build_parser, check_server, main, validate_args
from benchmarks.workload import allowed_token_ids, arrival_offsets, random_prompts, special_token_ids


def gaps(offsets: list[float]) -> np.ndarray:
    return np.diff(offsets)


def test_poisson_arrivals_have_exponential_gaps_at_the_rate():
    rate, n = 8.0, 20_001
    offsets = arrival_offsets(n, rate, 1.0, np.random.default_rng(0))
    g = gaps(offsets)
    assert len(offsets) == n and offsets[0] == 0.0 and np.all(g > 0)
    assert g.mean() == pytest.approx(1 / rate, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(1.0, rel=0.03)  # exponential: CV 1
    assert np.mean(g < 1 / rate) == pytest.approx(1 - math.exp(-1), abs=0.01)
    counts = np.bincount(np.floor(offsets).astype(int))[:-1]  # requests per whole second
    assert counts.var() / counts.mean() == pytest.approx(1.0, rel=0.1)  # Poisson: variance = mean


def test_burstiness_keeps_the_rate_and_changes_the_spread():
    g = gaps(arrival_offsets(20_001, 4.0, 0.25, np.random.default_rng(1)))
    assert g.mean() == pytest.approx(0.25, rel=0.05)
    assert g.std() / g.mean() == pytest.approx(2.0, rel=0.05)  # CV = 1/sqrt(burstiness)


def test_arrivals_are_seeded():
    a = arrival_offsets(50, 3.0, 1.0, np.random.default_rng(7))
    assert a == arrival_offsets(50, 3.0, 1.0, np.random.default_rng(7))
    assert a != arrival_offsets(50, 3.0, 1.0, np.random.default_rng(8))


def test_infinite_rate_sends_everything_at_once():
    assert arrival_offsets(5, math.inf, 1.0, np.random.default_rng(0)) == [0.0] * 5
    assert arrival_offsets(1, 2.0, 1.0, np.random.default_rng(0)) == [0.0]


def test_random_prompts_stay_in_range_and_avoid_special_ids():
    allowed = allowed_token_ids(50, 3, {10, 11, 49})
    assert allowed.tolist() == [i for i in range(3, 49) if i not in (10, 11)]
    prompts = random_prompts(200, 16, allowed, np.random.default_rng(0))
    ids = {i for p in prompts for i in p}
    assert len(prompts) == 200 and all(len(p) == 16 for p in prompts)
    assert ids <= set(allowed.tolist()) and len(ids) == len(allowed)
    assert prompts == random_prompts(200, 16, allowed, np.random.default_rng(0))


def test_special_token_ids_of_the_demo_model(demo_model_dir, tmp_path):
    assert special_token_ids(demo_model_dir) == set(range(6))
    assert special_token_ids(None) == set() and special_token_ids(str(tmp_path)) == set()


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_default_addresses_per_backend():
    args = parse("--backend", "scheduler")
    validate_args(args)
    assert args.address == "127.0.0.1:50052"
    args = parse()
    validate_args(args)
    assert args.address == "127.0.0.1:50051"


@pytest.mark.parametrize("argv, message", [
    (["--num-prompts", "0"], "--num-prompts must be >= 1"),
    (["--output-len", "0"], "--output-len must be >= 1"),
    (["--max-concurrency", "0"], "--max-concurrency must be >= 1"),
    (["--channels", "0"], "--channels must be >= 1"),
    (["--burstiness", "0"], "--burstiness must be > 0"),
    (["--backend", "inprocess", "--address", "h:1"], "grpc and scheduler backends only"),
    (["--model", "/no/such/dir"], "is not a directory"),
])
def test_bad_arguments_are_refused_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_request_rate_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        parse("--request-rate", "0")
    assert "request rate must be > 0" in capsys.readouterr().err


def test_workload_must_fit_the_server():
    info = ServerInfo("m", vocab_size=100, max_model_len=64, eos_token_ids=[1])
    check_server(parse("--input-len", "32", "--output-len", "32"), info)
    with pytest.raises(BenchmarkError, match="exceeds the server's max_model_len 64"):
        check_server(parse("--input-len", "32", "--output-len", "33"), info)
    with pytest.raises(BenchmarkError, match="vocab_size 100"):
        check_server(parse("--input-len", "8", "--output-len", "8", "--token-id-lo", "100"), info)
