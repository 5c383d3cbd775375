"""Tiny random HF checkpoints (built and saved with transformers itself) and a scheduler stand-in.

Checkpoints are built once per test session under one temporary directory. Every parameter is
randomised (biases and norm weights too), so a weight loaded into the wrong place changes outputs.
"""
from __future__ import annotations

import atexit
import functools
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from services.common.sampling import SamplingParams
from services.common.step import CachedRequestData, NewRequestData, StepPlan
from services.worker.config import WorkerConfig
from services.worker.input_batch import RequestState
from services.worker.model_runner import ModelRunner

_SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=256,
              max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)

# name -> (config class, model class, config kwargs, save kwargs)
CASES: dict[str, tuple[str, str, dict, dict]] = {
    "llama_gqa_llama3_sharded": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_attention_heads=4, num_key_value_heads=2,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64}), dict(max_shard_size="40KB")),
    "llama_tied": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True), {}),
    "llama_linear_bias": ("LlamaConfig", "LlamaForCausalLM", dict(
        num_attention_heads=4, num_key_value_heads=1, attention_bias=True, mlp_bias=True,
        rope_scaling={"rope_type": "linear", "factor": 2.0}), {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_window=None), {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6), {}),
}



_ROOT = Path(tempfile.mkdtemp(prefix="sluice-tiny-models-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@functools.cache
def build_checkpoint(name: str) -> tuple[Path, transformers.PreTrainedModel]:
    """(saved model dir, the float32 HF model in eval mode) for CASES[name]."""
    config_cls, model_cls, kwargs, save_kwargs = CASES[name]
    config = getattr(transformers, config_cls)(**_SMALL, **kwargs)
    torch.manual_seed(sum(map(ord, name)))
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "norm" in param_name:
                param.normal_(1.0, 0.1)
            else:
                param.normal_(0.0, 0.1)
    path = _ROOT / name
    model.save_pretrained(path, **save_kwargs)
    model.generation_config.eos_token_id = None  # HF generate must not stop early in comparisons
    return path, model


def make_runner(path: Path, **overrides) -> ModelRunner:
    kwargs = dict(model=str(path), device="cpu", dtype="float32", block_size=4, num_kv_blocks=128,
                  max_model_len=256, max_num_batched_tokens=512)
    return ModelRunner(WorkerConfig(**{**kwargs, **overrides}))


def hf_greedy(model: transformers.PreTrainedModel, prompt: list[int], num_tokens: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=num_tokens, do_sample=False, pad_token_id=0)
    generated = out[0, len(prompt):].tolist()
    assert len(generated) == num_tokens, generated
    return generated


PROMPTS = [[1, 17, 42, 99, 3, 250, 8], [1, *range(30, 50)], [1, 200, 5, 5, 5, 77, 13, 64, 91, 120, 11, 2]]


def sluice_prefill_logits(runner, prompts: list[list[int]]) -> list[torch.Tensor]:
    """Logits `[len(prompt), V]` of every prompt token, all prompts in one flat forward."""
    states, next_block = [], 0
    for i, prompt in enumerate(prompts):
        num_blocks = -(-len(prompt) // runner.config.block_size)
        block_ids = list(range(next_block, next_block + num_blocks))
        states.append(RequestState(f"p{i}", prompt, [], SamplingParams(), block_ids, 0))
        next_block += num_blocks
    inputs = runner.input_batch.prepare([(st, len(st.prompt_token_ids)) for st in states], runner.device)
    with torch.inference_mode():
        hidden = runner.model(inputs.input_ids, inputs.positions, inputs.metadata)
        logits = runner.model.compute_logits(hidden)
    return list(logits.split([len(p) for p in prompts]))


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


@dataclass
class _Request:
    request_id: str
    prompt: list[int]
    sampling: SamplingParams
    arrive_step: int
    output: list[int] = field(default_factory=list)
    num_computed: int = 0
    block_ids: list[int] = field(default_factory=list)
    sent: bool = False

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)


class StepDriver:
    """A minimal scheduler: schedules every arrived, unfinished request each step (its whole
    remainder, or at most `chunk_size` tokens), allocates blocks from a shuffled free list (so block
    tables are not contiguous), and finishes a request after `sampling.max_tokens` outputs."""

    def __init__(self, runner: ModelRunner, chunk_size: int | None = None, seed: int = 0):
        self.runner, self.chunk_size = runner, chunk_size
        self.block_size = runner.cache_spec().block_size
        self.free_blocks = list(range(runner.cache_spec().num_blocks))
        random.Random(seed).shuffle(self.free_blocks)
        self.requests: dict[str, _Request] = {}
        self.step_id = 0
        self.results = []  # every StepResult, in order
        self.finished: list[str] = []  # done since the last plan; sent as finished_request_ids

    def add(self, request_id: str, prompt: list[int], sampling: SamplingParams, arrive_step: int = 0) -> None:
        self.requests[request_id] = _Request(request_id, list(prompt), sampling, arrive_step)

    def step(self) -> None:
        plan = StepPlan(step_id=self.step_id, finished_request_ids=self.finished)
        self.finished = []
        for req in self.requests.values():
            if req.arrive_step > self.step_id or len(req.output) >= req.sampling.max_tokens:
                continue
            n = req.num_tokens - req.num_computed
            n = min(n, self.chunk_size) if self.chunk_size else n
            needed = -(-(req.num_computed + n) // self.block_size) - len(req.block_ids)
            new_blocks = [self.free_blocks.pop() for _ in range(needed)]
            req.block_ids += new_blocks
            if req.sent:
                plan.cached_requests.append(CachedRequestData(req.request_id, new_blocks, req.num_computed))
            else:
                plan.new_requests.append(NewRequestData(req.request_id, req.prompt, [], req.sampling,
                                                        list(req.block_ids), req.num_computed))
                req.sent = True
            plan.num_scheduled_tokens[req.request_id] = n
        result = self.runner.execute(plan)
        self.results.append(result)
        for rid, n in plan.num_scheduled_tokens.items():
            self.requests[rid].num_computed += n
        for sampled in result.sampled:
            req = self.requests[sampled.request_id]
            assert req.num_computed == req.num_tokens, "sampled before the end of the sequence"
            req.output.append(sampled.token_id)
            if len(req.output) == req.sampling.max_tokens:
                self.finished.append(req.request_id)
                self.free_blocks += req.block_ids
        self.step_id += 1

    def run(self) -> dict[str, list[int]]:
        while any(len(r.output) < r.sampling.max_tokens for r in self.requests.values()):
            self.step()
            assert self.step_id < 1000
        return {rid: r.output for rid, r in self.requests.items()}
