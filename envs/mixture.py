"""Weighted mixtures of environments with exact proportions.

``--env gsm8k:0.7 --env countdown:0.3`` gives 7 gsm8k prompts and 3 countdown prompts in every 10,
not a coin flip per prompt: each slot goes to the environment furthest below its share so far
(smooth weighted round-robin), so after n prompts every environment has had floor or ceil of
weight x n of them, within every batch and across batches. Deterministic: the order depends only on
the weights, and each environment's tasks come from its own cursor (finite data sets are visited
in a fresh seeded permutation every epoch). The cursors are the mixture's state, saved with
checkpoints so a resumed run sees the same prompts.

``select_envs`` is how ``--env NAME[:WEIGHT]`` flags meet a config file, for training and evaluation
alike: the flags choose the environments (and their weights), the file keeps supplying each one's
options; a name the file does not hold gets its defaults, with a note that says so.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from grpopp.config_tools import ConfigError
from grpopp.envs.base import Environment, Split, Task


class EnvSpec(BaseModel):
    """One environment of a mixture, as written in a config file or with ``--env NAME[:WEIGHT]``."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str
    """Registered environment name, e.g. "gsm8k" or "reasoning_gym:chain_sum"."""

    weight: float = Field(1.0, gt=0.0, allow_inf_nan=False)
    """Relative share of prompts; weights are normalised over the mixture."""

    config: dict[str, Any] = {}
    """Options of the environment (its pydantic config), including its reward shaping."""


def parse_env_arg(text: str) -> EnvSpec:
    """Parse ``NAME[:WEIGHT]``; the weight is the last ':'-part when it is a number, so family names
    such as ``reasoning_gym:chain_sum:0.5`` work."""
    name, weight = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep:
        try:
            weight = float(tail)
            name = head
        except ValueError:
            pass
    if not name:
        raise ConfigError(f"--env {text!r}: give an environment name, e.g. --env gsm8k:0.7")
    if not (math.isfinite(weight) and weight > 0):
        raise ConfigError(f"--env {text!r}: the weight must be a positive number, got {weight}")
    return EnvSpec(name=name, weight=weight)


@dataclass(frozen=True)
class EnvSelection:
    """The environments ``--env`` flags chose, with their options, and what to tell the user."""

    specs: list[EnvSpec]
    """One per flag, in flag order: name and weight from the flag, options from the config file."""
    notes: list[str]
    """One line per environment the config file does not hold (it runs with its default options)."""


def select_envs(configured: Sequence[EnvSpec], requested: Sequence[EnvSpec]) -> EnvSelection:
    """The environments ``requested`` on the command line, each with the options ``configured`` (the
    config file's list) gives it: ``--env arithmetic:0.5`` on a file that configures arithmetic keeps
    that configuration (prompt format, verifier, shaping) and only sets the weight. Options a request
    carries itself are merged over the file's. Environments of the file that are not requested are
    left out. A name the file does not hold gets its default options and a note."""
    known = {spec.name: spec for spec in configured}
    specs, notes = [], []
    for request in requested:
        base = known.get(request.name)
        if base is None:
            notes.append(f"--env {request.name}: not in the config file: using its default options")
            specs.append(request)
        else:
            specs.append(EnvSpec(name=request.name, weight=request.weight, config={**base.config, **request.config}))
    return EnvSelection(specs, notes)


def build_mixture(specs: Sequence[EnvSpec], seed: int = 0, split: Split = "train") -> Mixture:
    """Build each environment of ``specs`` with its own config (``make_env``) and mix them."""
    from grpopp.envs.registry import make_env  # the registry imports the built-ins, which import this module's deps

    envs = [make_env(spec.name, **spec.config) for spec in specs]
    return Mixture(envs, [spec.weight for spec in specs], seed=seed, split=split)


