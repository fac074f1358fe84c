"""Held-out splits disjoint by content (issue 12, item 6): the hash class against sha256 computed
outside the code, the draw helper and its budget, a 15-word environment (overlapping the old way,
refused the new way), ``envs check`` naming overlapping prompts, data test files less the training
questions, and evaluation refusing a train-split task."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pytest

from grpopp.config_tools import ConfigError
from grpopp.envs.arithmetic import ArithmeticConfig, ArithmeticEnv
from grpopp.envs.base import (
    EnvConfig,
    SplitSpaceError,
    draw_budget,
    in_test_class,
    split_of,
)
from grpopp.envs.check import check_env
from grpopp.envs.registry import list_envs, load_plugin, make_env
from grpopp.evaluation.evaluate import held_out_tasks, require_held_out

PLUGIN = str(Path(__file__).parent / "plugins" / "word_envs.py")
WORDS_15 = (
    "apple", "brick", "cloud", "delta", "ember", "flint", "grape", "heron",
    "ivory", "jolly", "karma", "lemon", "mango", "noble", "ocean",
)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def word_envs() -> None:
    """Register tests/plugins/word_envs.py once in this process (a second import would clash)."""
    if "words" not in list_envs():
        load_plugin(PLUGIN)


def by_hand(key: str, fraction: float) -> bool:
    """The test class recomputed: hashlib's hex digest, first 16 hex digits over 16^16."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) / 16**16 < fraction


# -- the hash class -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "position"),
    [
        # first 16 hex digits of `printf '%s' KEY | sha256sum` (coreutils), over 16^16
        ("37 + 58", 0x9587B34F47640882 / 16**16),  # 0.5841
        ("3,7,25->46", 0x0AEAE24F75CAA41B / 16**16),  # 0.0426
        ("What is 2 + 2?", 0x38D46AD3618826CF / 16**16),  # 0.2220
    ],
)
def test_hash_class_of_known_keys(key, position):
    for fraction in (0.01, 0.04, 0.1, 0.25, 0.5):
        assert in_test_class(key, fraction) == (position < fraction), (key, fraction)
        assert split_of(key, fraction) == ("test" if position < fraction else "train")


def test_hash_class_agrees_with_hashlib_on_many_keys():
    keys = [f"{a} + {b}" for a in range(60) for b in range(60)]
    for fraction in (0.1, 0.3):
        assert [in_test_class(k, fraction) for k in keys] == [by_hand(k, fraction) for k in keys]
        share = sum(by_hand(k, fraction) for k in keys) / len(keys)
        assert abs(share - fraction) < 4 * math.sqrt(fraction * (1 - fraction) / len(keys))  # binomial, 4 sd


def test_draw_budget_by_hand():
    assert draw_budget("test", 0.1) == 500  # ceil(50 / 0.1)
    assert draw_budget("train", 0.1) == 56  # ceil(50 / 0.9) = ceil(55.6)
    assert draw_budget("test", 0.5) == draw_budget("train", 0.5) == 100
    assert max(0.9**500, 0.1**56) < math.exp(-50)  # what the budget promises: all draws miss


# -- a small user environment ---------------------------------------------------------------------


def test_fifteen_words_overlapped_the_old_way():
    env = make_env("words_shared")
    train = {env.task(i, "train").prompt for i in range(200)}
    test = [env.task(i, "test").prompt for i in range(200)]
    assert len(train) == 15 and all(prompt in train for prompt in test)  # ids differ, content does not


def test_fifteen_words_are_refused_at_construction_the_new_way():
    # At test_fraction 0.1 only "flint" (0.027) and "grape" (0.060) are test words:
    assert [w for w in WORDS_15 if by_hand(w, 0.1)] == ["flint", "grape"]
    with pytest.raises(SplitSpaceError, match=r"words: the test split holds only 2 distinct problems") as error:
        make_env("words")
    assert "too small to split" in str(error.value) and "raise test_fraction" in str(error.value)


def test_a_split_with_no_problem_at_all_names_the_env_and_the_fix():
    # "apple" (0.229) is a train word at 0.1: no test task can be drawn within the budget of 500
    with pytest.raises(SplitSpaceError, match=r"words: no test problem for task 0 in 500 draws.*raise test_fraction"):
        make_env("words", words=("apple",))


