"""Metric definitions of benchmarks.serve_metrics on hand-made timelines: exact TTFT, TPOT, ITL, E2EL,
throughputs and percentiles."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.serve_metrics import Chunk, RequestRecord, compute_metrics, detailed_arrays, summarize_ms


def record(prompt_len: int, send: float, chunks: list[tuple[float, int]], last: str = "length",
           error: str | None = None) -> RequestRecord:
    """A record whose chunks arrive at the given (time, tokens); the last one finishes with `last`."""
    r = RequestRecord(prompt_len=prompt_len, send_time=send)
    for i, (t, n) in enumerate(chunks):
        r.add_chunk(t, Chunk(n, last if i == len(chunks) - 1 else None))
    r.error = error
    return r


@pytest.fixture
def records() -> list[RequestRecord]:
    return [
        # n = 5 tokens in 4 chunks: TTFT 0.5, E2EL 1.0, ITL [0.1, 0.2, 0.2], TPOT 0.5 / 4 = 0.125
        record(10, 10.0, [(10.5, 1), (10.6, 1), (10.8, 2), (11.0, 1)]),
        # n = 2: TTFT 0.2, E2EL 0.4, ITL [0.2], TPOT 0.2
        record(20, 20.0, [(20.2, 1), (20.4, 1)]),
        # failed: left out of every metric
        record(99, 0.0, [(0.1, 1), (0.2, 0)], last="error"),
        # n = 1: TTFT = E2EL = 0.3, no ITL, no TPOT
        record(30, 5.0, [(5.3, 1)], last="stop"),
    ]


def test_per_request_definitions(records):
    a, b, _, d = records
    assert a.output_tokens == 5 and a.success
    assert a.ttft == pytest.approx(0.5) and a.e2el == pytest.approx(1.0)
    assert a.itls == pytest.approx([0.1, 0.2, 0.2])
    assert a.tpot == pytest.approx(0.125)
    assert b.tpot == pytest.approx(0.2)
    assert d.tpot is None and d.itls == [] and d.ttft == pytest.approx(d.e2el) == pytest.approx(0.3)
    assert sum(a.itls) == pytest.approx(a.e2el - a.ttft)


def test_aggregates_over_completed_requests(records):
    m = compute_metrics(records, duration_s=2.0)
    assert (m["completed"], m["failed"]) == (3, 1)
    assert (m["total_input_tokens"], m["total_output_tokens"]) == (60, 8)
    assert m["request_throughput"] == pytest.approx(1.5)
    assert m["output_throughput"] == pytest.approx(4.0)
    assert m["total_token_throughput"] == pytest.approx(34.0)
    # TTFT over requests [500, 200, 300] ms; linear-interpolation percentiles on [200, 300, 500].
    assert m["mean_ttft_ms"] == pytest.approx(1000 / 3)
    assert m["median_ttft_ms"] == pytest.approx(300)
    assert m["p90_ttft_ms"] == pytest.approx(460)
    assert m["p99_ttft_ms"] == pytest.approx(496)
    assert m["std_ttft_ms"] == pytest.approx(np.std([500, 200, 300]))
    # TPOT only where n > 1: [125, 200] ms.
    assert m["mean_tpot_ms"] == pytest.approx(162.5)
    assert m["p99_tpot_ms"] == pytest.approx(125 + 0.99 * 75)
    # ITL over all gaps of all requests together: [100, 200, 200, 200] ms.
    assert m["mean_itl_ms"] == pytest.approx(175)
    assert m["median_itl_ms"] == pytest.approx(200)
    assert m["p90_itl_ms"] == pytest.approx(200)
    # E2EL [1000, 400, 300] ms.
    assert m["mean_e2el_ms"] == pytest.approx(1700 / 3)
    assert m["median_e2el_ms"] == pytest.approx(400)
    # Decode rate 1/TPOT per stream: [8, 5] tokens/s.
    assert m["mean_decode_tok_per_s"] == pytest.approx(6.5)
    assert m["median_decode_tok_per_s"] == pytest.approx(6.5)


def test_empty_run_gives_zeros_not_errors():
    m = compute_metrics([record(4, 0.0, [(0.1, 1)], last="abort")], duration_s=1.0)
    assert m["completed"] == 0 and m["failed"] == 1
    assert m["mean_ttft_ms"] == m["p99_itl_ms"] == m["mean_decode_tok_per_s"] == 0.0


def test_chunks_are_token_messages_or_the_final_one():
    r = RequestRecord(prompt_len=1, send_time=0.0)
    r.add_chunk(0.1, Chunk(2, None))
    r.add_chunk(0.2, Chunk(0, None))  # text held back, no token: not a chunk
    r.add_chunk(0.4, Chunk(0, "length"))  # empty last message: ends the stream, is a chunk
    assert r.chunk_times == [0.1, 0.4] and r.output_tokens == 2
    assert r.e2el == pytest.approx(0.4) and r.itls == pytest.approx([0.3])


def test_success_needs_a_normal_finish_and_tokens():
    assert not record(1, 0.0, [(0.1, 1)], last="abort").success
    assert not record(1, 0.0, [(0.1, 1)], error="UNAVAILABLE: down").success
    assert not record(1, 0.0, [(0.1, 0)]).success
    assert record(1, 0.0, [(0.1, 1)], last="stop").success


def test_summary_keys_and_units():
    s = summarize_ms("x", [0.001, 0.003])
    assert s == pytest.approx({"mean_x_ms": 2.0, "median_x_ms": 2.0, "std_x_ms": 1.0,
                               "p90_x_ms": 2.8, "p99_x_ms": 2.98})


def test_detailed_arrays(records):
    d = detailed_arrays(records, origin=5.0)
    assert d["output_lens"] == [5, 2, 1, 1]
    assert d["send_times_s"] == pytest.approx([5.0, 15.0, -5.0, 0.0])
    assert d["ttfts_s"][2] is None and d["tpots_s"][3] is None
    assert d["itls_s"][2] == [] and d["itls_s"][0] == pytest.approx([0.1, 0.2, 0.2])
    assert d["finish_reasons"] == ["length", "length", "error", "stop"]
