"""Reward shaping against hand-computed values: DAPO soft overlong edges, format, composition, and
non-finite values (a NaN or inf score, component or weight) turned into errors or refused."""

import pytest
from pydantic import ValidationError

from grpopp.rewards.extract import extract_answer, extract_answer_line, extract_boxed, extract_last_number
from grpopp.rewards.shaping import (
    FormatRules,
    LengthLimits,
    RewardConfig,
    compose_reward,
    finite_or_error,
    format_reward,
    length_penalty,
    soft_overlong_punishment,
)
from grpopp.rewards.types import Reward, RewardComponent, VerifyResult


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (0, 0.0),
        (16, 0.0),  # exactly L_max - L_cache = 20 - 4: still no punishment
        (17, -0.25),  # (16 - 17) / 4
        (18, -0.5),
        (19, -0.75),
        (20, -1.0),  # exactly L_max: (16 - 20) / 4
        (21, -1.0),  # beyond L_max
        (10_000, -1.0),
    ],
)
def test_soft_overlong_punishment_edges(length, expected):
    assert soft_overlong_punishment(length, max_length=20, cache_length=4) == expected


def test_soft_overlong_dapo_setting():
    # DAPO: L_max = 20480, L_cache = 4096: the ramp starts after 16384 tokens.
    assert soft_overlong_punishment(16384, 20480, 4096) == 0.0
    assert soft_overlong_punishment(16384 + 1024, 20480, 4096) == -0.25
    assert soft_overlong_punishment(20480, 20480, 4096) == -1.0


def test_soft_overlong_without_buffer_is_a_step():
    assert soft_overlong_punishment(10, 10, 0) == 0.0
    assert soft_overlong_punishment(11, 10, 0) == -1.0


@pytest.mark.parametrize(("length", "max_length", "cache_length"), [(-1, 10, 2), (5, 0, 0), (5, 10, 11)])
def test_soft_overlong_refuses_bad_input(length, max_length, cache_length):
    with pytest.raises(ValueError, match="need length >= 0"):
        soft_overlong_punishment(length, max_length, cache_length)


def test_length_penalty():
    assert length_penalty(0, 100) == 0.0
    assert length_penalty(25, 100) == -0.25
    assert length_penalty(500, 100) == -1.0


@pytest.mark.parametrize(
    ("completion", "rules", "expected"),
    [
        ("<think>2 + 2 = 4</think> The answer is \\boxed{4}", FormatRules(think=True, boxed=True), 1.0),
        ("<think>2 + 2 = 4</think>", FormatRules(think=True), 0.0),  # nothing after the thinking
        ("The answer is \\boxed{4}", FormatRules(think=True), 0.0),  # no thinking block
        ("<think>a</think><think>b</think> 4", FormatRules(think=True), 0.0),  # two blocks
        ("<think>\\boxed{4}</think> 4", FormatRules(think=True, boxed=True), 0.0),  # box only in thinking
        ("Some work.\nAnswer: 4", FormatRules(answer_line=True), 1.0),
        ("Some work. 4", FormatRules(answer_line=True), 0.0),
        ("anything", FormatRules(), 1.0),
    ],
)
def test_format_reward(completion, rules, expected):
    assert format_reward(completion, rules) == expected


LIMITS = LengthLimits(max_length=20, cache_length=4, overlong_factor=0.5)


def test_compose_reward_weights_every_component():
    # correctness 1 x 1.0 + format 0.2 x 1 + overlong 0.5 x (-0.5) (18 tokens) + length 0.1 x (-0.9)
    cfg = RewardConfig(correctness=1.0, format=0.2, format_rules=FormatRules(boxed=True), length=0.1)
    result = VerifyResult(status="correct", score=1.0)
    reward = compose_reward(result, "\\boxed{4}", 18, cfg, LIMITS)
    assert reward.valid and reward.status == "correct" and reward.errors == []
    assert reward.total == pytest.approx(1.0 + 0.2 - 0.25 - 0.09, abs=1e-12)
    assert {k: (c.value, c.weight) for k, c in reward.components.items()} == {
        "correctness": (1.0, 1.0),
        "format": (1.0, 0.2),
        "overlong": (-0.5, 0.5),
        "length": (-0.9, 0.1),
    }


