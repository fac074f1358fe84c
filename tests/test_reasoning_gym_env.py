"""The reasoning-gym family: real tasks through grpopp's contract, answers judged by reasoning-gym.

Expected values come from reasoning-gym itself, called directly (``create_dataset`` with the seeds
the module documents: round r of train = seed + r * size, of test = seed + 2^30 + r * test_size, and
the first round whose question's sha256, computed here, falls in the split's class), or are derived
by hand from its scoring rules (chain_sum: an answer that contains the oracle but is not a number
scores len(oracle)/len(answer)).
"""

import hashlib
import importlib
import json

import pytest
from pydantic import ValidationError

reasoning_gym = pytest.importorskip("reasoning_gym")
from reasoning_gym.factory import DATASETS  # noqa: E402

from grpopp.envs import registry  # noqa: E402
from grpopp.envs.base import Message  # noqa: E402
from grpopp.envs.reasoning_gym_env import (  # noqa: E402
    ReasoningGymConfig,
    ReasoningGymEnv,
    extract_final_answer,
    json_safe_metadata,
)

# chain_sum, basic_arithmetic, leg_counting: numbers; spell_backward, word_sorting: words;
# gsm_symbolic: its scorer reads the first number, so "<gold> WRONG" scores 1 and another wrong answer is needed.
TASKS = ["chain_sum", "basic_arithmetic", "leg_counting", "spell_backward", "word_sorting", "gsm_symbolic"]
FORMATS = ["answer_tag", "boxed", "answer_line"]
TEST_SEED = 2**30


def make(task="chain_sum", **options):
    return ReasoningGymEnv(ReasoningGymConfig(task=task, size=options.pop("size", 40), test_size=20, **options))


def in_test_class(question: str, fraction: float = 0.1) -> bool:
    """The hash class by hand: sha256's first 16 hex digits over 16^16."""
    return int(hashlib.sha256(question.encode()).hexdigest()[:16], 16) / 16**16 < fraction


def expected_item(task, split, index, seed=0, size=40, test_size=20, options=None, fraction=0.1):
    """Task ``index`` of ``split`` recomputed from reasoning-gym's own datasets: item ``index`` of the
    first round whose question falls in the split's hash class (the round number comes back too)."""
    base, step = (seed, size) if split == "train" else (seed + TEST_SEED, test_size)
    for round_index in range(1000):
        dataset = reasoning_gym.create_dataset(task, seed=base + round_index * step, size=step, **(options or {}))
        item = dataset[index]
        if in_test_class(item["question"], fraction) == (split == "test"):
            return item, round_index
    raise AssertionError("no item in 1000 rounds")


# -- verification on real tasks ---------------------------------------------------------------


@pytest.mark.parametrize("answer_format", FORMATS)
@pytest.mark.parametrize("task_name", TASKS)
def test_gold_correct_wrong_incorrect_missing_unparseable(task_name, answer_format):
    env = make(task_name, answer_format=answer_format)
    for index in range(3):
        for split in ("train", "test"):
            task = env.task(index, split)
            gold = env.verify(task, env.gold_completion(task))
            assert gold.status == "correct" and gold.score == 1.0, gold
            assert gold.decided_by == f"reasoning_gym.{task_name}"
            wrong = env.verify(task, env.wrong_completion(task))
            assert wrong.status == "incorrect" and wrong.score < 1.0, wrong
            missing = env.verify(task, f"I think it is {task.answer}.")
            assert missing.status == "unparseable" and missing.score == 0.0


def test_answers_are_reasoning_gyms_own_items():
    env = make("spell_backward")
    for index in (0, 7, 39):
        task = env.task(index)
        item, _ = expected_item("spell_backward", "train", index)
        assert task.answer == item["answer"]
        assert task.prompt.startswith(item["question"])
        # the gold answer of a word task is a word, and it is what the tag must hold
        assert env.verify(task, f"<answer>{item['answer']}</answer>").status == "correct"


def test_partial_credit_is_kept():
    env = make("chain_sum")
    task = env.task(3)
    # "<gold>xy" is no number, but contains the oracle: score len(gold) / (len(gold) + 2)
    result = env.verify(task, f"<answer>{task.answer}xy</answer>")
    assert result.status == "incorrect"
    assert result.score == pytest.approx(len(task.answer) / (len(task.answer) + 2), abs=1e-12)
    assert result.extracted == f"{task.answer}xy"


def test_answer_inside_thinking_does_not_count():
    env = make("chain_sum")
    task = env.task(0)
    gold = task.answer
    assert env.verify(task, f"<think><answer>{gold}</answer></think>").status == "unparseable"
    assert env.verify(task, f"<think><answer>0 WRONG</answer></think><answer>{gold}</answer>").status == "correct"
    # the prompt opened <think>: everything before the stray </think> is reasoning
    assert env.verify(task, f"maybe <answer>0 WRONG</answer></think>\n<answer>{gold}</answer>").status == "correct"
    assert env.verify(task, f"<answer>{gold} WRONG</answer> hmm</think> so").status == "unparseable"
    assert env.verify(task, f"<answer>{gold}</answer> <think>unfinished <answer>1</answer>").status == "correct"
    assert env.verify(task, f"<think>a</think><answer>{gold}</answer><think>b</think>").status == "correct"
    # the last tag is the final answer
    assert env.verify(task, f"<answer>{gold}</answer> no wait <answer>{gold} WRONG</answer>").status == "incorrect"
    assert env.verify(task, "<answer>  </answer>").status == "unparseable"


