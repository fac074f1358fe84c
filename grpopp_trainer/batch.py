"""Rollout batches: groups of scored completions, DAPO's filters, and the tensors the loss needs.

A ``Group`` is one prompt with its G completions, each verified and shaped by its environment
(``Environment.score_batch``, the same path evaluation uses). A reward that is not a finite number
(NaN or inf from a verifier or a shaping component) becomes status "error" there, so such a sample
is masked like any the verifier could not judge and never reaches the advantages. Here live the pieces of a training
step that are pure bookkeeping: scoring per environment, which samples are valid (the verifier
could judge them), which groups carry signal (dynamic sampling), which samples are masked by
overlong filtering, and the padded tensors handed to the loss.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from envs.base import Environment, Task
from grpopp_trainer.advantages import zero_variance_groups
from grpopp_trainer.rollout.base import Completion
from rewards.shaping import LengthLimits, finite_or_error
from rewards.types import Reward


@dataclass
class Sample:
    """One completion with its reward."""

    completion: Completion
    reward: Reward

    @property
    def truncated(self) -> bool:
        return self.completion.finish_reason == "length"

    @property
    def correct(self) -> bool:
        return self.reward.status == "correct"


@dataclass
class Group:
    """One prompt and its G scored completions."""

    task: Task
    samples: list[Sample]

    @property
    def rewards(self) -> torch.Tensor:
        """[G] total rewards; NaN where the reward is not valid (never used there)."""
        return torch.tensor([s.reward.total if s.reward.valid else float("nan") for s in self.samples])

    @property
    def valid(self) -> torch.Tensor:
        """[G] bool: the verifier could judge the sample."""
        return torch.tensor([s.reward.valid for s in self.samples])

    def has_signal(self, filter_truncated: bool = False) -> bool:
        """Not all rewards of the samples that will be trained on equal (and at least two of them):
        the group gives a gradient. With overlong filtering, truncated samples do not count."""
        trained = self.valid & ~torch.tensor([s.truncated for s in self.samples]) if filter_truncated else self.valid
        return not bool(zero_variance_groups(self.rewards, len(self.samples), trained)[0])


@dataclass
class CollectStats:
    """What happened while filling one step's batch."""

    rounds: int = 0
    generated: list[Group] = field(default_factory=list)
    """Every group generated this step, kept or dropped (rewards and accuracy are measured on these)."""
    groups_without_signal: int = 0
    statuses: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    generated_tokens: int = 0
    generation_seconds: float = 0.0
    scoring_seconds: float = 0.0


def score_groups(
    tasks: Sequence[Task],
    completions: Sequence[Sequence[Completion]],
    envs: dict[str, Environment[Any]],
    limits: LengthLimits,
) -> list[Group]:
    """Verify and shape every completion with its task's environment, batched per environment. A
    reward whose total or a component is not finite is made an "error" (``finite_or_error``): an
    environment may override ``score_batch`` and bypass ``compose_reward``'s own check."""
    by_env: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, task in enumerate(tasks):
        by_env[task.env].extend((i, j) for j in range(len(completions[i])))
    rewards: dict[tuple[int, int], Reward] = {}
    for env_name, slots in by_env.items():
        env = envs[env_name]
        scored = env.score_batch(
            [tasks[i] for i, _ in slots],
            [completions[i][j].text for i, j in slots],
            [len(completions[i][j].token_ids) for i, j in slots],
            limits,
        )
        rewards.update(zip(slots, (finite_or_error(reward) for reward in scored), strict=True))
    return [
        Group(task, [Sample(c, rewards[(i, j)]) for j, c in enumerate(completions[i])]) for i, task in enumerate(tasks)
    ]


@dataclass
class TrainTensors:
    """Per-completion tensors of a rollout batch, in group order (completion k of group g at g x G + k)."""

    prompts: list[list[int]]
    completions: list[list[int]]
    sampler_logprobs: list[list[float]]
    rewards: torch.Tensor  # [N] total reward, NaN where invalid
    valid: torch.Tensor  # [N] bool: the verifier could judge
    trained: torch.Tensor  # [N] bool: counts in the loss (valid, and not filtered as overlong)


def to_tensors(groups: Sequence[Group], filter_truncated: bool) -> TrainTensors:
    """Flatten groups for the loss. Invalid samples (timeout, error) never count; truncated ones do not
    either when DAPO's overlong filtering is on (they still take part in their group's statistics)."""
    samples = [s for g in groups for s in g.samples]
    valid = torch.tensor([s.reward.valid for s in samples])
    truncated = torch.tensor([s.truncated for s in samples])
    return TrainTensors(
        prompts=[s.completion.prompt_ids for s in samples],
        completions=[s.completion.token_ids for s in samples],
        sampler_logprobs=[s.completion.logprobs for s in samples],
        rewards=torch.cat([g.rewards for g in groups]).double(),
        valid=valid,
        trained=valid & ~truncated if filter_truncated else valid,
    )


def pad(rows: Sequence[Sequence[float] | torch.Tensor], length: int, device: torch.device) -> torch.Tensor:
    """Right-pad rows of per-token values (lists or 1-D tensors) to [B, length] with zeros."""
    out = torch.zeros(len(rows), length, dtype=torch.float32, device=device)
    for i, row in enumerate(rows):
        if len(row):
            out[i, : len(row)] = torch.as_tensor(row, dtype=torch.float32, device=device)
    return out
