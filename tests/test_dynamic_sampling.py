"""Dynamic sampling that wastes nothing (grpopp.training.dynamic_sampling.BatchFiller).

The filler is driven here by stand-in generators whose groups carry signal by a rule the test
sets (a fixed rate, or a seeded coin), so the counts can be derived by hand:

- with a constant zero-variance rate p, the prompts generated per step converge to needed / (1 - p);
- every group with signal is trained once, waits in the buffer, or is counted as dropped for age;
- each environment's quota holds exactly, carried groups counted toward it;
- a carried group is trained with the log-probs stored for it (the trainer-level test of that
  is in tests/test_trainer.py, with a model).
"""

import math
import random

import pytest

from grpopp.envs.base import Task
from grpopp.objective.algorithms import DynamicSamplingConfig
from grpopp.rollout.groups import Group
from grpopp.training.dynamic_sampling import BatchFiller


class StandIn:
    """Generates groups (no completions: the filler reads only their environment) and decides which
    carry signal: the k-th group generated has none when ``flat(k)``."""

    def __init__(self, flat) -> None:
        self.flat = flat
        self.made: list[Group] = []
        self.no_signal: set[str] = set()

    def generate(self, round_index: int, counts: dict[str, int]) -> list[Group]:
        groups = []
        for env, count in counts.items():
            for _ in range(count):
                index = len(self.made)
                group = Group(Task(id=f"{env}/{index}", env=env, index=index, prompt="p"), samples=[])
                if self.flat(index):
                    self.no_signal.add(group.task.id)
                self.made.append(group)
                groups.append(group)
        return groups

    def has_signal(self, group: Group) -> bool:
        return group.task.id not in self.no_signal

    @staticmethod
    def old_logprobs(groups: list[Group]) -> list[list[list[float]]]:
        return [[[float(group.task.index)]] for group in groups]  # pi_old stand-in: the group's own index


def config(**fields) -> DynamicSamplingConfig:
    return DynamicSamplingConfig(**{"enabled": True, "oversample_factor": 3.0, **fields})


def test_with_a_constant_rate_p_the_generated_count_converges_to_needed_over_one_minus_p() -> None:
    # Every 4th group generated has no signal: p = 1/4, so 16 groups with signal cost 16 / (3/4) = 21.33
    # prompts a step in the long run, and the estimate of p converges to 1/4.
    stand_in = StandIn(lambda k: k % 4 == 3)
    filler = BatchFiller(config(), ["e"])
    generated = []
    for step in range(300):
        batch = filler.fill(step, {"e": 16}, stand_in.generate, stand_in.has_signal, stand_in.old_logprobs)
        assert len(batch.groups) == 16
        generated.append(len(batch.generated))
    assert math.isclose(sum(generated[100:]) / 200, 16 / (1 - 0.25), rel_tol=0.01)
    assert math.isclose(filler.estimates["e"], 0.25, abs_tol=0.03)
    assert sum(generated[100:]) / 200 < 2 * 16  # a fixed 2x oversampling would cost 32


def test_with_p_zero_a_round_asks_for_exactly_what_is_missing() -> None:
    stand_in = StandIn(lambda k: False)
    filler = BatchFiller(config(), ["e"])
    for step in range(5):
        batch = filler.fill(step, {"e": 16}, stand_in.generate, stand_in.has_signal, stand_in.old_logprobs)
        assert (batch.rounds, len(batch.generated), batch.carried_out) == (1, 16, 0)


@pytest.mark.parametrize(("p", "missing", "expected"), [(0.0, 16, 16), (0.25, 16, 22), (0.5, 3, 6), (0.9, 10, 30)])
def test_request_is_missing_over_one_minus_p_capped_by_the_oversample_factor(p, missing, expected) -> None:
    filler = BatchFiller(config(max_estimate=0.95, fill_probability=0.0), ["e"])
    filler.estimates["e"] = p
    # ceil(16 / 0.75) = 22; ceil(3 / 0.5) = 6; 10 / 0.1 = 100 is capped at 3 x 10.
    assert filler.request("e", missing) == expected