def test_extractors_per_format():
    text = "x <answer> a </answer> \\boxed{b}\nAnswer: c"
    assert extract_final_answer(text, "answer_tag") == "a"
    assert extract_final_answer(text, "boxed") == "b"
    assert extract_final_answer(text, "answer_line") == "c"
    assert extract_final_answer("<answer>\n1 2\n3 4\n</answer>", "answer_tag") == "1 2\n3 4"


def test_task_without_reference_answer():
    env = make("propositional_logic")
    task = env.task(0)
    assert task.answer is None
    with pytest.raises(ValueError, match="no reference answer"):
        env.gold_completion(task)
    assert env.verify(task, env.wrong_completion(task)).status == "incorrect"


# -- failures of the scorer are errors, not zeros ---------------------------------------------


def test_score_answer_that_raises_is_an_error(monkeypatch):
    def explode(self, answer, entry):
        raise RuntimeError("scorer exploded")

    monkeypatch.setattr(DATASETS["chain_sum"][0], "score_answer", explode)
    env = make("chain_sum")
    task = env.task(0)
    result = env.verify(task, env.gold_completion(task))
    assert result.status == "error" and result.score == 0.0 and not result.judged
    assert "RuntimeError" in result.reason and "scorer exploded" in result.reason


@pytest.mark.parametrize("bad_score", [1.5, -0.1, float("nan")])
def test_score_outside_unit_interval_is_an_error(monkeypatch, bad_score):
    monkeypatch.setattr(DATASETS["chain_sum"][0], "score_answer", lambda self, answer, entry: bad_score)
    env = make("chain_sum")
    task = env.task(0)
    assert env.verify(task, env.gold_completion(task)).status == "error"


def test_task_from_another_config_is_an_error():
    task = make("chain_sum", seed=1).task(0)
    other = make("chain_sum", seed=2)
    result = other.verify(task, f"<answer>{task.answer}</answer>")
    assert result.status == "error" and "does not match" in result.reason
    result = make("leg_counting").verify(task, f"<answer>{task.answer}</answer>")
    assert result.status == "error" and "is from 'reasoning_gym:chain_sum'" in result.reason


# -- determinism and splits -------------------------------------------------------------------


def test_tasks_are_deterministic_across_envs_and_access_order():
    first, second = make("leg_counting", seed=5), make("leg_counting", seed=5)
    indices = [0, 1, 17, 39]
    expected = {
        (split, i): first.task(i, split) for split in ("train", "test") for i in indices if i < 20 or split == "train"
    }
    for split, index in reversed(list(expected)):
        assert second.task(index, split) == expected[(split, index)]
    assert second.task(3).id == "reasoning_gym:leg_counting/train/3"


def test_split_seeds_match_reasoning_gym_directly():
    env = make("chain_sum", seed=7)
    rounds = []
    for split, indices in (("train", range(40)), ("test", range(20))):
        for index in indices:
            item, round_index = expected_item("chain_sum", split, index, seed=7)
            task = env.task(index, split)
            assert task.answer == item["answer"] and task.prompt.startswith(item["question"])
            assert env.instance_key(task) == item["question"]
            rounds.append((split, round_index))
    # most train tasks are round 0, the dataset of earlier versions; test tasks need ~10 rounds
    assert sum(r == ("train", 0) for r in rounds) >= 30
    assert max(r for s, r in rounds if s == "test") >= 3


def test_train_and_test_are_disjoint_by_content():
    # basic_arithmetic with two one-digit terms: a few hundred questions in all. Before the split by
    # content, 169 of the first 200 test questions were among the first 5,000 train questions.
    options = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    env = ReasoningGymEnv(
        ReasoningGymConfig(task="basic_arithmetic", size=5000, test_size=200, dataset_options=options)
    )
    train = {env.instance_key(env.task(i, "train")) for i in range(5000)}
    test = [env.instance_key(env.task(i, "test")) for i in range(200)]
    assert not train & set(test)
    assert all(in_test_class(question) for question in test) and not any(in_test_class(q) for q in train)
    assert len(set(test)) > 50  # the test split is not one question repeated


def test_train_and_test_streams_are_distinct():
    # 3-4 digit terms: the question space is far larger than 2 x 60, so any repeat means shared items
    options = {"min_digits": 3, "max_digits": 4, "min_terms": 3}
    env = ReasoningGymEnv(ReasoningGymConfig(task="chain_sum", size=60, test_size=60, dataset_options=options))
    train = {env.task(i, "train").prompt for i in range(60)}
    test = {env.task(i, "test").prompt for i in range(60)}
    assert len(train) == 60 and len(test) == 60
    assert not train & test
    assert env.task(0, "train").id != env.task(0, "test").id


