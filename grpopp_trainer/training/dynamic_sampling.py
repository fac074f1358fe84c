"""Filling a step's batch with groups that carry signal, without waste (``BatchFiller``).

DAPO's dynamic sampling (arXiv 2503.14476, sec. 3.2) drops groups whose rewards are all equal and
generates again until the batch is full. Its recipe, and verl's ``filter_groups``, generate a fixed
multiple of the prompts a step needs and throw the groups with signal beyond the batch away: at a
zero-variance rate of 13% with 2x oversampling, more than a third of all generation. Here:

1. Quotas: each environment's share of the step's prompts comes from the mixture
   (``Mixture.quotas``), exact over the trained prompts; carried groups count toward their
   environment's quota.
2. Carried groups fill the quotas first, oldest first. A group generated more than
   ``max_staleness`` steps ago is dropped and counted.
3. Each round asks an environment for ceil(missing / (1 - p)) prompts, where p is its running
   estimate of the zero-variance fraction (an exponential average over rounds with weight
   ``estimate_weight`` for the newest, clamped to [0, ``max_estimate``]), or, if more, the fewest
   n for which n groups hold ``missing`` with signal with probability ``fill_probability``
   (Binomial(n, 1 - p)): a second round costs a whole generation's latency, while the surplus of
   the first is carried and shortens the next step's. At most ``oversample_factor`` x missing.
   While p = 0 a round asks for exactly what is missing. ``adaptive=False`` always asks for
   ``oversample_factor`` x missing (DAPO's recipe).
4. Groups with signal beyond the quota are carried to the next step (``max_staleness`` >= 1) with
   the learner's log-probs at generation time (pi_old), so their ratio pi / pi_old, and the TIS
   weight pi_old / pi_sampler, are those of the policy that generated them.

The filler holds no model: the trainer gives it ``generate`` (tasks of the requested environments,
generated and scored) and ``old_logprobs`` (the learner's log-probs of groups to carry).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from grpopp.objective.algorithms import DynamicSamplingConfig
from grpopp.rollout.groups import Group

OldLogprobs = list[list[float]]
"""Per completion of a group, [G][T_i]: the learner's log-probs when the group was generated."""


@dataclass
class CarriedGroup:
    """A group with signal generated beyond its step's batch, waiting for a later one."""

    group: Group
    old_logprobs: OldLogprobs
    step: int
    """The training step that generated it (its policy's weights are those before that step's update)."""


@dataclass
class Batch:
    """The groups one step trains on, and what filling the batch took."""

    groups: list[Group] = field(default_factory=list)
    old_logprobs: list[OldLogprobs | None] = field(default_factory=list)
    """Per group: the stored pi_old of a carried group; None for one generated this step."""
    staleness: list[int] = field(default_factory=list)
    """Per group: steps since it was generated (0 for this step's)."""
    generated: list[Group] = field(default_factory=list)
    """Every group generated this step, trained or not."""
    rounds: int = 0
    groups_without_signal: int = 0
    carried_in: int = 0
    """Groups from earlier steps trained in this batch."""
    carried_out: int = 0
    """Groups with signal beyond this batch, kept for the next steps."""
    dropped_stale: int = 0
    """Carried groups older than ``max_staleness`` steps, dropped."""
    wasted: int = 0
    """Groups with signal neither trained nor carried (surplus when ``max_staleness`` = 0)."""


def _fills_with(missing: int, p: float, probability: float, most: int) -> int:
    """The fewest n <= ``most`` for which P(Binomial(n, 1 - p) >= missing) >= ``probability``: n groups,
    each without signal with probability p, hold ``missing`` with signal (``most`` if none does)."""
    for n in range(missing, most + 1):
        filled = sum(math.comb(n, k) * (1 - p) ** k * p ** (n - k) for k in range(missing, n + 1))
        if filled >= probability:
            return n
    return most


