"""The committed stubs match the protos, and conversions round-trip."""
import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from services.common import convert
from services.common.sampling import SamplingParams
from services.common.step import CachedRequestData, NewRequestData, SampledToken, StepPlan, StepResult

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="needs grpcio-tools")
def test_generated_stubs_do_not_drift():
    proc = subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_proto_field_and_rpc_is_documented():
    """Each rpc and each message field has a comment on the line above it."""
    field = re.compile(r"^(optional |repeated )?[\w.]+ \w+ = \d+;")
    undocumented = []
    for proto in sorted((ROOT / "protos" / "sluice" / "v1").glob("*.proto")):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            s = line.strip()
            if (s.startswith("rpc ") or field.match(s)) and not lines[i - 1].strip().startswith("//"):
                undocumented.append(f"{proto.name}:{i + 1}: {s}")
    assert not undocumented, undocumented


def test_sampling_round_trip_and_defaults():
    p = SamplingParams(temperature=0.5, top_p=0.25, top_k=7, min_p=0.125, seed=2**40, max_tokens=9,
                       min_tokens=2, stop=["a", "bc"], stop_token_ids=[3], ignore_eos=True, logprobs=2)
    assert convert.sampling_from_pb(convert.sampling_to_pb(p)) == p
    from services.common.pb import common_pb2
    default = convert.sampling_from_pb(common_pb2.SamplingParams(), room=10)
    assert default.max_tokens == 10 and default.temperature == 1.0 and default.seed is None
    assert convert.sampling_from_pb(common_pb2.SamplingParams()).max_tokens == convert.DEFAULT_MAX_TOKENS
    nan = convert.sampling_from_pb(common_pb2.SamplingParams(temperature=float("nan")))
    assert math.isnan(nan.temperature)


def test_step_round_trip():
    p = SamplingParams(temperature=0.0, max_tokens=3, logprobs=1)
    plan = StepPlan(step_id=7, new_requests=[NewRequestData("a", [1, 2, 3], [4], p, [0, 5], 0)],
                    cached_requests=[CachedRequestData("b", [9], 12)],
                    num_scheduled_tokens={"a": 4, "b": 1}, finished_request_ids=["c"])
    back = convert.plan_from_pb(convert.plan_to_pb(plan))
    assert back == plan
    result = StepResult(step_id=7, sampled=[SampledToken("b", 8), SampledToken("a", 5, -0.5, [(5, -0.5), (6, -1.0)]),
                                            SampledToken("d", 2)])
    pb = convert.result_to_pb(result)
    assert list(pb.logprob_rows) == [1], "only the row that asked carries a TokenLogprob"
    assert convert.result_from_pb(pb) == result


@pytest.mark.parametrize("corrupt", ["short_tokens", "row_out_of_range", "unpaired_logprob"])
def test_malformed_step_response_is_rejected(corrupt):
    pb = convert.result_to_pb(StepResult(step_id=1, sampled=[SampledToken("a", 5, -0.5), SampledToken("b", 8)]))
    if corrupt == "short_tokens":
        del pb.sampled_token_ids[1]
    elif corrupt == "row_out_of_range":
        pb.logprob_rows[0] = 2
    else:
        pb.logprob_rows.append(1)
    with pytest.raises(ValueError):
        convert.result_from_pb(pb)