def test_the_overlong_weight_is_the_algorithms_alone():
    # One place for the weight (issue 15): an environment's reward may not set its own.
    with pytest.raises(ValidationError, match=r"set in one place.*algorithm.overlong \(soft_punishment: true"):
        RewardConfig.model_validate({"overlong": 2.0})
    reward = compose_reward(VerifyResult(status="incorrect", score=0.0), "x", 20, RewardConfig(), LIMITS)
    assert reward.components["overlong"].weight == 0.5  # LIMITS.overlong_factor
    assert reward.total == pytest.approx(-0.5)  # 0.5 x -1 at L_max


@pytest.mark.parametrize("status", ["timeout", "error"])
def test_unjudged_verification_is_invalid_not_zero(status):
    result = VerifyResult(status=status, score=0.0, reason="limit hit")
    reward = compose_reward(result, "x", 5, RewardConfig(), LIMITS)
    assert not reward.valid
    assert reward.status == status
    assert "correctness" in reward.components  # still logged


def test_unparseable_is_a_judged_failure():
    reward = compose_reward(VerifyResult(status="unparseable", score=0.0), "x", 5, RewardConfig(), LIMITS)
    assert reward.valid and reward.total == 0.0


def test_raising_component_becomes_error_with_the_exception():
    # A negative token count makes the overlong component raise: the reward is invalid, status
    # "error", the exception recorded; the other components are still computed.
    reward = compose_reward(VerifyResult(status="correct", score=1.0), "x", -1, RewardConfig(), LIMITS)
    assert not reward.valid and reward.status == "error"
    assert len(reward.errors) == 1 and reward.errors[0].startswith("overlong: ValueError")
    assert reward.components["correctness"].value == 1.0


def test_verify_result_invariants():
    with pytest.raises(ValueError, match="must have score 0"):
        VerifyResult(status="timeout", score=1.0)
    with pytest.raises(ValueError, match="needs a score > 0"):
        VerifyResult(status="correct", score=0.0)
    assert VerifyResult(status="incorrect", score=0.4).judged  # partial credit
    assert not VerifyResult.timeout("5 s").judged


@pytest.mark.parametrize(
    ("text", "boxed", "answer_line", "last_number"),
    [
        ("so \\boxed{\\frac{1}{2}} and then \\boxed{3}", "3", None, "3"),
        ("\\boxed{\\frac{a}{b_{1}}}", "\\frac{a}{b_{1}}", None, "1"),
        ("The answer is **73**.", None, "73", "73"),
        ("Answer: 1,234\nok", None, "1,234", "1234"),
        ("Final answer: -12.5", None, "-12.5", "-12.5"),
        ("nothing here", None, None, None),
    ],
)
def test_extractors(text, boxed, answer_line, last_number):
    assert extract_boxed(text) == boxed
    assert extract_answer_line(text) == answer_line
    assert extract_last_number(text) == last_number


def test_extract_answer_order():
    assert extract_answer("Answer: 5 \\boxed{6}", ["boxed", "answer_line"]) == ("6", "boxed")
    assert extract_answer("Answer: 5 \\boxed{6}", ["answer_line", "boxed"]) == ("5 \\boxed{6}", "answer_line")
    assert extract_answer("none", ["boxed"]) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>x = 4</think> Answer: 5", " Answer: 5"),
        ("x = 4 so...</think> Answer: 5", " Answer: 5"),  # R1 template: <think> was in the prompt
        ("<think>a</think> mid <think>b</think> end", " mid  end"),  # interleaved: text between blocks stays
        ("Answer: 5 <think>unfinished, Answer: 6", "Answer: 5 "),  # an unclosed block runs to the end
        ("<think>x = 4, \\boxed{4} and then the length limit hit", ""),  # never closed: no answer
        ("no reasoning tags, Answer: 5", "no reasoning tags, Answer: 5"),
    ],
)
def test_strip_thinking(text, expected):
    from grpopp.rewards.extract import strip_thinking

    assert strip_thinking(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I cannot determine the answer without more information.", None),  # not an answer line
        ("The answer is `42`.", "42"),
        ("Final answer = $7$", "7"),
        ("the final answer is: 12", "12"),
    ],
)
def test_answer_line_needs_a_marker(text, expected):
    assert extract_answer_line(text) == expected