class BatchFiller:
    """Dynamic sampling's state across steps: the estimates p per environment and the carried groups."""

    def __init__(self, config: DynamicSamplingConfig, env_names: Sequence[str]) -> None:
        self.config = config
        self.estimates: dict[str, float] = dict.fromkeys(env_names, 0.0)
        """p per environment: the running estimate of its fraction of groups without signal."""
        self.carried: list[CarriedGroup] = []

    def request(self, env: str, missing: int) -> int:
        """Prompts to generate for ``missing`` groups with signal of environment ``env`` (3. above)."""
        if missing <= 0 or not self.config.enabled:
            return max(missing, 0)
        most = math.ceil(missing * self.config.oversample_factor - 1e-9)
        if not self.config.adaptive:
            return most
        p = min(max(self.estimates[env], 0.0), self.config.max_estimate)
        expected = math.ceil(missing / (1.0 - p) - 1e-9)
        return min(max(expected, _fills_with(missing, p, self.config.fill_probability, most)), most)

    def observe(self, env: str, generated: int, without_signal: int) -> None:
        """Update environment ``env``'s estimate with one round's ``generated`` groups."""
        if generated > 0:
            weight = self.config.estimate_weight
            self.estimates[env] = (1 - weight) * self.estimates[env] + weight * without_signal / generated

    def fill(
        self,
        step: int,
        quotas: dict[str, int],
        generate: Callable[[int, dict[str, int]], list[Group]],
        has_signal: Callable[[Group], bool],
        old_logprobs: Callable[[list[Group]], list[OldLogprobs]],
    ) -> Batch:
        """The batch of training step ``step``: ``quotas`` groups per environment (1.-4. above).
        ``generate(round, counts)`` returns scored groups of ``counts`` prompts per environment;
        ``old_logprobs(groups)`` the learner's log-probs of groups to carry."""
        batch = Batch()
        taken = dict.fromkeys(quotas, 0)
        self._take_carried(step, quotas, taken, batch)
        rounds = self.config.max_generation_rounds if self.config.enabled else 1
        surplus: list[Group] = []
        while batch.rounds < rounds and any(taken[env] < quota for env, quota in quotas.items()):
            counts = {env: self.request(env, quota - taken[env]) for env, quota in quotas.items()}
            counts = {env: count for env, count in counts.items() if count > 0}
            groups = generate(batch.rounds, counts)
            batch.rounds += 1
            batch.generated += groups
            signal = [has_signal(group) for group in groups]
            for env in counts:
                of_env = [kept for group, kept in zip(groups, signal, strict=True) if group.task.env == env]
                batch.groups_without_signal += of_env.count(False)
                if self.config.enabled:
                    self.observe(env, len(of_env), of_env.count(False))
            for group, kept in zip(groups, signal, strict=True):
                if self.config.enabled and not kept:
                    continue
                if taken[group.task.env] < quotas[group.task.env]:
                    taken[group.task.env] += 1
                    batch.groups.append(group)
                    batch.old_logprobs.append(None)
                    batch.staleness.append(0)
                else:
                    surplus.append(group)
        self._carry(step, surplus, old_logprobs, batch)
        return batch

    def _take_carried(self, step: int, quotas: dict[str, int], taken: dict[str, int], batch: Batch) -> None:
        """2.: carried groups into their environment's quota, oldest first; too old ones dropped."""
        waiting = []
        for carried in sorted(self.carried, key=lambda item: item.step):
            env = carried.group.task.env
            if step - carried.step > self.config.max_staleness:
                batch.dropped_stale += 1
            elif env in quotas and taken[env] < quotas[env]:
                taken[env] += 1
                batch.groups.append(carried.group)
                batch.old_logprobs.append(carried.old_logprobs)
                batch.staleness.append(step - carried.step)
                batch.carried_in += 1
            else:
                waiting.append(carried)
        self.carried = waiting

    def _carry(
        self, step: int, surplus: list[Group], old_logprobs: Callable[[list[Group]], list[OldLogprobs]], batch: Batch
    ) -> None:
        """4.: surplus groups with signal kept for the next steps, with their pi_old."""
        if not surplus:
            return
        if self.config.max_staleness == 0:
            batch.wasted += len(surplus)
            return
        stored = old_logprobs(surplus)
        self.carried += [CarriedGroup(group, logprobs, step) for group, logprobs in zip(surplus, stored, strict=True)]
        batch.carried_out += len(surplus)

    def state_dict(self) -> dict[str, Any]:
        return {"estimates": dict(self.estimates), "carried": list(self.carried)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.estimates.update(state["estimates"])
        self.carried = list(state["carried"])