def test_enough_words_split_by_content():
    words = tuple(f"w{i:03d}" for i in range(300))
    env = make_env("words", words=words, test_fraction=0.2)
    train = [env.task(i, "train").metadata["word"] for i in range(2000)]
    test = [env.task(i, "test").metadata["word"] for i in range(500)]
    assert not set(train) & set(test)
    assert {w for w in words if by_hand(w, 0.2)} == set(test)  # 500 draws reach all ~60 test words
    assert all(not by_hand(w, 0.2) for w in train)


def test_drawing_by_split_needs_a_procedural_config():
    env = make_env("words_shared")
    assert isinstance(env.config, EnvConfig) and env.test_fraction is None
    with pytest.raises(TypeError, match="make config_class subclass grpopp.envs.base.ProceduralConfig"):
        env.draw_in_split(0, "test", lambda rng: "x", key=str)


# -- envs check -----------------------------------------------------------------------------------


def test_envs_check_fails_an_overlapping_env_and_names_the_prompts():
    report = check_env(make_env("words_shared"), num_tasks=5, content_tasks=50)
    result = next(r for r in report.results if r.name == "train/test disjoint by content")
    assert not result.passed and not report.ok
    assert "words_shared/test/0 has the prompt of words_shared/train/" in result.detail
    assert "backwards." in result.detail and "first 3 failures" in result.detail and "(and 47 more)" in result.detail
    assert "test 15 distinct problems in 50" in result.detail


def test_envs_check_passes_a_disjoint_env_and_checks_the_hash_class():
    env = make_env("arithmetic", max_operand=9)
    report = check_env(env, num_tasks=5)
    assert report.ok, report.results
    result = next(r for r in report.results if r.name == "train/test disjoint by content")
    assert result.detail.startswith("600/600 ok")


# -- data environments ------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_gsm8k_test_file_loses_the_training_questions_with_a_warning(tmp_path):
    train = write_jsonl(
        tmp_path / "train.jsonl", [{"question": f"{i}+{i}?", "answer": f"#### {2 * i}"} for i in range(6)]
    )
    test_rows = [
        {"question": "1+1?", "answer": "#### 2"},  # a training question
        {"question": "  3+3?\n", "answer": "#### 6"},  # the same, with surrounding whitespace
        {"question": "7+7?", "answer": "#### 14"},
        {"question": "8+8?", "answer": "#### 16"},
    ]
    test = write_jsonl(tmp_path / "test.jsonl", test_rows)
    with pytest.warns(
        UserWarning, match=r"gsm8k: dropped 2 of 4 test problems .*test.jsonl:1\); the test split keeps 2"
    ):
        env = make_env("gsm8k", path=str(train), test_path=str(test))
    assert [env.task(i, "test").answer for i in range(env.num_tasks("test"))] == ["14", "16"]
    assert env.num_tasks("train") == 6


def test_code_test_file_loses_the_training_questions_with_a_warning(tmp_path):
    def problem(question: str) -> dict:
        return {"question": question, "input_output": json.dumps({"inputs": ["1\n"], "outputs": ["1\n"]})}

    train = write_jsonl(tmp_path / "train.jsonl", [problem("Echo a number."), problem("Echo it twice.")])
    test = write_jsonl(tmp_path / "test.jsonl", [problem("Echo it twice."), problem("Echo it thrice.")])
    with pytest.warns(UserWarning, match=r"code: dropped 1 of 2 test problems"):
        env = make_env("code", path=str(train), test_path=str(test))
    assert env.num_tasks("test") == 1 and env.task(0, "test").prompt.startswith("Echo it thrice.")


# -- evaluation -----------------------------------------------------------------------------------


class TrainForTest(ArithmeticEnv):
    """A broken environment: its test indices give train tasks."""

    def task(self, index, split="train"):
        return super().task(index, "train")


def test_evaluation_refuses_a_train_split_task():
    env = TrainForTest(ArithmeticConfig())
    with pytest.raises(ConfigError, match=r"arithmetic/train/0 is from the train split, not the test split"):
        held_out_tasks(env, 3)


def test_evaluation_refuses_a_test_labelled_task_with_a_train_problem():
    env = make_env("arithmetic")
    train_task = env.task(0, "train")
    relabelled = train_task.model_copy(update={"split": "test", "id": "arithmetic/test/0"})
    expression = train_task.metadata["expression"]
    assert not by_hand(expression, 0.1)
    with pytest.raises(
        ConfigError, match=rf"arithmetic/test/0 poses '{re.escape(expression)}', a problem of the train"
    ):
        require_held_out(env, relabelled)
    assert [t.split for t in held_out_tasks(env, 5)] == ["test"] * 5
