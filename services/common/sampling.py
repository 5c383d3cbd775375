"""Sampling parameters: one plain dataclass that every service speaks (protobuf stops at servicers)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    """How to pick each next token and when to stop. Defaults mean "plain sampling, no limits"."""

    temperature: float = 1.0  # 0 means greedy (argmax)
    top_p: float = 1.0  # nucleus mass kept, in (0, 1]
    top_k: int = 0  # keep the k most likely tokens; 0 keeps all
    min_p: float = 0.0  # drop tokens whose probability is below min_p * max probability
    repetition_penalty: float = 1.0  # >1 discourages tokens seen in prompt or output (CTRL-style)
    frequency_penalty: float = 0.0  # subtracted from logits once per earlier occurrence in the output
    presence_penalty: float = 0.0  # subtracted from logits once if the token occurs in the output
    seed: int | None = None  # per-request seed: the same seed gives the same sampled output
    max_tokens: int = 16  # most tokens to generate
    min_tokens: int = 0  # EOS and stop ids are suppressed until this many tokens exist
    stop: list[str] = field(default_factory=list)  # stop strings (matched by the tokenizer service)
    stop_token_ids: list[int] = field(default_factory=list)  # extra ids that end generation
    ignore_eos: bool = False  # keep generating past EOS (benchmarks)
    logprobs: int | None = None  # None: no logprobs; 0: the sampled token's; n: also the top n

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_penalties(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0
                or self.presence_penalty != 0.0)
