"""benchmarks.report: reading result files, matching peers, the decode roofline, the markdown."""
from __future__ import annotations

import json

import pytest

from benchmarks.report import ModelShape, decode_roofline_tok_per_s, main, parse_text, read_records

LLAMA3_8B_KV_BYTES = 128 * 1024


def sluice_run(**overrides) -> dict:
    run = {"what": "sluice_serve", "label": None, "backend": "grpc", "concurrency": 8,
           "input_len": 1024, "output_len": 128, "output_throughput": 360.0,
           "median_ttft_ms": 50.0, "median_tpot_ms": 20.0, "mean_tpot_ms": 20.0,
           "mean_decode_tok_per_s": 50.0}
    return {**run, **overrides}


@pytest.fixture
def results(tmp_path):
    (tmp_path / "b8.json").write_text(json.dumps(sluice_run(label="b8")))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b1.json").write_text(json.dumps(sluice_run(
        label="b1", backend="inprocess", concurrency=1, output_throughput=45.0, mean_tpot_ms=25.0)))
    (tmp_path / "hf.log").write_text("\n".join([
        "Loading checkpoint shards: 100%",
        json.dumps({"what": "copy_bw_TBps", "value": 3.5}),
        json.dumps({"what": "copy_bw_TBps", "value": 4.0}),
        json.dumps({"what": "hf_generate", "batch": 8, "prompt": 1024, "new": 128,
                    "out_tok_per_s": 240.0, "weight_GB": 16.06}),
        json.dumps({"what": "hf_generate", "batch": 8, "prompt": 128, "new": 128,
                    "out_tok_per_s": 999.0, "weight_GB": 16.06}),
        json.dumps({"what": "hf_generate", "batch": 1, "prompt": 128, "new": 128,
                    "out_tok_per_s": 30.0, "weight_GB": 16.06}),
        "{not json",
    ]))
    (tmp_path / "lmdeploy.jsonl").write_text(
        json.dumps({"what": "lmdeploy_pytorch", "requests": 8, "out_tok_per_s": 400.0}) + "\n")
    return tmp_path


def row_of(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_kv_bytes_per_token_defaults_to_llama3_8b_bf16():
    assert ModelShape().kv_bytes_per_token == LLAMA3_8B_KV_BYTES


def test_decode_roofline_formula():
    # 4 TB/s, 16 GB of weights, 8 sequences of 1000 tokens at 128 KiB: 8 * 4e12 / (16e9 + 8000 * 131072)
    value = decode_roofline_tok_per_s(8, 4e12, 16e9, LLAMA3_8B_KV_BYTES, 1000)
    assert value == pytest.approx(8 * 4e12 / (16e9 + 8 * 1000 * 131072))
    assert decode_roofline_tok_per_s(1, 2e12, 1e9, 0, 0) == pytest.approx(2000)


def test_parse_text_accepts_documents_lists_and_json_lines():
    assert parse_text('{"a": 1}') == [{"a": 1}]
    assert parse_text('[{"a": 1}, 2]') == [{"a": 1}]
    assert parse_text('log line\n{"a": 1}\n{"b": \n[1]\n{"c": 2}') == [{"a": 1}, {"c": 2}]


def test_records_are_read_recursively_and_classified(results):
    records = read_records(str(results))
    assert sorted(r["label"] for r in records.sluice) == ["b1", "b8"]
    assert len(records.hf) == 3 and len(records.lmdeploy) == 1
    assert records.bandwidths_tbps == [3.5, 4.0]


def test_table_matches_peers_and_computes_the_roofline(results, capsys):
    out_md = results / "report.md"
    assert main([str(results), "--markdown-out", str(out_md)]) == 0
    text = capsys.readouterr().out
    assert out_md.read_text() == text
    cells = row_of(text, "b8")
    # run, backend, B, in/out, Sluice, HF, ratio, LMDeploy, ratio, TTFT, TPOT, per stream, B/TPOT,
    # roofline, %: the same-length HF figure wins over the faster one at other lengths.
    assert cells[:9] == ["b8", "grpc", "8", "1024/128", "360", "240", "1.50×", "400", "0.90×"]
    roofline = 8 * 4.0e12 / (16.06e9 + 8 * (1024 + 64) * LLAMA3_8B_KV_BYTES)
    assert cells[12] == "400"  # 8 streams / 20 ms
    assert cells[13] == f"{roofline:,.0f}"
    assert cells[14] == f"{100 * 400 / roofline:.1f}%"
    assert "4.00 TB/s" in text and "16.06 GB" in text and "128 KiB per token" in text


def test_peer_at_other_lengths_is_marked(results, capsys):
    assert main([str(results)]) == 0
    text = capsys.readouterr().out
    cells = row_of(text, "b1")
    assert cells[5] == "30.00 †" and cells[6] == "1.50×"
    assert cells[7] == "—"  # no LMDeploy record with requests == 1
    assert "† transformers figure at the same batch but other prompt/new lengths." in text


def test_flags_override_bandwidth_weights_and_shape(results, capsys):
    argv = [str(results), "--bandwidth-tbps", "2", "--weight-gb", "10", "--num-layers", "16"]
    assert main(argv) == 0
    cells = row_of(capsys.readouterr().out, "b8")
    roofline = 8 * 2e12 / (10e9 + 8 * 1088 * LLAMA3_8B_KV_BYTES // 2)
    assert cells[13] == f"{roofline:,.0f}"


def test_without_peers_or_bandwidth_the_cells_are_empty(tmp_path, capsys):
    (tmp_path / "r.json").write_text(json.dumps(sluice_run(label="alone")))
    assert main([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert row_of(text, "alone")[5:] == ["—", "—", "50.00", "20.00", "50.00", "400", "—", "—", "—", "—"]
    assert "LMDeploy" not in text and "bandwidth unknown" in text


def test_server_counters_give_gpu_busy_and_preemptions(tmp_path, capsys):
    run = sluice_run(label="counted", server_counters={"gpu_busy_fraction": 0.874, "preemptions": 43.0})
    (tmp_path / "r.json").write_text(json.dumps(run))
    assert main([str(tmp_path)]) == 0
    assert row_of(capsys.readouterr().out, "counted")[-2:] == ["87%", "43.00"]


@pytest.mark.parametrize("argv, message", [
    (["/no/such/dir"], "is not a directory"),
    (["{dir}", "--bandwidth-tbps", "0"], "--bandwidth-tbps must be > 0"),
    (["{dir}"], "no Sluice results"),
])
def test_errors(tmp_path, capsys, argv, message):
    assert main([a.format(dir=tmp_path) for a in argv]) == 2
    assert message in capsys.readouterr().err
