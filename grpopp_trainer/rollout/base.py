"""The rollout protocol: prompts in; token ids, text, per-token sampler log-probs and finish reason out.

Every engine (``hf`` on CPU or GPU, ``vllm`` on GPU) implements ``RolloutEngine``. The trainer never
imports an engine's backend itself, so vLLM is needed only when ``rollout.engine == "vllm"``.

The sampler's log-probs are those of the distribution the token was actually drawn from (after
temperature, top-k and top-p); they feed truncated importance sampling (TIS), which corrects for
the gap between the sampler and the learner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias

from pydantic import BaseModel, ConfigDict, Field

from envs.base import Message

Prompt: TypeAlias = "str | list[Message]"
FinishReason: TypeAlias = Literal["stop", "length"]


class SamplingParams(BaseModel):
    """How completions are sampled."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_new_tokens: int = Field(256, ge=1)
    """Maximum number of generated tokens per completion (DAPO's L_max)."""

    temperature: float = Field(1.0, ge=0.0)
    """Sampling temperature; 0 means greedy decoding."""

    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""

    top_k: int = Field(0, ge=0)
    """Keep only the top_k most likely tokens; 0 disables it."""

    stop: tuple[str, ...] = ()
    """Stop strings: generation of a completion ends after the first one it produces (kept in the text)."""

    seed: int | None = None
    """Seed of the sampler for this call; None leaves the engine's generator as it is."""


@dataclass(frozen=True)
class Completion:
    """One sampled completion of one prompt."""

    prompt_ids: list[int]
    """The prompt's token ids as the engine tokenised it (chat template applied)."""

    token_ids: list[int]
    """Generated token ids, [T_i], up to and including EOS or the token that completed a stop string."""

    text: str
    """Decoded completion (special tokens removed)."""

    logprobs: list[float]
    """Sampler log-probability of each generated token, [T_i], under the distribution it was drawn from."""

    finish_reason: FinishReason
    """"stop": EOS or a stop string; "length": cut at max_new_tokens (truncated)."""


class RolloutEngine(Protocol):
    """What the trainer needs from a generation backend."""

    def generate(self, prompts: list[Prompt], params: SamplingParams, n: int = 1) -> list[list[Completion]]:
        """``n`` completions for each prompt: result[i][j] is completion j of prompts[i]."""
        ...

    def sync_weights(self) -> None:
        """Make the engine sample from the trainer's current weights (after an optimizer step)."""
        ...
