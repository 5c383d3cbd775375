"""End to end: the three services as real processes, driven over gRPC like a client would."""
from __future__ import annotations

import threading
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.pb import common_pb2, tokenizer_pb2
from tests.stack import NUM_KV_BLOCKS


def generate(stack, timeout=60, **kwargs):
    sampling = kwargs.pop("sampling", {})
    request = tokenizer_pb2.GenerateRequest(sampling=common_pb2.SamplingParams(**sampling), **kwargs)
    return list(stack.generation().Generate(request, timeout=timeout))


def greedy(max_tokens, **extra):
    return dict(temperature=0.0, max_tokens=max_tokens, **extra)


def test_stream_text_matches_full_decode(stack):
    responses = generate(stack, prompt="The river", sampling=greedy(24, ignore_eos=True))
    assert len(responses) >= 2, "tokens must stream in several messages"
    ids = [i for r in responses for i in r.token_ids]
    assert len(ids) == 24
    assert all(r.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED for r in responses[:-1])
    last = responses[-1]
    assert last.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert last.usage.completion_tokens == 24 and last.usage.prompt_tokens > 0
    full = stack.generation().Detokenize(tokenizer_pb2.DetokenizeRequest(token_ids=ids), timeout=10)
    assert "".join(r.text for r in responses) == full.text


def test_greedy_is_deterministic_and_seed_reproducible(stack):
    a = generate(stack, prompt="Hello", sampling=greedy(16, ignore_eos=True))
    b = generate(stack, prompt="Hello", sampling=greedy(16, ignore_eos=True))
    assert [i for r in a for i in r.token_ids] == [i for r in b for i in r.token_ids]
    seeded = dict(temperature=1.0, seed=1234, max_tokens=16, ignore_eos=True)
    c = generate(stack, prompt="Hello", sampling=seeded)
    d = generate(stack, prompt="Hello", sampling=seeded)
    e = generate(stack, prompt="Hello", sampling={**seeded, "seed": 99})
    ids = lambda rs: [i for r in rs for i in r.token_ids]  # noqa: E731
    assert ids(c) == ids(d)
    assert ids(c) != ids(e)


def test_chat_and_token_id_inputs(stack):
    chat = tokenizer_pb2.ChatMessages(messages=[tokenizer_pb2.ChatMessage(role="user", content="Hi")])
    responses = generate(stack, chat=chat, sampling=greedy(8, ignore_eos=True))
    assert sum(len(r.token_ids) for r in responses) == 8
    tok = stack.generation().Tokenize(tokenizer_pb2.TokenizeRequest(prompt="Hello world"), timeout=10)
    assert len(tok.token_ids) == len(tok.tokens) > 0
    by_ids = generate(stack, token_ids=tokenizer_pb2.TokenIds(ids=tok.token_ids),
                      sampling=greedy(8, ignore_eos=True))
    by_text = generate(stack, prompt="Hello world", sampling=greedy(8, ignore_eos=True))
    assert [i for r in by_ids for i in r.token_ids] == [i for r in by_text for i in r.token_ids]


