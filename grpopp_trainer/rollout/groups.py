"""Scored rollouts: each prompt's G completions with the rewards its environment gave them.

``score_groups`` verifies and shapes completions batched per environment (``Environment.score_batch``),
the one path training and evaluation share. A reward that is not a finite number (NaN or inf from a
verifier or a shaping component) becomes status "error" there, so such a sample is masked like any the
verifier could not judge and never reaches the advantages.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from grpopp.envs.base import Environment, Message, Task
from grpopp.envs.multiturn import MultiTurnEnv
from grpopp.objective.advantages import zero_variance_groups
from grpopp.rewards.shaping import LengthLimits, compose_reward, finite_or_error
from grpopp.rewards.types import Reward, VerifyResult
from grpopp.rollout.base import Completion


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
        slot_tasks = [tasks[i] for i, _ in slots]
        slot_completions = [completions[i][j] for i, j in slots]
        lengths = [c.model_tokens for c in slot_completions]
        if isinstance(env, MultiTurnEnv):
            scored = env.score_episodes(slot_tasks, [transcript(c) for c in slot_completions], lengths, limits)
            scored = [_env_error(env, c, limits) or reward for c, reward in zip(slot_completions, scored, strict=True)]
        else:
            scored = env.score_batch(slot_tasks, [c.text for c in slot_completions], lengths, limits)
        rewards.update(zip(slots, (finite_or_error(reward) for reward in scored), strict=True))
    return [
        Group(task, [Sample(c, rewards[(i, j)]) for j, c in enumerate(completions[i])]) for i, task in enumerate(tasks)
    ]


def transcript(completion: Completion) -> list[Message]:
    """An episode's messages after the prompt; a single turn's is its one assistant message."""
    if completion.messages is not None:
        return list(completion.messages)
    return [Message(role="assistant", content=completion.text)]


def _env_error(env: MultiTurnEnv[Any], completion: Completion, limits: LengthLimits) -> Reward | None:
    """The reward of an episode the environment failed in (status error: masked), else None."""
    episode = completion.episode
    if episode is None or episode.ended != "env_error":
        return None
    verdict = VerifyResult.error(episode.error or "the environment failed", env.name)
    return compose_reward(
        verdict, completion.text, completion.model_tokens, env.config.reward, env.episode_limits(limits)
    )
