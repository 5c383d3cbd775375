"""The CPU-side benchmarks run end to end at toy sizes and report what they measured."""
from __future__ import annotations

import re

import pytest

from benchmarks import grpc_rate, host_step


def test_grpc_rate_reports_messages_per_second(capsys):
    assert grpc_rate.main(["--streams", "4", "--messages", "5"]) == 0
    rate = float(re.search(r"(\d+) messages/s", capsys.readouterr().out).group(1))
    assert rate > 0


def test_front_rate_streams_every_token_through_the_tokenizer_service(demo_model_dir, tmp_path):
    """The real tokenizer service (a subprocess) in front of the stand-in scheduler: every token of
    every stream arrives once, in at most one message per token, and the service's CPU time is read
    (in clock ticks of 10 ms: a toy run may use none)."""
    import json

    from benchmarks import front_rate

    out = tmp_path / "front.json"
    assert front_rate.main(["--streams", "3", "--tokens", "20", "--step-ms", "1", "--model", demo_model_dir,
                            "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["tokens"] == 60 and 0 < result["messages_per_token"] <= 1
    assert result["front_cpu_us_per_token"] >= 0 and result["seconds"] > 0


def test_host_step_times_every_stage(capsys):
    assert host_step.main(["--batch", "4", "--context", "40", "--steps", "3", "--no-gc-tuning"]) == 0
    out = capsys.readouterr().out
    assert "batch 4, context ~40" in out
    stages = re.findall(r"^  (\w+: [^0-9]+?)\s+([0-9.]+) ms$", out, re.M)
    assert [name for name, _ in stages] == [
        "scheduler: schedule", "scheduler: plan -> bytes", "worker: bytes -> plan", "worker: launch + finish",
        "worker: result -> bytes", "scheduler: bytes -> result", "scheduler: update"]
    assert all(float(ms) >= 0 for _, ms in stages)


def test_profile_eager_step_builds_mixed_steps_and_counts_linear_parameters(demo_model_dir):
    from benchmarks import profile_decode
    from services.worker.config import WorkerConfig
    from services.worker.model_runner import ModelRunner

    runner = ModelRunner(WorkerConfig(model=demo_model_dir, device="cpu", num_kv_blocks=32, block_size=16,
                                      max_model_len=64))
    step, num_tokens = profile_decode.eager_step(runner, "2:20:1:8")
    assert num_tokens == 2 + 8
    step()  # two decodes at 20 tokens of context beside one 8-token prompt
    c = runner.model_config
    per_layer = (c.hidden_size * (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim
                 + c.num_attention_heads * c.head_dim * c.hidden_size + 3 * c.intermediate_size * c.hidden_size)
    assert profile_decode.linear_params(runner.model) == c.num_hidden_layers * per_layer


def test_serving_timeline_unions_overlaps_and_names_the_gaps():
    from benchmarks.profile_serving import timeline

    intervals = [(0.0, 10.0, "gemv"), (2.0, 4.0, "copy"), (10.0, 12.0, "norm"),  # busy 0..12
                 (20.0, 30.0, "gemv"), (31.0, 40.0, "argmax"),  # gap 8 us, then 1 us (not counted)
                 (60.0, 70.0, "gemv")]  # gap 20 us
    t = timeline(intervals, steps=2)
    assert t["wall_us_per_step"] == 35.0 and t["gpu_busy_us_per_step"] == (12 + 19 + 10) / 2
    assert t["gpu_idle_us_per_step"] == (70 - 41) / 2 and t["gaps_over_5us_per_step"] == 1.0
    assert [(g["us"], g["after"], g["before"]) for g in t["largest_gaps"]] == [
        (20.0, "argmax", "gemv"), (8.0, "norm", "gemv")]
    with pytest.raises(ValueError, match="no GPU activity"):
        timeline([], steps=1)


def test_ablation_patches_apply_inside_and_undo_outside():
    """`ablate_decode` runs on the GPU only; what each ablation name patches is checked here."""
    import torch

    from benchmarks import ablate_decode
    from kernels.attention import decode as decode_attention
    from services.worker.layers import attention as attention_layer
    from services.worker.layers import norm as norm_layer

    x, residual = torch.ones(1, 8), torch.full((1, 8), 2.0)
    served_norm, served_decode = norm_layer.rms_norm, attention_layer.Attention._decode
    served_config = decode_attention._CONFIGS[128, False]
    with ablate_decode._patches("norm+decode"):
        assert norm_layer.rms_norm(x, None, 1e-6, residual) == (x, residual)
        assert attention_layer.Attention._decode is not served_decode
    with ablate_decode._patches("decode-config=32,8,3"):
        assert decode_attention._CONFIGS[128, False] == (32, 8, 3)
    with ablate_decode._patches("splits=5"):
        assert ablate_decode.attention.choose_num_splits(1, 8, 4096, 132) == 5
    from kernels.gemm import gemv_triton

    served_gemv = gemv_triton.pick_config(6144, 4096)
    with ablate_decode._patches("gemv=4096:4096:16,256,2,3"):
        assert gemv_triton.pick_config(4096, 4096) == (16, 256, 2, 3)
        assert gemv_triton.pick_config(6144, 4096) == served_gemv  # other shapes keep their tiles
    assert gemv_triton.pick_config(4096, 4096) != (16, 256, 2, 3)
    with ablate_decode._patches("splits=1+decode-config=256,16,1"):  # any parts combine
        assert ablate_decode.attention.choose_num_splits(1, 8, 4096, 132) == 1
        assert decode_attention._CONFIGS[128, False] == (256, 16, 1)
    for bad in ("norn", "norm+decod", "decode-config=64,4", "gemv=4096:4096", "gemv=4096:4096:16,256,2"):
        with pytest.raises(ValueError):
            ablate_decode._patches(bad)
    with pytest.raises(ValueError, match="unknown ablation"):  # before any model is built
        ablate_decode.main(["/nonexistent", "--ablations", "none", "splitz=4"])
    assert norm_layer.rms_norm is served_norm and attention_layer.Attention._decode is served_decode
    assert decode_attention._CONFIGS[128, False] == served_config


def test_ablate_sustained_warms_then_alternates():
    """`--sustained`: the first graph runs until the deadline (untimed), then every variant is timed
    once per round, in turn, and each row is the mean of its rounds."""
    from benchmarks import ablate_decode

    now = [0.0]
    calls = []
    results = {"a": [9.0, 9.0, 9.0, 4.0, 6.0], "b": [3.0, 5.0]}

    def timer(replay, steps, warmups):
        calls.append((replay, steps, warmups))
        now[0] += 1.0
        return results[replay].pop(0)

    means = ablate_decode.sustained_ms(["a", "b"], seconds=2.5, timer=timer, clock=lambda: now[0], rounds=2,
                                       steps=50)
    assert calls[:3] == [("a", 20, 0)] * 3  # warm-up until the clock passes 2.5 s
    assert calls[3:] == [("a", 50, 20), ("b", 50, 20), ("a", 50, 20), ("b", 50, 20)]
    assert means == [5.0, 4.0]