@pytest.mark.parametrize(
    ("status", "score", "problem"),
    [
        ("correct", float("nan"), "score: Input should be a finite number"),
        ("incorrect", float("inf"), "score: Input should be a finite number"),
        ("correct", float("-inf"), "score: Input should be a finite number"),
        ("correct", 2.0, "score: Input should be less than or equal to 1"),
    ],
)
def test_a_verdict_that_breaks_the_rules_is_an_error(status, score, problem):
    # A verifier that skipped validation (model_construct) hands over a NaN, infinite or too large score.
    verdict = VerifyResult.model_construct(status=status, score=score, reason="", decided_by="plugin")
    reward = compose_reward(verdict, "x", 5, RewardConfig(), LIMITS)
    reason = f"verifier: invalid result (status {status!r}, score {score}): {problem}"
    assert not reward.valid and reward.status == "error" and reward.total == 0.0
    assert reward.errors == [reason]
    assert reward.verification == VerifyResult(status="error", score=0.0, reason=reason, decided_by="plugin")
    assert set(reward.components) == {"correctness", "format", "overlong", "length"}  # still logged


@pytest.mark.parametrize(("value", "shown"), [(float("nan"), "nan"), (float("-inf"), "-inf")])
def test_a_non_finite_component_makes_the_reward_an_error(monkeypatch, value, shown):
    import grpopp.rewards.shaping as shaping

    monkeypatch.setattr(shaping, "length_penalty", lambda length, max_length: value)  # a component gone wrong
    reward = compose_reward(VerifyResult(status="correct", score=1.0), "x", 5, RewardConfig(length=0.1), LIMITS)
    assert not reward.valid and reward.status == "error" and reward.total == 0.0
    assert reward.errors == [f"length: the value {shown} is not a finite number"]
    assert set(reward.components) == {"correctness", "format", "overlong"}  # the finite ones are still logged


def test_finite_components_that_overflow_make_the_reward_an_error():
    # correctness 1e308 x 1 + format 1e308 x 1 = 2e308, beyond the largest float: inf.
    cfg = RewardConfig(correctness=1e308, format=1e308, format_rules=FormatRules(answer_line=True))
    reward = compose_reward(VerifyResult(status="correct", score=1.0), "Answer: 4", 5, cfg, LIMITS)
    assert not reward.valid and reward.status == "error"
    assert reward.errors == ["total: inf is not a finite number"]


def test_finite_or_error_guards_rewards_built_elsewhere():
    # An environment that overrides score_batch can hand back any Reward.
    verdict = VerifyResult(status="incorrect", score=0.0)
    bad = Reward(
        total=float("nan"),
        components={"custom": RewardComponent(value=float("nan"), weight=1.0)},
        status="incorrect",
        valid=True,
        verification=verdict,
    )
    checked = finite_or_error(bad)
    assert (checked.valid, checked.status, checked.total) == (False, "error", 0.0)
    assert checked.errors == ["custom: the value nan is not a finite number", "total: nan is not a finite number"]
    good = Reward(total=0.5, components={}, status="incorrect", valid=True)
    assert finite_or_error(good) is good
    masked = Reward(total=0.0, components={}, status="timeout", valid=False)
    assert finite_or_error(masked) is masked


@pytest.mark.parametrize("weight", ["correctness", "format", "length"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_reward_weights_must_be_finite(weight, value):
    with pytest.raises(ValueError, match=f"{weight}\n.*a reward weight must be a finite number, got {value}"):
        RewardConfig(**{weight: value})


def test_a_non_finite_weight_in_a_config_file_names_the_key(tmp_path):
    from grpopp.config_tools import ConfigError
    from grpopp.envs.mixture import build_mixture
    from grpopp.training.config import load_train_config

    path = tmp_path / "run.yaml"
    path.write_text("envs:\n  - name: arithmetic\n    config: {reward: {correctness: .nan}}\n")
    with pytest.raises(ConfigError) as error:
        build_mixture(load_train_config(path).envs, seed=0)
    assert str(error.value) == (
        "env arithmetic: reward.correctness: a reward weight must be a finite number, got nan: a NaN or infinite "
        "weight makes every reward NaN or infinite; give a number such as 1.0, or 0 to turn the component off"
    )


def test_a_non_finite_score_is_refused_by_validation():
    with pytest.raises(ValueError, match="score\n  Input should be a finite number"):
        VerifyResult(status="incorrect", score=float("nan"))