def test_sizes_that_would_push_seeds_past_2_to_the_32_are_refused():
    # test_fraction 0.1: a test task may look at ceil(50 / 0.1) = 500 rounds of test_size items
    with pytest.raises(ValidationError, match=r"test_size=2147484 is too large.*give at most 2147483"):
        ReasoningGymConfig(task="chain_sum", test_size=2**30 // 500 + 1)
    ReasoningGymConfig(task="chain_sum", test_size=2**30 // 500)


def test_index_out_of_range():
    env = make("chain_sum")
    assert env.num_tasks("train") == 40 and env.num_tasks("test") == 20
    with pytest.raises(IndexError):
        env.task(40)
    with pytest.raises(IndexError):
        env.task(20, "test")


# -- prompts and metadata ---------------------------------------------------------------------


def test_prompt_carries_the_format_instruction():
    from reasoning_gym.utils import SYSTEM_PROMPTS

    task = make("chain_sum").task(0)
    assert SYSTEM_PROMPTS["default"].strip() in task.prompt and "<answer>" in task.prompt
    boxed = make("chain_sum", answer_format="boxed").task(0).prompt
    assert "\\boxed{}" in boxed and "<answer>" not in boxed
    line = make("chain_sum", answer_format="answer_line").task(0).prompt
    assert "Answer:" in line
    bare = make("chain_sum", instruction="").task(0)
    assert bare.prompt == expected_item("chain_sum", "train", 0)[0]["question"]


def test_system_prompt_makes_chat_messages():
    task = make("chain_sum", system_prompt="Be brief.").task(0)
    assert isinstance(task.prompt, list)
    assert task.prompt[0] == Message(role="system", content="Be brief.")
    assert task.prompt[1].role == "user" and "<answer>" in task.prompt[1].content


def test_metadata_is_json_and_options_take_effect():
    env = make("chain_sum", dataset_options={"min_terms": 5, "max_terms": 5})
    for index in range(5):
        metadata = env.task(index).metadata
        assert json.loads(json.dumps(metadata)) == metadata
        assert metadata["num_terms"] == 5
        assert metadata["difficulty"]["num_terms"] == [5, 5]  # a tuple in reasoning-gym


def test_json_safe_metadata_drops_what_json_cannot_hold():
    raw = {
        "pair": (1, 2),
        "set": {1, 2},
        "nan": float("nan"),
        "nested": {"obj": object(), "ok": "x", "n": None, "flag": True},
        3: "int key",
        "mixed_list": [1, object()],
        "float": 0.5,
    }
    assert json_safe_metadata(raw) == {"pair": [1, 2], "nested": {"ok": "x", "n": None, "flag": True}, "float": 0.5}
    assert json_safe_metadata(None) == {}


# -- configuration errors ---------------------------------------------------------------------


def test_unknown_task_suggests_close_names():
    with pytest.raises(ValidationError, match="unknown reasoning-gym task 'chian_sum'. Did you mean 'chain_sum'"):
        ReasoningGymConfig(task="chian_sum")


def test_unknown_option_is_named_with_a_suggestion():
    with pytest.raises(ValidationError, match="no option 'max_term'.*Did you mean 'max_terms'"):
        ReasoningGymConfig(task="chain_sum", dataset_options={"max_term": 3})


def test_bad_option_value_is_named():
    with pytest.raises(ValidationError, match="'chain_sum' rejected dataset_options min_terms, max_terms") as error:
        ReasoningGymConfig(task="chain_sum", dataset_options={"min_terms": 5, "max_terms": 2})
    assert "max_terms must be >= min_terms" in str(error.value)


def test_seed_and_size_are_not_dataset_options():
    with pytest.raises(ValidationError, match="must not set 'seed'"):
        ReasoningGymConfig(task="chain_sum", dataset_options={"seed": 3})


def test_split_sizes_are_bounded():
    with pytest.raises(ValidationError):
        ReasoningGymConfig(task="chain_sum", size=2**30 + 1)


# -- the registry -----------------------------------------------------------------------------


def _check_made_env(make_env):
    env = make_env("reasoning_gym:chain_sum", size=30, answer_format="boxed")
    assert isinstance(env, ReasoningGymEnv) and env.name == "reasoning_gym:chain_sum"
    assert env.config.task == "chain_sum" and env.num_tasks() == 30
    task = env.task(2)
    assert task.id == "reasoning_gym:chain_sum/train/2"
    assert env.verify(task, env.gold_completion(task)).status == "correct"
    with pytest.raises(ValueError, match="'chain_sum'"):
        make_env("reasoning_gym:chian_sum")


def test_family_through_make_env_without_other_builtins(monkeypatch):
    # this module registered itself on import; skip importing the other built-ins
    monkeypatch.setitem(registry._loaded, "builtins", True)
    _check_made_env(registry.make_env)


def test_make_env_with_all_builtins():
    missing = []
    for name in registry.BUILTIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:  # another built-in (or what it imports) is not written yet
            missing.append(f"{name} ({exc})")
    if missing:
        pytest.skip(f"make_env imports every built-in env module; missing: {'; '.join(missing)}")
    _check_made_env(registry.make_env)
    assert "reasoning_gym:<task>" in registry.list_envs()