class Mixture:
    """Draws batches of tasks from several environments in exact proportion to their weights."""

    def __init__(
        self, envs: Sequence[Environment[Any]], weights: Sequence[float], seed: int = 0, split: Split = "train"
    ) -> None:
        if not envs:
            raise ConfigError("the mixture has no environment: add at least one --env NAME")
        if len(envs) != len(weights):
            raise ValueError(f"{len(envs)} environments but {len(weights)} weights")
        names = [env.name for env in envs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"environment {duplicates[0]!r} appears twice in the mixture; list it once")
        total = float(sum(weights))
        self.envs = list(envs)
        self.shares = [w / total for w in weights]
        self.seed = seed
        self.split = split
        self.drawn = 0
        """Prompts drawn so far, all environments together."""
        self.taken = [0] * len(envs)
        """Slots given to each environment so far (its quota tally)."""
        self.cursors = [0] * len(envs)
        """Tasks drawn so far from each environment: where its stream continues. Equal to ``taken``
        unless ``draw`` took more than the quotas (dynamic sampling's extra prompts)."""
        self._permutations: dict[tuple[int, int], list[int]] = {}

    def quotas(self, num_prompts: int) -> list[int]:
        """The environment of each of the next ``num_prompts`` slots, in exact proportion to the
        weights over all slots so far (advances the tally, draws no task)."""
        chosen_envs = []
        for _ in range(num_prompts):
            self.drawn += 1
            deficits = [share * self.drawn - taken for share, taken in zip(self.shares, self.taken, strict=True)]
            chosen = max(range(len(deficits)), key=lambda i: (deficits[i], -i))
            chosen_envs.append(chosen)
            self.taken[chosen] += 1
        return chosen_envs

    def draw(self, env_index: int, count: int) -> list[Task]:
        """The next ``count`` tasks of one environment's stream (advances its cursor)."""
        start = self.cursors[env_index]
        self.cursors[env_index] += count
        env = self.envs[env_index]
        return [env.task(self._task_index(env_index, cursor), self.split) for cursor in range(start, start + count)]

    def allocate(self, num_prompts: int) -> list[tuple[int, int]]:
        """(environment, cursor) of each of the next ``num_prompts`` slots (advances the state)."""
        slots = []
        for env_index in self.quotas(num_prompts):
            slots.append((env_index, self.cursors[env_index]))
            self.cursors[env_index] += 1
        return slots

    def next_batch(self, num_prompts: int) -> list[Task]:
        """The next ``num_prompts`` tasks of the stream."""
        return [
            self.envs[env_index].task(self._task_index(env_index, cursor), self.split)
            for env_index, cursor in self.allocate(num_prompts)
        ]

    def _task_index(self, env_index: int, cursor: int) -> int:
        size = self.envs[env_index].num_tasks(self.split)
        if size is None:
            return cursor  # unbounded procedural stream: task i is already a fresh random task
        epoch, position = divmod(cursor, size)
        key = (env_index, epoch)
        if key not in self._permutations:
            self._permutations = {k: v for k, v in self._permutations.items() if k[0] != env_index}
            permutation = list(range(size))
            random.Random(f"mixture|{self.seed}|{self.envs[env_index].name}|{epoch}").shuffle(permutation)
            self._permutations[key] = permutation
        return self._permutations[key][position]

    def state_dict(self) -> dict[str, Any]:
        names = [env.name for env in self.envs]
        return {
            "drawn": self.drawn,
            "taken": dict(zip(names, self.taken, strict=True)),
            "cursors": dict(zip(names, self.cursors, strict=True)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = [env.name for env in self.envs]
        if sorted(state["taken"]) != sorted(names):
            raise ConfigError(
                f"cannot resume: the checkpoint's mixture has {sorted(state['taken'])}, this run has {sorted(names)}"
            )
        self.drawn = int(state["drawn"])
        self.taken = [int(state["taken"][name]) for name in names]
        cursors = state.get("cursors", state["taken"])  # checkpoints before cursors: they were the tally
        self.cursors = [int(cursors[name]) for name in names]
