"""math-verify's own test suite, run through grpopp's ``math`` environment.

The cases come from the sdist of the installed math-verify (``tests/upstream_math_verify.py``):
276 (gold, prediction, expected) triples for math-verify 0.9.0. Three checks:

1. The reader is right: plain ``math_verify.parse`` + ``verify`` with each case's own options
   reproduces every expected value (so a case we mis-read cannot pass as agreement below).
2. grpopp's ``math`` environment with its default options agrees with the expected value on every
   case where plain math-verify with those same options agrees. The cases where it does not are the
   option choices below (strict xfails, so a change shows up).
3. With each case's own options set through ``MathVerifyConfig`` (float rounding, strict, set
   relations), only the cases whose options grpopp cannot express stay different.

All grading goes through ``Environment.judge_batch`` in one batch per check, so the file takes
seconds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from grpopp.envs.base import Task
from grpopp.envs.math_data import MATHConfig, MATHEnv
from grpopp.rewards.math_verify_pool import MathVerifyConfig
from grpopp.rewards.types import VerifyResult
from tests.upstream_math_verify import UpstreamCase, load_cases, sdist_path

CASES = load_cases(sdist_path())

LATEX_ONLY = (
    "the case extracts with LatexExtractionConfig only; grpopp's 'latex' source also reads plain expressions "
    "(ExprExtractionConfig), which find the 9 in a malformed display"
)
DEFAULT_OPTION_DIFFERENCES: dict[str, str] = {
    "test_all.py::test_latex_notation[5]": LATEX_ONLY,
    "test_all.py::test_latex_notation[6]": LATEX_ONLY,
    "test_all.py::test_precision#L559": "the case rounds floats to 4 places; grpopp's float_rounding is 6",
    "test_all.py::test_complex_math_expressions[7]": "the case rounds floats to 2 places; grpopp's is 6",
    "test_all.py::test_complex_math_expressions[13]": "the case rounds floats to 2 places; grpopp's is 6",
    "test_all.py::test_set_rel_assymetry[2]": "the case sets allow_set_relation_comp=True; grpopp keeps False",
    "test_strict.py::test_strict_variable_comparison[1]": "the case sets strict=False; grpopp keeps strict=True",
}
"""Cases where plain math-verify with grpopp's default options also disagrees with the expected value."""

NO_VERDICT: dict[str, str] = {
    "test_yujianll.py::test_string_extraction[12]": "gold 12:00 and prediction 1:00 both read as 12/0 and 1/0 "
    "(zoo); math-verify's comparison raises 'Can't evaluate nan or zoo', which plain verify() folds into False "
    "and grpopp reports as an error (no verdict, the sample is masked)",
}
"""Cases where grpopp reaches no verdict; both say "not correct", as the expected value does."""

OWN_OPTION_DIFFERENCES = {case: reason for case, reason in DEFAULT_OPTION_DIFFERENCES.items() if reason == LATEX_ONLY}


def _plain(case: UpstreamCase) -> bool:
    """What math-verify's own test helper computes for a case (its compare_strings, rebuilt here)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    targets: list[LatexExtractionConfig | ExprExtractionConfig] = []
    for kind in case.match_types:
        latex = LatexExtractionConfig(boxed_match_priority=0) if case.boxed_first else LatexExtractionConfig()
        targets.append(latex if kind == "latex" else ExprExtractionConfig())
    return bool(
        verify(
            parse(case.gold, targets),
            parse(case.pred, targets),
            float_rounding=case.precision,
            strict=case.strict,
            allow_set_relation_comp=case.allow_set_relation_comp,
        )
    )


def _judge(cases: Sequence[UpstreamCase], config: MathVerifyConfig) -> list[VerifyResult]:
    """The cases graded by the ``math`` environment, gold as the task's answer, prediction as the completion."""
    env = MATHEnv(MATHConfig(verifier=config))
    tasks = [
        Task(id=f"upstream/{i}", env="math", split="test", index=i, prompt="", answer=case.gold)
        for i, case in enumerate(cases)
    ]
    return env.judge_batch(tasks, [case.pred for case in cases])


def _own_options(case: UpstreamCase) -> MathVerifyConfig:
    return MathVerifyConfig(
        workers=2,
        float_rounding=case.precision,
        strict=case.strict,
        allow_set_relation_comp=case.allow_set_relation_comp,
    )


@pytest.fixture(scope="module")
def default_verdicts() -> dict[str, VerifyResult]:
    return dict(zip((c.id for c in CASES), _judge(CASES, MathVerifyConfig(workers=2)), strict=True))


@pytest.fixture(scope="module")
def own_option_verdicts() -> Iterator[dict[str, VerifyResult]]:
    """Each case under its own options: one batch per distinct option set."""
    verdicts: dict[str, VerifyResult] = {}
    for config in {_own_options(case) for case in CASES}:
        group = [case for case in CASES if _own_options(case) == config]
        verdicts.update(zip((c.id for c in group), _judge(group, config), strict=True))
    yield verdicts


def _params(differences: dict[str, str]) -> list[object]:
    marks = {case: [pytest.mark.xfail(strict=True, reason=reason)] for case, reason in differences.items()}
    return [pytest.param(case, id=case.id, marks=marks.get(case.id, [])) for case in CASES]


def test_the_suite_is_read_whole() -> None:
    """math-verify 0.9.0 holds 276 such cases; far fewer means the reader missed tables."""
    assert len(CASES) >= 270, len(CASES)
    assert len({case.id for case in CASES}) == len(CASES)
    assert set(DEFAULT_OPTION_DIFFERENCES) <= {case.id for case in CASES}


def test_plain_math_verify_reproduces_every_expected_value() -> None:
    disagreements = [case.id for case in CASES if _plain(case) != case.expected]
    assert disagreements == []


@pytest.mark.parametrize("case", _params(DEFAULT_OPTION_DIFFERENCES))
def test_math_env_with_default_options(case: UpstreamCase, default_verdicts: dict[str, VerifyResult]) -> None:
    result = default_verdicts[case.id]
    assert (result.status == "correct") == case.expected, f"{case.gold!r} vs {case.pred[:200]!r}: {result.reason}"
    assert result.status == ("error" if case.id in NO_VERDICT else result.status)
    assert result.judged or case.id in NO_VERDICT, result.reason  # a verdict, never a timeout


@pytest.mark.parametrize("case", _params(OWN_OPTION_DIFFERENCES))
def test_math_env_with_each_cases_options(case: UpstreamCase, own_option_verdicts: dict[str, VerifyResult]) -> None:
    result = own_option_verdicts[case.id]
    assert (result.status == "correct") == case.expected, f"{case.gold!r} vs {case.pred[:200]!r}: {result.reason}"


def test_the_option_differences_are_plain_math_verifys_own() -> None:
    """Each listed difference is one plain math-verify makes too under grpopp's options: the reason
    is the option, not grpopp's extraction."""
    defaults = MathVerifyConfig()
    by_id = {case.id: case for case in CASES}
    for case_id in DEFAULT_OPTION_DIFFERENCES:
        case = by_id[case_id]
        as_grpopp = UpstreamCase(
            id=case.id,
            gold=case.gold,
            pred=case.pred,
            expected=case.expected,
            precision=defaults.float_rounding,
            strict=defaults.strict,
            allow_set_relation_comp=defaults.allow_set_relation_comp,
            boxed_first=False,
        )
        assert _plain(as_grpopp) != case.expected, case_id
