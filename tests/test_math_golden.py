"""Golden cases for the math answer verifier: what a careful human grader says, against what it says.

``tests/data/math_golden.jsonl`` holds hand-written cases, one JSON object a line: a gold answer, a
completion, the verdict a careful grader gives ("correct", "incorrect" or "unparseable"), a category
and a note on why. The data holds only the human verdict; where ``MathVerifier`` disagrees, the case
is listed below with the reason, as a strict xfail, so a fix shows up as an unexpected pass.

Grading conventions the expected verdicts follow (each case's note says which one applies):
  1. Value equivalence, not form: 3/4, \\dfrac{3}{4}, 0.75, unsimplified 5! or \\sqrt{8} all count.
  2. A rounded decimal for an exact non-terminating answer (1/3, \\sqrt{2}, \\pi/2) is incorrect.
  3. Units, \\text{}, degree marks and currency are dropped; "\\%" is a unit too, so 50\\% == 50 but
     50\\% != 0.5.
  4. The final answer is the last one the response commits to; reasoning inside <think>...</think>
     (or before a lone </think>, as with R1-style templates) is never the answer.
  5. Hedging ("5 or 6", two boxes, a list of candidates) is incorrect; no answer at all is unparseable.

All cases are graded in one ``verify_many`` call by a module-scoped fixture, so the file runs in a
few seconds.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from grpopp.rewards.math_verify_pool import MathVerifier, MathVerifyConfig
from grpopp.rewards.types import VerifyResult

CASES_PATH = Path(__file__).parent / "data" / "math_golden.jsonl"
EXPECTED_VERDICTS = ("correct", "incorrect", "unparseable")


@dataclass(frozen=True)
class GoldenCase:
    """One line of the golden file."""

    id: str
    category: str
    gold: str
    completion: str
    expected: str
    """The careful grader's verdict: "correct", "incorrect" or "unparseable"."""
    note: str


def load_cases(path: Path = CASES_PATH) -> list[GoldenCase]:
    cases = [GoldenCase(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for case in cases:
        if case.expected not in EXPECTED_VERDICTS:
            raise ValueError(f"{case.id}: expected must be one of {EXPECTED_VERDICTS}, got {case.expected!r}")
    return cases


CASES = load_cases()

# Known misses, split by kind. Each is a strict xfail: when the verifier is fixed the test turns into
# an unexpected pass, and the entry must be removed.
FALSE_NEGATIVES: dict[str, str] = {
    # expected "correct", the verifier says otherwise
    "fd_repeating_bar_correct": "math-verify does not read \\overline repeating decimals: 0.\\overline{3} != 1/3",
    "th_thin_space_correct": "math-verify reads the thin-space separator in 10\\,000 as the product 10*000 = 0",
    "iv_inequality_correct": "math-verify compares the relation x <= 2 with a gold interval only with "
    "allow_set_relation_comp=True, and MathVerifyConfig keeps math-verify's default (False)",
    "adv_boxed_then_retracted_correct": "boxed is tried before any plain-text answer, so a correction written "
    "after the box in plain text is never read",
    "adv_negated_other_correct": "the Answer-line text 'not 5; it is 7' parses to a set of letter products, not 7",
}
FALSE_POSITIVES: dict[str, str] = {
    # expected "incorrect" or "unparseable", the verifier says "correct"
    "fd_third_long_rounded_incorrect": "float_rounding=6: 0.3333333333 rounds to 1/3 at six decimals",
    "pct_as_decimal_incorrect": "math-verify reads 50\\% as 50/100, so it equals 0.5",
    "pct_decimal_gold_incorrect": "math-verify reads 50\\% as 50/100, so it equals 0.5",
    "adv_question_restated_gold_unparseable": "the 'latex' source runs math-verify over the whole text, which takes "
    "the question's own number 10 as the answer",
    "adv_boxed_then_retracted_incorrect": "boxed is tried before any plain-text answer, so the retraction "
    "'it should be 13' after the box is never read",
}
OTHER_MISSES: dict[str, str] = {
    # a verdict other than the grader's that is neither of the above: error, or incorrect vs unparseable
    "adv_question_restated_other_unparseable": "the 'latex' source takes the question's number 4 as the answer: "
    "incorrect, where no answer was given",
}
KNOWN_MISSES: dict[str, str] = {**FALSE_NEGATIVES, **FALSE_POSITIVES, **OTHER_MISSES}


def _param(case: GoldenCase) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[case.id])] if case.id in KNOWN_MISSES else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.fixture(scope="module")
def verifier():
    math_verifier = MathVerifier(MathVerifyConfig(timeout_seconds=5.0))
    yield math_verifier
    math_verifier.close()


@pytest.fixture(scope="module")
def verdicts(verifier) -> dict[str, VerifyResult]:
    """Every case graded in one parallel call, by case id."""
    results = verifier.verify_many([(case.gold, case.completion) for case in CASES])
    return {case.id: result for case, result in zip(CASES, results, strict=True)}


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_golden_case(case: GoldenCase, verdicts: dict[str, VerifyResult]) -> None:
    result = verdicts[case.id]
    assert result.status == case.expected, (
        f"{case.note} | gold={case.gold!r} extracted={result.extracted!r} "
        f"decided_by={result.decided_by!r} reason={result.reason!r}"
    )


def test_miss_counts_match_known_misses(verdicts: dict[str, VerifyResult]) -> None:
    """The misses are exactly the listed ones: false negatives and false positives, each by id."""
    false_negatives = {c.id for c in CASES if c.expected == "correct" and verdicts[c.id].status != "correct"}
    false_positives = {c.id for c in CASES if c.expected != "correct" and verdicts[c.id].status == "correct"}
    other_misses = {c.id for c in CASES if verdicts[c.id].status != c.expected} - false_negatives - false_positives
    print(
        f"\nmath golden: {len(CASES)} cases, {len(false_negatives)} false negatives, "
        f"{len(false_positives)} false positives, {len(other_misses)} other misses"
    )
    assert false_negatives == set(FALSE_NEGATIVES)
    assert false_positives == set(FALSE_POSITIVES)
    assert other_misses == set(OTHER_MISSES)


def test_golden_file_is_well_formed() -> None:
    """Unique ids, at least 160 cases, both verdicts in every category, xfail entries that fit the data."""
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]
    assert len(CASES) >= 160
    for category in {case.category for case in CASES}:
        kinds = {case.expected == "correct" for case in CASES if case.category == category}
        if category != "no_answer":
            assert kinds == {True, False}, f"{category} needs both correct and not-correct cases"
    assert set(KNOWN_MISSES) <= set(ids), set(KNOWN_MISSES) - set(ids)
    expected = {case.id: case.expected for case in CASES}
    assert all(expected[i] == "correct" for i in FALSE_NEGATIVES), "a false negative must expect 'correct'"
    assert all(expected[i] != "correct" for i in FALSE_POSITIVES), "a false positive must not expect 'correct'"
    assert len(KNOWN_MISSES) == len(FALSE_NEGATIVES) + len(FALSE_POSITIVES) + len(OTHER_MISSES), "an id is listed twice"
