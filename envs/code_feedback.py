"""``code_feedback``: write a program, see the first public test it fails, revise.

The problems are those of ``code`` (``data_options``: the same files, formats and sandbox). Each
problem's first ``public_tests`` tests are public: after every turn the environment runs the turn's
program against them in the sandbox and, when one fails, answers with that test (its input and
expected output, or its test code) and what went wrong; the model may revise. The episode ends when
the public tests pass, or after ``max_turns`` turns. The reward comes from every test of the problem
(the hidden ones too) on the last program, judged outside the sandbox exactly as ``code`` judges a
completion. A turn without a complete ```python block gets a request for one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from grpopp.envs.base import Message, Task
from grpopp.envs.code import extract_program
from grpopp.envs.multiturn import MultiTurnConfig, OverEnvironment, Reply, last_assistant
from grpopp.envs.registry import make_env, register_env
from grpopp.rewards.types import VerifyResult


class CodeFeedbackConfig(MultiTurnConfig):
    """Options of the ``code_feedback`` environment."""

    data_options: dict[str, Any] = Field(default_factory=dict)
    """Options of the ``code`` environment the problems come from (``path``, ``sandbox``, ...)."""

    public_tests: int = Field(1, ge=1)
    """Tests of each problem shown as feedback (the first ones); every test judges the final program."""

    feedback: str = "Your program failed a test.\n{test}\nResult: {reason}\nFix the program and give it again in full."
    """The answer to a failing turn; ``{test}`` and ``{reason}`` are replaced."""

    no_program: str = "I found no complete ```python code block. Give the whole program in one."
    """The answer to a turn without a program."""

    max_turns: int = Field(3, ge=1)
    max_total_tokens: int = Field(3072, ge=1)


@register_env("code_feedback")
class CodeFeedbackEnv(OverEnvironment[CodeFeedbackConfig]):
    """Programs revised from public-test feedback; rewarded on every test of the final program."""

    config_class = CodeFeedbackConfig

    def __init__(self, config: CodeFeedbackConfig) -> None:
        self.inner = make_env("code", **config.data_options)
        super().__init__(config)

    def respond(self, task: Task, state: object, transcript: list[Message]) -> Reply:
        turn = transcript[-1].content
        if extract_program(turn) is None:
            return Reply(messages=[Message(role="user", content=self.config.no_program)])
        public = self.as_inner(task, tests=(task.tests or [])[: self.config.public_tests])
        result = self.inner.verify(public, turn)
        if result.status == "correct":
            return Reply(done=True)
        if result.status in ("error", "timeout"):  # the sandbox could not judge: an environment fault
            raise RuntimeError(f"the public tests could not run: {result.reason}")
        failed = _first_failed(result.reason)
        test = describe_test((task.tests or [])[failed] if failed < len(task.tests or []) else None)
        reason = result.reason.split(": ", 1)[-1] if ": " in result.reason else result.reason
        return Reply(messages=[Message(role="user", content=self.config.feedback.format(test=test, reason=reason))])

    def verify_episode(self, task: Task, transcript: list[Message]) -> VerifyResult:
        return self.inner.verify(self.as_inner(task), last_assistant(transcript))

    def judge_episodes(self, tasks: Sequence[Task], transcripts: Sequence[list[Message]]) -> list[VerifyResult]:
        """The code environment's batched judging (every run in the sandbox pool at once)."""
        return self.inner.judge_batch([self.as_inner(t) for t in tasks], [last_assistant(t) for t in transcripts])

    def gold_turn(self, task: Task, transcript: list[Message]) -> str | None:
        """The reference solution at once."""
        return self.inner.gold_completion(self.as_inner(task))

    def wrong_turn(self, task: Task, transcript: list[Message]) -> str | None:
        return self.inner.wrong_completion(self.as_inner(task))


def _first_failed(reason: str) -> int:
    """The index of the first failed test in a ``code`` verdict's reason ("... ; test 3: wrong answer ...")."""
    _, _, tail = reason.partition("; test ")
    head = tail.split(":", 1)[0]
    return int(head) if head.isdigit() else 0


def describe_test(test: Any) -> str:
    """A public test as the model reads it: stdin and expected stdout, a call and its expected value,
    or the test code."""
    if not isinstance(test, dict):
        return "(the test is not available)"
    if "input" in test and "output" in test:
        return f"Input:\n{test['input']}\nExpected output:\n{test['output']}"
    if test.get("type") == "call":
        return f"Call with arguments {json.dumps(test.get('args'))}; expected {json.dumps(test.get('expected'))}"
    return f"Test:\n{test.get('code', '')}"
