"""Answer extraction from free-form completions: boxed, "Answer:" lines, <answer> tags, last number.

Used by the exact-answer environments (arithmetic, countdown, reasoning-gym) and to pre-select the
span that the math verifier parses. Each ``find_*`` returns the answer with its place in the text
(``Found``), each ``extract_*`` only its text, or None. ``rank_answers`` orders what the configured
methods found so that the final statement wins (a "The final answer is ..." after the last box
overrides it); ``extract_answer`` returns the first of that order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

ExtractionMethod: TypeAlias = Literal["boxed", "answer_line", "last_number", "answer_tag"]
EXPLICIT_METHODS: frozenset[str] = frozenset({"boxed", "answer_line", "answer_tag"})
"""Methods that find an answer the text marks as one; "last_number" is only a fallback."""

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
# A number that stands as a token: not glued to a letter, digit or dot before it ("AZYUK2A" holds none,
# "x2" neither), nor to a letter or digit after it ("3x" is not 3). Thousands separators as 1,234,567.
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?(?!\w)")
# "Answer: X", "Final answer = X", "The answer is X", "the final answer is: X"; not "the answer without ..."
_ANSWER_LINE = re.compile(r"(?:final[ \t]+answer|answer)[ \t]*(?:is[ \t]*[:=]?|[:=])[ \t]*([^\n]+)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=\S)\.\s+(?=[A-Z])")
"""A full stop and a new sentence: where an answer line's answer ends ("3.5" and "e.g. x" do not end it)."""
# What may stand between two boxes of one statement ("\boxed{1}, \boxed{2} and \boxed{3}"): spaces,
# commas, semicolons, math delimiters, LaTeX spacing, "and"/"or" (plain or in \text{}), line breaks \\.
_BOX_CONNECTOR = re.compile(
    r"(?:\s|[,;~&]|\$|\\[()\[\],;:! ]|\\q?quad|\\\\|\\text\{\s*(?:and|or|,)?\s*\}|\b(?:and|or)\b)*"
)


@dataclass(frozen=True)
class Found:
    """An answer found in a text: what it says and where it stands (``text[start:end]`` holds it)."""

    text: str
    start: int
    end: int


def boxed_spans(text: str) -> list[Found]:
    """Every ``\\boxed{...}`` (and ``\\fbox{...}``) with balanced braces, in order: contents and span."""
    found = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, match.end()
        for pos in range(start, len(text)):
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    found.append(Found(text[start:pos].strip(), match.start(), pos + 1))
                    break
    return found


def boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` (and ``\\fbox{...}``) with balanced braces, in order."""
    return [box.text for box in boxed_spans(text)]


def find_boxed(text: str) -> Found | None:
    """The final boxed statement: the last box, together with the boxes just before it that only
    connectors separate from it ("\\boxed{(2,2)} and \\boxed{(6,2)}", "\\boxed{1}, \\boxed{2}").

    Several distinct parts are joined with ", ", so they are compared as one answer (a tuple or set,
    as math-verify itself reads boxes joined by "and"/"or"/","); a hedge "\\boxed{5} or \\boxed{6}"
    therefore reads as {5, 6}, which equals neither. Boxes with other words between them ("first
    \\boxed{5}, then the final \\boxed{3}") are separate statements: only the last one counts.
    """
    boxes = boxed_spans(text)
    if not boxes:
        return None
    run = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        if not _BOX_CONNECTOR.fullmatch(text, box.end, run[0].start):
            break
        run.insert(0, box)
    parts = list(dict.fromkeys(box.text for box in run))  # the same answer boxed twice is one answer
    return Found(", ".join(parts), run[0].start, run[-1].end)


def find_answer_line(text: str) -> Found | None:
    """The text after the last "Answer:" / "The answer is" / "Final answer:" marker, on its line."""
    matches = list(_ANSWER_LINE.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    start, answer = last.start(1), last.group(1)
    while inner := _ANSWER_LINE.search(answer):  # "Final Answer: The final answer is 7": the last marker
        start, answer = start + inner.start(1), inner.group(1)
    answer = _SENTENCE_END.split(answer, maxsplit=1)[0]  # "is 7. I checked it twice." -> "7"
    end = start + len(answer)
    answer = answer.strip().rstrip(".").strip()
    answer = answer.strip("*`$ ").strip()  # markdown bold **73**, code `73`, inline math $73$
    return Found(answer, last.start(), end) if answer else None


def find_last_number(text: str) -> Found | None:
    """The last number that stands as a token (thousands separators removed), e.g. "-1,234.5" -> "-1234.5"."""
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    return Found(last.group().replace(",", ""), last.start(), last.end())


def find_answer_tag(text: str) -> Found | None:
    """The content of the last ``<answer>...</answer>`` (reasoning-gym's and TinyZero's convention)."""
    matches = list(_ANSWER_TAG.finditer(text))
    if not matches:
        return None
    return Found(matches[-1].group(1).strip(), matches[-1].start(), matches[-1].end())


FINDERS: dict[str, Callable[[str], Found | None]] = {
    "answer_tag": find_answer_tag,
    "boxed": find_boxed,
    "answer_line": find_answer_line,
    "last_number": find_last_number,
}


def _text_of(finder: Callable[[str], Found | None]) -> Callable[[str], str | None]:
    def extract(text: str) -> str | None:
        found = finder(text)
        return None if found is None else found.text

    extract.__doc__ = finder.__doc__
    return extract


extract_boxed = _text_of(find_boxed)
extract_answer_line = _text_of(find_answer_line)
extract_last_number = _text_of(find_last_number)
extract_answer_tag = _text_of(find_answer_tag)
EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "answer_tag": extract_answer_tag,
    "boxed": extract_boxed,
    "answer_line": extract_answer_line,
    "last_number": extract_last_number,
}


def rank_answers(text: str, methods: Sequence[str]) -> list[tuple[str, Found]]:
    """What each of ``methods`` finds in ``text``, most authoritative first.

    The final statement wins: among the explicit markers (boxed, answer line, answer tag), one that
    stands wholly after another one overrides it ("... \\boxed{10}. Rechecking: the final answer is
    12." gives 12), while one inside another ("**Answer:** $\\boxed{73}$") does not. Markers that
    neither follow nor enclose each other keep the order of ``methods``; the fallbacks
    ("last_number" and methods not found here) come after every explicit marker, in that order.
    """
    found = [(method, hit) for method in methods if method in FINDERS and (hit := FINDERS[method](text)) is not None]
    explicit = [(method, hit) for method, hit in found if method in EXPLICIT_METHODS]
    overridden = {
        method for method, hit in explicit if any(other.start >= hit.end for _, other in explicit if other is not hit)
    }
    final = [(method, hit) for method, hit in explicit if method not in overridden]
    return final + [pair for pair in found if pair not in final]


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


def extract_answer(text: str, methods: Sequence[ExtractionMethod]) -> tuple[str, str] | None:
    """The answer ``methods`` find in ``text`` (ranked by ``rank_answers``): (answer, method), or None."""
    ranked = rank_answers(text, methods)
    return (ranked[0][1].text, ranked[0][0]) if ranked else None