def test_stop_string_cuts_output_and_aborts(stack):
    base = generate(stack, prompt="Once", sampling=greedy(40, ignore_eos=True))
    text = "".join(r.text for r in base)
    assert len(text) > 10
    stop = text[len(text) // 2: len(text) // 2 + 3]
    cut = generate(stack, prompt="Once", sampling=greedy(40, ignore_eos=True, stop=[stop]))
    out = "".join(r.text for r in cut)
    assert out == text[: text.index(stop)]
    assert cut[-1].finish_reason == common_pb2.FINISH_REASON_STOP
    assert cut[-1].stop_string == stop
    assert stack.wait_idle().num_running == 0


def test_logprobs(stack):
    responses = generate(stack, prompt="A", sampling=greedy(4, ignore_eos=True, logprobs=3))
    entries = [lp for r in responses for lp in r.logprobs]
    ids = [i for r in responses for i in r.token_ids]
    assert [e.token_id for e in entries] == ids
    for e in entries:
        assert e.logprob <= 0.0 and len(e.top_logprobs) == 3
        assert e.top_logprobs[0].token_id == e.token_id  # greedy picks the most likely
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob


def test_concurrent_streams_with_cancellations_free_everything(stack):
    stub = stack.generation()
    results: dict[int, object] = {}

    def run(i: int) -> None:
        request = tokenizer_pb2.GenerateRequest(
            prompt=f"Stream number {i} says", sampling=common_pb2.SamplingParams(
                temperature=0.8, seed=i, max_tokens=64, ignore_eos=True))
        call = stub.Generate(request, timeout=120)
        received = 0
        try:
            for response in call:
                received += len(response.token_ids)
                if i < 20 and received >= 4:
                    call.cancel()
            results[i] = ("done", received)
        except grpc.RpcError as exc:
            results[i] = (exc.code(), received)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert len(results) == 50
    for i in range(20):
        assert results[i][0] == grpc.StatusCode.CANCELLED, results[i]
    for i in range(20, 50):
        assert results[i] == ("done", 64), (i, results[i])
    load = stack.wait_idle()
    assert load.num_running == 0 and load.num_waiting == 0
    assert load.num_free_blocks == NUM_KV_BLOCKS
    assert load.kv_usage == 0.0


def test_deadline_expiry_aborts_request(stack):
    request = tokenizer_pb2.GenerateRequest(prompt="Slow", sampling=common_pb2.SamplingParams(
        temperature=0.0, max_tokens=1900, ignore_eos=True))
    with pytest.raises(grpc.RpcError) as info:
        for _ in stack.generation().Generate(request, timeout=0.3):
            pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    load = stack.wait_idle()
    assert load.num_running == 0 and load.num_free_blocks == NUM_KV_BLOCKS


INVALID = [
    ("empty prompt", dict(prompt="")),
    ("no input", dict()),
    ("empty chat", dict(chat=tokenizer_pb2.ChatMessages())),
    ("empty token ids", dict(token_ids=tokenizer_pb2.TokenIds())),
    ("id out of vocab", dict(token_ids=tokenizer_pb2.TokenIds(ids=[1, 10_000_000]))),
    ("negative id", dict(token_ids=tokenizer_pb2.TokenIds(ids=[-1]))),
    ("beyond context", dict(prompt="word " * 10, sampling=dict(max_tokens=100_000))),
    ("nan temperature", dict(prompt="x", sampling=dict(temperature=float("nan")))),
    ("negative temperature", dict(prompt="x", sampling=dict(temperature=-1.0))),
    ("top_p zero", dict(prompt="x", sampling=dict(top_p=0.0))),
    ("top_p above one", dict(prompt="x", sampling=dict(top_p=1.5))),
    ("top_k negative", dict(prompt="x", sampling=dict(top_k=-3))),
    ("min_p above one", dict(prompt="x", sampling=dict(min_p=2.0))),
    ("absurd max_tokens", dict(prompt="x", sampling=dict(max_tokens=4_000_000_000))),
    ("max_tokens zero", dict(prompt="x", sampling=dict(max_tokens=0))),
    ("min above max", dict(prompt="x", sampling=dict(max_tokens=2, min_tokens=5))),
    ("too many stops", dict(prompt="x", sampling=dict(stop=["s"] * 1000))),
    ("empty stop", dict(prompt="x", sampling=dict(stop=[""]))),
    ("huge stop", dict(prompt="x", sampling=dict(stop=["s" * 10_000]))),
    ("stop id out of vocab", dict(prompt="x", sampling=dict(stop_token_ids=[10_000_000]))),
    ("too many logprobs", dict(prompt="x", sampling=dict(logprobs=1000))),
    ("bad penalty", dict(prompt="x", sampling=dict(repetition_penalty=0.0))),
    ("bad role", dict(chat=tokenizer_pb2.ChatMessages(messages=[
        tokenizer_pb2.ChatMessage(role="wizard", content="hi")]))),
    ("long request id", dict(prompt="x", request_id="r" * 1000)),
]


@pytest.mark.parametrize("name,kwargs", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_requests_get_invalid_argument(stack, name, kwargs):
    with pytest.raises(grpc.RpcError) as info:
        generate(stack, timeout=10, **kwargs)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert info.value.details()


def test_still_serving_after_invalid_requests(stack):
    for _, kwargs in INVALID:
        with pytest.raises(grpc.RpcError):
            generate(stack, timeout=10, **kwargs)
    responses = generate(stack, prompt="Still here", sampling=greedy(4, ignore_eos=True))
    assert sum(len(r.token_ids) for r in responses) == 4
    assert stack.wait_idle().num_free_blocks == NUM_KV_BLOCKS


@pytest.mark.parametrize("service", ["tokenizer", "scheduler", "worker"])
def test_health_reflection_and_metrics(stack, service):
    channel = grpc.insecure_channel(stack.address(service))
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                          timeout=5)
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "grpc.health.v1.Health" in names
    assert any(n.startswith("sluice.v1.") for n in names)
    body = urllib.request.urlopen(
        f"http://127.0.0.1:{stack.metrics_ports[service]}/metrics", timeout=5).read().decode()
    assert f"sluice_{service}_" in body


def test_metrics_count_requests(stack):
    generate(stack, prompt="count me", sampling=greedy(3, ignore_eos=True))
    body = urllib.request.urlopen(
        f"http://127.0.0.1:{stack.metrics_ports['scheduler']}/metrics", timeout=5).read().decode()
    assert "sluice_scheduler_time_to_first_token_seconds_count" in body
    gen = [line for line in body.splitlines() if line.startswith("sluice_scheduler_generation_tokens_total")]
    assert gen and float(gen[0].split()[-1]) >= 3


def test_model_info(stack):
    info = stack.generation().GetModelInfo(tokenizer_pb2.GetModelInfoRequest(), timeout=5)
    assert info.max_model_len > 0 and info.vocab_size > 0 and info.eos_token_ids
    assert info.has_chat_template
