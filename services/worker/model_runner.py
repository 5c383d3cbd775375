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
import time
from dataclasses import dataclass, field

import torch

from kernels import attention
from kernels.runtime import jit_watch
from kernels.sampling import argmax
from services.common.sampling import SamplingParams
from services.common.step import CacheSpec, SampledToken, StepPlan, StepResult
from services.worker import metrics
from services.worker.config import WorkerConfig, resolve_device, resolve_dtype, resolve_max_model_len
from services.worker.cuda_graphs import StepGraphs
from services.worker.input_batch import HostInputs, InputBatch, RequestState, host_to_device
from services.worker.kv_cache import (
    KVCache,
    allocate_kv_cache,
    bind_kv_cache,
    cuda_free_bytes_for_kv,
    num_blocks_for,
)
from services.worker.loader import load_model
from services.worker.model_config import ModelConfig
from services.worker.sampler import SampleTensors, SamplingBatch, sample, sample_tensors, to_output

logger = logging.getLogger(__name__)


@dataclass
class StepHandle:
    """A launched step: what its finish needs once the device is done."""

    step_id: int
    sampling_requests: list[RequestState] = field(default_factory=list)
    batch: SamplingBatch | None = None
    device_ids: torch.Tensor | None = None  # [S] sampled ids on the device (pending tokens)
    host: SampleTensors | None = None  # the same, being copied to the CPU
    event: torch.cuda.Event | None = None  # recorded after the step's last kernel (CUDA)
    start_event: torch.cuda.Event | None = None  # recorded before the step's first kernel (CUDA)
    result: StepResult | None = None  # set by finish


def _needs_history(sampling: SamplingParams) -> bool:
    """Sampling that reads the request's exact output so far (so pending tokens must be known)."""
    blocks_stops = sampling.min_tokens > 0 and (sampling.stop_token_ids or not sampling.ignore_eos)
    return sampling.needs_penalties or blocks_stops or (sampling.seed is not None and not sampling.greedy)


def _compiled_while_serving(description: str) -> None:
    metrics.JIT_COMPILES.inc()
    logger.warning("Triton is compiling a kernel variant after start-up (every request in the step waits): %s",
                   description[:3000])


class _PhaseClock:
    """Wall seconds of each start-up phase, for the log (start-up time is a deployment cost)."""

    def __init__(self):
        self.last = time.perf_counter()
        self.phases: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.phases.append((name, now - self.last))
        self.last = now

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.phases)


