"""Answer extraction: the final statement wins, a box run is one answer, numbers stand as tokens.

Every expected value is read off the text by hand: what a careful grader would take as the answer.
"""

from __future__ import annotations

import pytest

from grpopp.rewards.extract import extract_answer, find_answer_line, find_boxed, find_last_number, rank_answers


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("\\boxed{(2,2)} and \\boxed{(6,2)}", "(2,2), (6,2)"),  # one statement in two boxes
        ("$\\boxed{1}$, $\\boxed{2}$, and $\\boxed{3}$.", "1, 2, 3"),
        ("\\[ \\boxed{(1, 2)}, \\boxed{(2, 1)} \\]", "(1, 2), (2, 1)"),
        ("It is either $\\boxed{5}$ or $\\boxed{6}$.", "5, 6"),  # a hedge reads as both, equal to neither
        ("First \\boxed{5}, then the final answer \\boxed{3}", "3"),  # two statements: the last
        ("First guess $\\boxed{6}$. Rechecking the count gives $\\boxed{8}$.", "8"),
        ("\\boxed{5} \\text{ and } \\boxed{5}", "5"),  # the same answer twice is one answer
        ("\\boxed{\\frac{a}{b_{1}}}", "\\frac{a}{b_{1}}"),
        ("no box here", None),
    ],
)
def test_final_boxed_statement(text: str, answer: str | None) -> None:
    found = find_boxed(text)
    assert (found.text if found else None) == answer
    if found is not None:  # the span covers the statement's boxes, first to last
        assert text[found.start :].startswith(("\\boxed", "\\fbox")) and text[: found.end].endswith("}")


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Final Answer: The final answer is $14{,}916$. I hope it is correct.", "14{,}916"),  # the inner marker
        ("The answer is $16,\\!386.20$. I apologize for the repetition.", "16,\\!386.20"),  # the sentence ends
        ("The answer is 3.5 meters", "3.5 meters"),  # a decimal point is no sentence end
        ("Answer: **73**", "73"),
        ("the answer without doubt", None),
    ],
)
def test_answer_line(text: str, answer: str | None) -> None:
    found = find_answer_line(text)
    assert (found.text if found else None) == answer


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("AZYUK2A", None),  # the digit is part of a word
        ("x2 then 3x", None),  # a variable name and a coefficient are no numbers
        ("the sum is 1,234 and then -5.", "-5"),
        ("so 7, 8 and finally 12 apples", "12"),
        ("10/4 of it", "10/4"),
    ],
)
def test_last_number_stands_as_a_token(text: str, number: str | None) -> None:
    found = find_last_number(text)
    assert (found.text if found else None) == number


def test_a_final_answer_after_the_last_box_wins() -> None:
    text = "So the sum is \\boxed{10}. Wait, 7 + 5 = 12. The final answer is 12."
    assert extract_answer(text, ["boxed", "answer_line"]) == ("12", "answer_line")
    assert [method for method, _ in rank_answers(text, ["boxed", "answer_line", "last_number"])] == [
        "answer_line",
        "boxed",
        "last_number",
    ]


def test_a_box_inside_the_answer_line_keeps_the_configured_order() -> None:
    text = "**Answer:** $\\boxed{73}$"
    assert extract_answer(text, ["boxed", "answer_line"]) == ("73", "boxed")
    assert extract_answer(text, ["answer_line", "boxed"]) == ("\\boxed{73}", "answer_line")


def test_a_box_after_the_answer_line_wins() -> None:
    text = "Answer: 5\nOn reflection it is \\boxed{6}."
    assert extract_answer(text, ["answer_line", "boxed"]) == ("6", "boxed")
