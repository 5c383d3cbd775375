"""An in-process stand-in for a worker: follows the step contract and samples token
(previous token + 1) % vocab, so outputs are predictable."""
from __future__ import annotations

import asyncio

from services.common.step import CacheSpec, SampledToken, StepPlan, StepResult


class FakeWorker:
    def __init__(self, num_blocks=64, block_size=4, max_model_len=256, vocab_size=100, eos=(0,)):
        self.spec = CacheSpec(num_blocks, block_size, max_model_len, vocab_size, list(eos), "fake")
        self.tokens: dict[str, list[int]] = {}
        self.computed: dict[str, int] = {}
        self.gate: asyncio.Event | None = None  # when set to an unset Event, steps block on it
        self.fail_next = False
        self.num_steps = 0
        self.num_inits = 0

    async def init(self) -> CacheSpec:
        self.num_inits += 1
        self.tokens.clear()
        self.computed.clear()
        return self.spec

    async def step(self, plan: StepPlan) -> StepResult:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("injected worker failure")
        self.num_steps += 1
        for rid in plan.finished_request_ids:
            self.tokens.pop(rid, None)
            self.computed.pop(rid, None)
        for new in plan.new_requests:
            self.tokens[new.request_id] = new.prompt_token_ids + new.output_token_ids
            self.computed[new.request_id] = new.num_computed_tokens
        for cached in plan.cached_requests:
            assert self.computed[cached.request_id] == cached.num_computed_tokens
        sampled = []
        for rid, n in plan.num_scheduled_tokens.items():
            self.computed[rid] += n
            tokens = self.tokens[rid]
            assert self.computed[rid] <= len(tokens)
            if self.computed[rid] == len(tokens):
                token = (tokens[-1] + 1) % self.spec.vocab_size
                tokens.append(token)
                sampled.append(SampledToken(rid, token))
        await asyncio.sleep(0)
        return StepResult(plan.step_id, sampled)