class ModelRunner:
    def __init__(self, config: WorkerConfig):
        self.config = config
        torch.manual_seed(config.seed)
        self.device = resolve_device(config)
        if self.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # Leave a core to the event loop: spinning OpenMP threads otherwise starve it (10x).
            torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) - 1)))
        elif self.device.type == "cuda" and "OMP_NUM_THREADS" not in os.environ:
            # The host side only builds small index tensors: intra-op threads would just spin
            # between them (a CUDA worker was seen burning four cores).
            torch.set_num_threads(1)
        self.model_config = ModelConfig.from_hf(config.model)
        self.dtype = resolve_dtype(config, self.model_config.torch_dtype, self.device)
        self.max_model_len = resolve_max_model_len(config, self.model_config)
        clock = _PhaseClock()
        self.model = load_model(config, self.model_config, self.device, self.dtype)
        clock.mark("load")
        self.kv_cache: KVCache | None = None
        self.graphs: StepGraphs | None = None
        self.num_blocks = self._size_kv_cache()
        clock.mark("profile")
        self.kv_cache = allocate_kv_cache(self.model_config, self.num_blocks, config.block_size, self.dtype,
                                          self.device)
        bind_kv_cache(self.model, self.kv_cache)
        self.input_batch = InputBatch(config.block_size, self.num_blocks, self.max_model_len,
                                      config.max_num_batched_tokens, self.model_config.vocab_size)
        self._inflight: list[StepHandle] = []  # launched, not yet finished, oldest first
        self._last_end_event: torch.cuda.Event | None = None  # end of the last finished step
        torch_backend = "torch" in (os.environ.get("SLUICE_ATTENTION_BACKEND"), os.environ.get("SLUICE_KERNELS"))
        if self.device.type == "cuda" and not config.enforce_eager and not torch_backend:
            self.graphs = StepGraphs(self.model, min(config.max_graph_batch_size, config.max_num_batched_tokens),
                                     min(config.max_graph_prefill_tokens, config.max_num_batched_tokens,
                                         self.max_model_len),
                                     -(-self.max_model_len // config.block_size), self.max_model_len, self.device)
            self.graphs.capture()
        if self.device.type == "cuda":  # no JIT compile mid-serving for a step shape not seen yet
            mc = self.model_config
            attention.warm_up(mc.num_attention_heads, mc.num_key_value_heads, mc.head_dim, config.block_size,
                              self.dtype, self.device)
            argmax.warm_up(mc.vocab_size, (torch.float32, self.dtype), self.device)  # the sampler's, the graphs'
            jit_watch.on_compile(_compiled_while_serving)
        clock.mark("kv cache + graphs")
        logger.info("start-up times: %s", clock)
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
        for handle in self._inflight:
            self.wait(handle)
        self._inflight.clear()
        self.input_batch.requests.clear()

    def execute(self, plan: StepPlan) -> StepResult:
        """Run one step to completion. Raises InvalidArgument/FailedPrecondition (state unchanged)
        for a bad plan. Any other exception (e.g. out of memory) leaves request state undefined:
        `reset` and have the scheduler resend its requests."""
        return self.finish(self.launch(plan))

    def launch(self, plan: StepPlan) -> StepHandle:
        """Queue one step's GPU work and return without waiting for it. A later step may be
        launched before this one is finished: its requests' newest tokens are read on the device."""
        scheduled = self.input_batch.update(plan)
        handle = StepHandle(plan.step_id)
        if not scheduled:
            return handle
        if any(_needs_history(st.sampling) and st.pending for st, _ in scheduled):
            for earlier in list(self._inflight):  # penalties/seeds/min_tokens count known tokens
                self.finish(earlier)
        inputs = self.input_batch.build(scheduled)
        if self.device.type == "cuda":  # after the host built the inputs: GPU time only, gaps are idle
            handle.start_event = torch.cuda.Event(enable_timing=True)
            handle.start_event.record()
        handle.sampling_requests = inputs.sampling_requests
        with torch.inference_mode():
            logits, greedy_ids = self._logits(inputs)
            if inputs.sampling_requests:
                requests = inputs.sampling_requests
                handle.batch = SamplingBatch.build(
                    [st.sampling for st in requests], [st.prompt_token_ids for st in requests],
                    [st.output_token_ids for st in requests], self.model_config.eos_token_ids,
                    self.model_config.vocab_size, self.device)
                tensors = sample_tensors(logits, handle.batch, greedy_ids)
                handle.device_ids = tensors.token_ids
                handle.host = tensors.to_host()
        if self.device.type == "cuda":
            handle.event = torch.cuda.Event(enable_timing=True)
            handle.event.record()
        self.input_batch.advance(scheduled, inputs.sampling_requests, handle.device_ids)
        self._inflight.append(handle)
        return handle

    @staticmethod
    def wait(handle: StepHandle) -> None:
        """Block until the step's GPU work is done (releases the GIL; callable from any thread)."""
        if handle.event is not None:
            handle.event.synchronize()

    def finish(self, handle: StepHandle) -> StepResult:
        """The step's sampled ids; its pending tokens become known. Idempotent."""
        if handle.result is not None:
            return handle.result
        self.wait(handle)
        result = StepResult(step_id=handle.step_id)
        if handle.sampling_requests:
            out = to_output(handle.host, handle.batch)
            self.input_batch.resolve(handle.sampling_requests, handle.device_ids, out.token_ids)
            rows = zip(handle.sampling_requests, out.token_ids, out.logprobs, out.top_logprobs, strict=True)
            result.sampled = [SampledToken(st.request_id, token_id, logprob, top)
                              for st, token_id, logprob, top in rows]
        if handle in self._inflight:
            self._inflight.remove(handle)
        handle.result = result
        self._record_gpu_timeline(handle)
        return result

    def _record_gpu_timeline(self, handle: StepHandle) -> None:
        """GPU busy time of this step and the idle gap since the previous step ended (zero when
        the step was queued before the device got there, which is what overlap is for)."""
        if handle.start_event is None:
            return
        metrics.GPU_STEP.observe(handle.start_event.elapsed_time(handle.event) / 1e3)
        previous = self._last_end_event
        if previous is not None:
            metrics.GPU_IDLE.observe(max(previous.elapsed_time(handle.start_event), 0.0) / 1e3)
        self._last_end_event = handle.event

    def _logits(self, inputs: HostInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits `[S, V]` of the sampling rows, their argmax `[S]` when it came for free).
        Decode batches and single-sequence prefills replay a CUDA graph when one fits; the graph
        also takes the argmax."""
        if self.graphs is not None and self.graphs.fits(inputs):
            logits, greedy_ids = self.graphs.run(inputs)  # decode: [B, V], [B]; prefill: [S, V], [S]
            if not inputs.is_decode or inputs.samples_every_row:
                return logits, greedy_ids
            rows = host_to_device(inputs.logits_indices, torch.int64, self.device)
            return logits[rows], greedy_ids[rows]
        device_inputs = inputs.to_device(self.device)
        hidden = self.model(device_inputs.input_ids, device_inputs.positions, device_inputs.metadata)  # [T, H]
        return self.model.compute_logits(hidden[device_inputs.logits_indices]), None  # [S, V]

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
        inputs = batch.build([(st, len(st.prompt_token_ids)) for st in states])
        with torch.inference_mode():
            logits, _ = self._logits(inputs)
            sample(logits, SamplingBatch.build(
                [st.sampling for st in states], [st.prompt_token_ids for st in states],
                [st.output_token_ids for st in states], self.model_config.eos_token_ids,
                self.model_config.vocab_size, self.device))
        peak = 0
        if on_cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - baseline
        bind_kv_cache(self.model, self.kv_cache)
        del cache
        if on_cuda:
            torch.cuda.empty_cache()
        return peak
