"""Mixtures sample environments in exact proportion, deterministically, and resume."""

import math

import pytest

from grpopp.config_tools import ConfigError
from grpopp.envs.arithmetic import ArithmeticConfig, ArithmeticEnv
from grpopp.envs.base import EnvConfig, Environment, Task
from grpopp.envs.countdown import CountdownConfig, CountdownEnv
from grpopp.envs.mixture import EnvSpec, Mixture, parse_env_arg, select_envs


class FiniteEnv(Environment[EnvConfig]):
    """Five fixed tasks, to test epochs over a finite data set."""

    name = "finite"

    def num_tasks(self, split="train"):
        return 5

    def task(self, index, split="train"):
        return Task(id=f"finite/{split}/{index}", env="finite", split=split, index=index, prompt=str(index), answer="0")

    def verify(self, task, completion):  # pragma: no cover - not used here
        raise NotImplementedError

    def gold_completion(self, task):  # pragma: no cover
        return "0"

    def wrong_completion(self, task):  # pragma: no cover
        return "1"


def two_envs(weights=(0.7, 0.3), seed=0):
    return Mixture([ArithmeticEnv(ArithmeticConfig()), CountdownEnv(CountdownConfig())], weights, seed=seed)


def test_every_prefix_is_within_one_of_the_exact_share():
    mixture = two_envs()
    counts = [0, 0]
    for n, (env_index, _) in enumerate(mixture.allocate(1000), start=1):
        counts[env_index] += 1
        for share, count in zip((0.7, 0.3), counts, strict=True):
            assert math.floor(share * n) <= count <= math.ceil(share * n)


def test_batch_quota_is_exact():
    mixture = two_envs()
    seen = []
    for _ in range(5):
        tasks = mixture.next_batch(10)
        assert sum(t.env == "arithmetic" for t in tasks) == 7
        assert sum(t.env == "countdown" for t in tasks) == 3
        seen += [t.id for t in tasks]
    # each environment's stream advances task by task: 35 arithmetic and 15 countdown tasks, no repeats
    assert sorted(seen) == sorted(
        [f"arithmetic/train/{i}" for i in range(35)] + [f"countdown/train/{i}" for i in range(15)]
    )


def test_three_way_integer_weights():
    envs = [ArithmeticEnv(ArithmeticConfig()), CountdownEnv(CountdownConfig()), FiniteEnv(EnvConfig())]
    mixture = Mixture(envs, [1, 1, 2])
    order = [env_index for env_index, _ in mixture.allocate(8)]
    assert [order.count(i) for i in range(3)] == [2, 2, 4]


def test_mixture_is_deterministic_and_resumes():
    full = two_envs()
    ids = [t.id for _ in range(4) for t in full.next_batch(6)]
    first = two_envs()
    ids_resumed = [t.id for _ in range(2) for t in first.next_batch(6)]
    state = first.state_dict()
    resumed = two_envs()
    resumed.load_state_dict(state)
    ids_resumed += [t.id for _ in range(2) for t in resumed.next_batch(6)]
    assert ids == ids_resumed


def test_finite_env_visits_each_task_once_per_epoch():
    mixture = Mixture([FiniteEnv(EnvConfig())], [1.0], seed=3)
    indices = [t.index for t in mixture.next_batch(15)]
    for epoch in range(3):
        assert sorted(indices[epoch * 5 : epoch * 5 + 5]) == [0, 1, 2, 3, 4]
    assert indices[:5] != indices[5:10] or indices[5:10] != indices[10:15]  # reshuffled each epoch


def test_resume_with_other_envs_is_refused():
    state = two_envs().state_dict()
    other = Mixture([ArithmeticEnv(ArithmeticConfig())], [1.0])
    with pytest.raises(ConfigError, match="cannot resume"):
        other.load_state_dict(state)


