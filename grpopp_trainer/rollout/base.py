"""The rollout protocol: prompts in; token ids, text, per-token sampler log-probs and finish reason out.

Every engine (``hf`` on CPU or GPU, ``vllm`` on a GPU or vLLM's CPU platform) implements
``RolloutEngine`` and is built by its config (a member of ``grpopp.rollout.config.EngineConfig``)
from an ``EngineContext``. The trainer never imports an engine's backend itself, so vLLM is needed
only when ``rollout.engine.type`` is "vllm".

The sampler's log-probs are those of the distribution the token was actually drawn from (after
temperature, top-k and top-p); they feed truncated importance sampling (TIS), which corrects for
the gap between the sampler and the learner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

from pydantic import BaseModel, ConfigDict, Field

from grpopp.envs.base import Message

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

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

    def for_rank(self, rank: int) -> SamplingParams:
        """These parameters on rank ``rank`` of a torchrun job: the seed offset by the rank, so ranks
        never draw the same samples (rank 0, hence a single process, keeps the seed)."""
        return self if self.seed is None or rank == 0 else self.model_copy(update={"seed": self.seed + rank})


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
    """"stop": EOS or a stop string; "length": cut at max_new_tokens (truncated). An episode: "length"
    when its last turn was cut or it reached its token budget."""

    model_mask: list[bool] | None = None
    """An episode (``grpopp.rollout.episodes``): per token of ``token_ids``, True where the model
    sampled it, False for the environment's messages (never trained; log-prob 0 there). None: every
    token was sampled (a single turn)."""

    messages: list[Message] | None = None
    """An episode's transcript after the prompt: assistant turns and the environment's messages."""

    episode: EpisodeStats | None = None
    """What an episode took; None for a single turn."""

    @property
    def model_tokens(self) -> int:
        """Tokens the model sampled (what length limits and penalties measure)."""
        return len(self.token_ids) if self.model_mask is None else sum(self.model_mask)


EpisodeEnd: TypeAlias = Literal["done", "max_turns", "max_tokens", "env_error"]


@dataclass(frozen=True)
class EpisodeStats:
    """How one episode went."""

    turns: int
    """Assistant turns."""
    ended: EpisodeEnd
    """done: the environment ended it; max_turns / max_tokens: a limit did; env_error: the
    environment failed (``respond`` raised or overran its timeout), so the sample is masked."""
    tool_calls: int = 0
    tool_errors: int = 0
    env_seconds: float = 0.0
    """Wall-clock seconds in the environment's ``respond``."""
    error: str | None = None
    """Why the environment failed (``ended`` = env_error)."""


class RolloutEngine(Protocol):
    """What the trainer needs from a generation backend."""

    samples_from_policy: bool
    """True when the engine decodes with the trainer's policy module itself (``hf``): under FSDP its
    parameters are then unsharded while it generates. False when it holds its own copy (``vllm``)."""

    tokenizer: PreTrainedTokenizerBase
    """The tokenizer of the sampled ids (episodes encode their prompts and messages with it)."""

    def generate(self, prompts: list[Prompt], params: SamplingParams, n: int = 1) -> list[list[Completion]]:
        """``n`` completions for each prompt: result[i][j] is completion j of prompts[i]."""
        ...

    def generate_ids(self, rows: list[list[int]], params: SamplingParams) -> list[Completion]:
        """One completion continuing each row of token ids (an episode's next turn), taken as they are."""
        ...

    def sync_weights(self) -> None:
        """Make the engine sample from the trainer's current weights (after an optimizer step)."""
        ...

    def close(self) -> None:
        """Release what the engine holds (vLLM's engine and its process groups); called once, at the end."""
        ...


@dataclass(frozen=True)
class PolicyHandoff:
    """How an engine that holds its own copy of the model (vLLM) gets the policy's weights, when they
    are not simply the model's parameters: a LoRA policy (``grpopp.learner.lora.handoff``)."""

    weights: Callable[[torch.dtype | None], Iterator[tuple[str, torch.Tensor]]]
    """(name, whole tensor) of the model to run, cast to the dtype (the merged weights of a LoRA
    policy, under the base model's names); under torchrun a collective."""
    adapter_rank: int
    """The rank of the policy's LoRA adapters."""
    save_adapters: Callable[[Path], None]
    """Write the adapters alone to a folder in peft's format; under torchrun a collective."""


@dataclass(frozen=True)
class EngineContext:
    """What an engine config builds its engine over (``EngineConfig.build``)."""

    model: PreTrainedModel
    """The trainer's policy: the engine samples from it, or loads its weights after each step."""
    tokenizer: PreTrainedTokenizerBase
    source: str
    """The model folder or hub id the policy was read from (vLLM builds its own copy from it)."""
    dtype: str
    """The learner's compute dtype ("float32", "bfloat16", "float16")."""
    seed: int
    """This process's sampling seed (offset by the rank under torchrun)."""
    distributed: bool = False
    """Under torchrun: every rank builds its engine at the same time."""
    handoff: PolicyHandoff | None = None
    """A LoRA policy's weights and adapters for an engine with its own copy; None: the model's parameters."""


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    """Token ids of a prompt: plain text as the tokenizer encodes it, messages via the chat template.

    Every engine encodes prompts here, so the learner sees the very ids the sampler conditioned on.
    """
    if isinstance(prompt, str):
        ids = list(tokenizer.encode(prompt))
    else:
        if tokenizer.chat_template is None:
            raise ValueError(
                "the prompt is a list of chat messages but the tokenizer has no chat template; "
                "give plain-text prompts (e.g. set the environment's system_prompt to None) or "
                "use a tokenizer with a chat template (tokenizer.chat_template = '...')"
            )
        messages = [message.template_dict() for message in prompt]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if not isinstance(text, str):
            raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not str")
        ids = list(tokenizer.encode(text, add_special_tokens=False))  # the template holds BOS
    if not ids:
        raise ValueError(f"prompt {prompt!r} tokenises to no tokens; there is nothing to condition on")
    return ids


def distinct_rows(rows: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """(first, index) for token-id rows: ``first[u]`` is the first row holding distinct row u, and
    ``index[b]`` the distinct row that row b equals, so ``rows[b] == rows[first[index[b]]]``.

    The G completions of a group share their prompt; the engines and the learner run each distinct
    prompt once and copy its keys and values to the rows that continue it.
    """
    seen: dict[tuple[int, ...], int] = {}
    first: list[int] = []
    index: list[int] = []
    for b, row in enumerate(rows):
        key = tuple(row)
        if key not in seen:
            seen[key] = len(first)
            first.append(b)
        index.append(seen[key])
    return first, index
