"""The worker's compute side: owns the model, the KV cache and per-request state; runs one step.

`ModelRunner(config)` loads everything at construction (config -> dtype/device -> weights -> KV
sizing -> cache). `execute(plan)` is one scheduler step: update request state from the plan, run
the model over the scheduled tokens as one flat batch, sample for each request whose scheduled
tokens reach the end of its sequence, and append the sampled ids to the worker's own copy.

Not thread-safe: call `execute` from one thread at a time (the servicer serialises steps).
"""
from __future__ import annotations

import logging
import os

import torch

from services.common.sampling import SamplingParams
from services.common.step import CacheSpec, SampledToken, StepPlan, StepResult
from services.worker.config import WorkerConfig, resolve_device, resolve_dtype, resolve_max_model_len
from services.worker.input_batch import InputBatch, ModelInputs, RequestState
from services.worker.kv_cache import (
    KVCache,
    allocate_kv_cache,
    bind_kv_cache,
    cuda_free_bytes_for_kv,
    num_blocks_for,
)
from services.worker.loader import load_model
from services.worker.model_config import ModelConfig
from services.worker.sampler import SamplerOutput, SamplingBatch, sample

logger = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, config: WorkerConfig):
        self.config = config
        torch.manual_seed(config.seed)
        self.device = resolve_device(config)
        self.model_config = ModelConfig.from_hf(config.model)
        self.dtype = resolve_dtype(config, self.model_config.torch_dtype, self.device)
        self.max_model_len = resolve_max_model_len(config, self.model_config)
        self.model = load_model(config, self.model_config, self.device, self.dtype)
        self.kv_cache: KVCache | None = None
        self.num_blocks = self._size_kv_cache()
        self.kv_cache = allocate_kv_cache(self.model_config, self.num_blocks, config.block_size, self.dtype,
                                          self.device)
        bind_kv_cache(self.model, self.kv_cache)
        self.input_batch = InputBatch(config.block_size, self.num_blocks, self.max_model_len,
                                      config.max_num_batched_tokens, self.model_config.vocab_size)
        logger.info("model %s (%s) on %s in %s: %d KV blocks of %d tokens, max_model_len %d",
                    config.model, self.model_config.architecture, self.device, self.dtype, self.num_blocks,
                    config.block_size, self.max_model_len)

    def cache_spec(self) -> CacheSpec:
        return CacheSpec(
            num_blocks=self.num_blocks,
            block_size=self.config.block_size,
            max_model_len=self.max_model_len,
            vocab_size=self.model_config.vocab_size,
            eos_token_ids=list(self.model_config.eos_token_ids),
            model_name=os.path.basename(os.path.normpath(self.config.model)),
        )

    @property
    def num_requests(self) -> int:
        return len(self.input_batch.requests)

    def reset(self) -> None:
        """Forget every request (e.g. when a new scheduler connects); the cache contents become garbage."""
        self.input_batch.requests.clear()

    def execute(self, plan: StepPlan) -> StepResult:
        """Run one step. Raises InvalidArgument/FailedPrecondition (state unchanged) for a bad plan.

        Any other exception (e.g. out of memory) leaves request state undefined: `reset` and have
        the scheduler resend its requests.
        """
        scheduled = self.input_batch.update(plan)
        result = StepResult(step_id=plan.step_id)
        if not scheduled:
            return result
        inputs = self.input_batch.prepare(scheduled, self.device)
        out = self._forward_and_sample(inputs)
        rows = zip(inputs.sampling_requests, out.token_ids, out.logprobs, out.top_logprobs, strict=True)
        result.sampled = [SampledToken(st.request_id, token_id, logprob, top)
                          for st, token_id, logprob, top in rows]
        self.input_batch.commit(scheduled, {s.request_id: s.token_id for s in result.sampled})
        return result

    @torch.inference_mode()
    def _forward_and_sample(self, inputs: ModelInputs) -> SamplerOutput:
        hidden = self.model(inputs.input_ids, inputs.positions, inputs.metadata)  # [T, H]
        requests = inputs.sampling_requests
        if not requests:
            return SamplerOutput(token_ids=[], logprobs=[], top_logprobs=[])
        logits = self.model.compute_logits(hidden[inputs.logits_indices])  # [S, V]
        batch = SamplingBatch.build(
            [st.sampling for st in requests], [st.prompt_token_ids for st in requests],
            [st.output_token_ids for st in requests], self.model_config.eos_token_ids,
            self.model_config.vocab_size, self.device)
        return sample(logits, batch)

    def _size_kv_cache(self) -> int:
        """Blocks to allocate: fixed, from the CPU budget, or (CUDA) what is left after a profile run."""
        free_bytes = self.config.kv_cache_memory_bytes
        if self.device.type == "cuda":
            activation_peak = self.profile_run()
            free_bytes = cuda_free_bytes_for_kv(self.config, self.device, activation_peak)
            logger.info("profile run: activation peak %.2f GiB, %.2f GiB left for the KV cache",
                        activation_peak / 2**30, free_bytes / 2**30)
        return num_blocks_for(self.config, self.model_config, free_bytes, self.dtype, self.max_model_len)

    def profile_run(self) -> int:
        """Peak bytes (CUDA) allocated beyond what stays resident, over one worst-case step:
        `max_num_batched_tokens` tokens of prefill in sequences of at most `max_model_len`, their
        logits and a sampling pass, against a temporary cache just large enough for it."""
        bs = self.config.block_size
        num_tokens = self.config.max_num_batched_tokens
        lens = [min(self.max_model_len, num_tokens - start)
                for start in range(0, num_tokens, self.max_model_len)]
        states, next_block = [], 0
        for i, n in enumerate(lens):
            num_blocks = -(-n // bs)
            states.append(RequestState(f"profile-{i}", [0] * n, [], SamplingParams(temperature=0.0),
                                       list(range(next_block, next_block + num_blocks)), 0))
            next_block += num_blocks
        cache = allocate_kv_cache(self.model_config, next_block, bs, self.dtype, self.device)
        bind_kv_cache(self.model, cache)
        batch = InputBatch(bs, next_block, self.max_model_len, num_tokens, self.model_config.vocab_size)
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        baseline = torch.cuda.memory_allocated(self.device) if on_cuda else 0
        inputs = batch.prepare([(st, len(st.prompt_token_ids)) for st in states], self.device)
        self._forward_and_sample(inputs)
        peak = 0
        if on_cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - baseline
        bind_kv_cache(self.model, self.kv_cache)
        del cache
        if on_cuda:
            torch.cuda.empty_cache()
        return peak