@pytest.mark.parametrize(
    ("text", "name", "weight"),
    [
        ("gsm8k", "gsm8k", 1.0),
        ("gsm8k:0.7", "gsm8k", 0.7),
        ("reasoning_gym:chain_sum", "reasoning_gym:chain_sum", 1.0),
        ("reasoning_gym:chain_sum:2", "reasoning_gym:chain_sum", 2.0),
    ],
)
def test_parse_env_arg(text, name, weight):
    spec = parse_env_arg(text)
    assert (spec.name, spec.weight) == (name, weight)


@pytest.mark.parametrize("text", ["gsm8k:0", "gsm8k:-1", "gsm8k:inf", ":0.5"])
def test_parse_env_arg_refuses_bad_weights(text):
    with pytest.raises(ConfigError, match="--env"):
        parse_env_arg(text)


def test_duplicate_env_in_mixture_is_refused():
    with pytest.raises(ConfigError, match="appears twice"):
        Mixture([ArithmeticEnv(ArithmeticConfig()), ArithmeticEnv(ArithmeticConfig())], [1, 1])


def test_select_envs_keeps_the_configured_options_and_takes_the_requested_weights():
    configured = [
        EnvSpec(name="gsm8k", weight=0.7, config={"path": "train.jsonl", "reward": {"format": 0.0}}),
        EnvSpec(name="countdown", weight=0.3, config={"num_numbers": 4}),
    ]
    requested = [
        EnvSpec(name="countdown", weight=0.5),
        EnvSpec(name="my_task", weight=0.5),
        EnvSpec(name="gsm8k", weight=2.0, config={"path": "other.jsonl"}),
    ]
    selection = select_envs(configured, requested)
    assert [(s.name, s.weight, s.config) for s in selection.specs] == [
        ("countdown", 0.5, {"num_numbers": 4}),  # the file's options, the flag's weight
        ("my_task", 0.5, {}),  # not configured: defaults
        ("gsm8k", 2.0, {"path": "other.jsonl", "reward": {"format": 0.0}}),  # a request's own options win
    ]
    assert selection.notes == ["--env my_task: not in the config file: using its default options"]
    assert configured[1].weight == 0.3  # the configured specs are not changed


def test_select_envs_with_nothing_configured_notes_every_name():
    selection = select_envs([], [parse_env_arg("arithmetic:2"), parse_env_arg("reasoning_gym:chain_sum")])
    assert [(s.name, s.weight) for s in selection.specs] == [("arithmetic", 2.0), ("reasoning_gym:chain_sum", 1.0)]
    assert selection.notes == [
        f"--env {name}: not in the config file: using its default options"
        for name in ("arithmetic", "reasoning_gym:chain_sum")
    ]


def test_quotas_and_draws_are_apart_and_resume():
    # Dynamic sampling draws more tasks than its quota: the quota tally follows the weights over the
    # slots, while each stream continues where its draws ended. Slot n goes to the largest deficit
    # share x n - taken (ties to the first): 0.7/0.3 -> 0; 0.4/0.6 -> 1; 1.1/-0.1 -> 0; 0.8/0.2 -> 0;
    # 0.5/0.5 -> 0; 0.2/0.8 -> 1; 0.9/0.1 -> 0; 0.6/0.4 -> 0.
    mixture = two_envs()
    assert mixture.quotas(8) == [0, 1, 0, 0, 0, 1, 0, 0]
    first = mixture.draw(1, 5)
    assert [t.index for t in first] == [0, 1, 2, 3, 4] and mixture.cursors == [0, 5]
    state = mixture.state_dict()
    resumed = two_envs()
    resumed.load_state_dict(state)
    assert [t.id for t in resumed.draw(1, 2)] == [t.id for t in mixture.draw(1, 2)]
    assert resumed.quotas(4) == mixture.quotas(4)


def test_a_state_without_cursors_resumes_at_the_tally():
    # Checkpoints from before quotas and draws were apart: the tally was the cursor.
    mixture = two_envs()
    mixture.next_batch(10)
    state = mixture.state_dict()
    del state["cursors"]
    resumed = two_envs()
    resumed.load_state_dict(state)
    assert resumed.cursors == mixture.taken == mixture.cursors
