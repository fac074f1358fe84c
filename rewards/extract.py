"""Answer extraction from free-form completions: boxed, "Answer:" lines, <answer> tags, last number.

Used by the exact-answer environments (arithmetic, countdown) and to pre-select the span that the
math verifier parses. Each extractor returns the answer text or None; ``extract_answer`` tries the
configured methods in order and reports which one matched.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal, TypeAlias

ExtractionMethod: TypeAlias = Literal["boxed", "answer_line", "last_number", "answer_tag"]

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
# "Answer: X", "Final answer = X", "The answer is X", "the final answer is: X"; not "the answer without ..."
_ANSWER_LINE = re.compile(r"(?:final\s+answer|answer)\s*(?:is\s*[:=]?|[:=])\s*(.+)", re.IGNORECASE)


def boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` (and ``\\fbox{...}``) with balanced braces, in order."""
    found = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, match.end()
        for pos in range(start, len(text)):
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[start:pos].strip())
                    break
    return found


def extract_boxed(text: str) -> str | None:
    """The last ``\\boxed{...}``: models that box several times usually box the final one last."""
    contents = boxed_contents(text)
    return contents[-1] if contents else None


def extract_answer_line(text: str) -> str | None:
    """The text after the last "Answer:" / "The answer is" / "Final answer:" marker, on its line."""
    matches = [m.group(1) for line in text.splitlines() if (m := _ANSWER_LINE.search(line))]
    if not matches:
        return None
    answer = matches[-1].strip().rstrip(".").strip()
    answer = answer.strip("*`$ ").strip()  # markdown bold **73**, code `73`, inline math $73$
    return answer or None


def extract_last_number(text: str) -> str | None:
    """The last number in the text (thousands separators removed), e.g. "-1,234.5" -> "-1234.5"."""
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def extract_answer_tag(text: str) -> str | None:
    """The content of the last ``<answer>...</answer>`` (reasoning-gym's and TinyZero's convention)."""
    matches = _ANSWER_TAG.findall(text)
    return str(matches[-1]).strip() if matches else None


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "answer_tag": extract_answer_tag,
    "boxed": extract_boxed,
    "answer_line": extract_answer_line,
    "last_number": extract_last_number,
}


def strip_thinking(text: str) -> str:
    """The part of a completion outside its reasoning, so an answer is never taken from the reasoning.

    1. Complete ``<think>...</think>`` blocks are dropped (interleaved reasoning keeps the text between).
    2. Everything before a remaining ``</think>`` is reasoning whose ``<think>`` was in the prompt
       (the DeepSeek-R1 template).
    3. Everything from a ``<think>`` that is never closed (a truncated completion) is reasoning too.
    """
    text = _THINK_BLOCK.sub("", text)
    _, closed, tail = text.rpartition("</think>")
    if closed:
        text = tail
    head, opened, _ = text.partition("<think>")
    return head if opened else text


def extract_answer(text: str, methods: tuple[ExtractionMethod, ...] | list[ExtractionMethod]) -> tuple[str, str] | None:
    """Try ``methods`` in order on ``text``; return (answer, method) for the first that matches."""
    for method in methods:
        answer = EXTRACTORS[method](text)
        if answer is not None:
            return answer, method
    return None