@pytest.mark.parametrize(("p", "missing", "expected"), [(0.0, 16, 16), (0.5, 3, 9), (0.5, 1, 3)])
def test_request_fills_the_batch_in_one_round_with_the_fill_probability(p, missing, expected) -> None:
    # P(Binomial(n, 1/2) >= 3): n = 8 gives 1 - (1 + 8 + 28) / 256 = 0.855 < 0.9, n = 9 gives
    # 1 - (1 + 9 + 36) / 512 = 0.910. P(>= 1) = 1 - 2^-n needs n = 4, above the cap 3 x 1.
    # p = 0: exactly what is missing.
    filler = BatchFiller(config(fill_probability=0.9), ["e"])
    filler.estimates["e"] = p
    assert filler.request("e", missing) == expected


@pytest.mark.parametrize("max_staleness", [1, 1000])
def test_no_group_with_signal_is_lost(max_staleness) -> None:
    coin = random.Random(0)
    stand_in = StandIn(lambda k: coin.random() < 0.4)
    filler = BatchFiller(config(max_staleness=max_staleness), ["e"])
    trained: list[str] = []
    dropped = 0
    for step in range(200):
        batch = filler.fill(step, {"e": 8}, stand_in.generate, stand_in.has_signal, stand_in.old_logprobs)
        trained += [group.task.id for group in batch.groups]
        dropped += batch.dropped_stale + batch.wasted
    with_signal = {group.task.id for group in stand_in.made if stand_in.has_signal(group)}
    waiting = {carried.group.task.id for carried in filler.carried}
    assert len(trained) == len(set(trained)) == 200 * 8  # each trained once, every batch full
    assert set(trained) <= with_signal and waiting <= with_signal and not waiting & set(trained)
    assert len(with_signal) == len(trained) + len(waiting) + dropped  # the rest is counted as dropped
    assert dropped <= 0.02 * len(with_signal) if max_staleness == 1 else dropped == 0


def test_without_carry_over_the_surplus_is_counted_as_wasted() -> None:
    stand_in = StandIn(lambda k: False)
    filler = BatchFiller(config(adaptive=False, oversample_factor=2.0, max_staleness=0), ["e"])
    batch = filler.fill(0, {"e": 8}, stand_in.generate, stand_in.has_signal, stand_in.old_logprobs)
    # DAPO's recipe: 2 x 8 prompts, 8 trained, the other 8 (all with signal) thrown away.
    assert (len(batch.generated), len(batch.groups), batch.wasted, filler.carried) == (16, 8, 8, [])


def test_carried_groups_fill_their_environments_quota_first_with_their_stored_logprobs() -> None:
    stand_in = StandIn(lambda k: False)
    filler = BatchFiller(config(adaptive=False, oversample_factor=2.0), ["a", "b"])
    first = filler.fill(0, {"a": 3, "b": 1}, stand_in.generate, stand_in.has_signal, stand_in.old_logprobs)
    # 6 of a and 2 of b generated; 3 + 1 trained, 3 + 1 carried with pi_old = their index.
    assert [g.task.id for g in first.groups] == ["a/0", "a/1", "a/2", "b/6"]
    assert sorted(c.group.task.id for c in filler.carried) == ["a/3", "a/4", "a/5", "b/7"]
    second = filler.fill(1, {"a": 2, "b": 2}, stand_in.generate, stand_in.has_signal, stand_in.old_logprobs)
    # a's quota is met by 2 carried groups; b takes its carried one and one new group; a/5 waits on.
    assert [g.task.id for g in second.groups][:3] == ["a/3", "a/4", "b/7"]
    assert second.old_logprobs[:3] == [[[3.0]], [[4.0]], [[7.0]]]
    assert second.staleness == [1, 1, 1, 0]
    assert [g.task.env for g in second.groups].count("a") == 2 and second.carried_in == 3
    third = filler.fill(3, {"a": 1, "b": 1}, stand_in.generate, stand_in.has_signal, stand_in.old_logprobs)
    assert third.dropped_stale >= 1  # a/5, from step 0, is 3 steps old: past max_staleness = 1
    assert "a/5" not in [g.task.id for g in third.groups]


def test_disabled_generates_the_quota_once_and_keeps_every_group() -> None:
    stand_in = StandIn(lambda k: k % 2 == 0)
    filler = BatchFiller(DynamicSamplingConfig(enabled=False), ["e"])
    batch = filler.fill(0, {"e": 8}, stand_in.generate, stand_in.has_signal, stand_in.old_logprobs)
    assert (batch.rounds, len(batch.generated), len(batch.groups), batch.groups_without_signal) == (1, 8, 8, 4)
