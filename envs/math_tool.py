"""``math_tool``: math problems solved with the ``python`` and ``calculator`` tools.

The problems are those of ``gsm8k`` or ``math`` (``data``, with their own options in ``data_options``:
the same files, splits and gold answers). The model may call the tools over several turns; the
episode ends at its first turn without a tool call, whose answer math-verify grades exactly as the
single-turn environment grades a completion (the same verifier and worker pool).

``python`` runs each call in a fresh bubblewrap container (``sandbox``'s limits). With
``keep_state`` the episode's earlier successful cells run again first (their output discarded), so
variables persist across calls as in a notebook; without it every call starts empty.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from grpopp.envs.base import Message, Task
from grpopp.envs.multiturn import OverEnvironment, last_assistant
from grpopp.envs.registry import make_env, register_env
from grpopp.envs.tools import (
    CALCULATOR,
    BadToolCall,
    Tool,
    ToolCall,
    ToolEnv,
    ToolEnvConfig,
    call_tool,
    python_output,
    python_program,
    python_tool,
)
from grpopp.rewards.sandbox import SandboxConfig, shared_sandbox
from grpopp.rewards.types import VerifyResult

ToolName = Literal["python", "calculator"]


class MathToolConfig(ToolEnvConfig):
    """Options of the ``math_tool`` environment."""

    data: Literal["gsm8k", "math"] = "gsm8k"
    """Which math environment the problems (and their grading) come from."""

    data_options: dict[str, Any] = Field(default_factory=dict)
    """That environment's options (``path``, ``test_path``, ``prompt_template``, ...)."""

    tools: tuple[ToolName, ...] = ("python", "calculator")
    """The tools the model may call."""

    keep_state: bool = False
    """``python`` calls of an episode share their variables (earlier cells run again first)."""

    sandbox: SandboxConfig = SandboxConfig(wall_timeout_s=5.0, cpu_time_s=3, memory_mb=512)
    """Limits of each ``python`` call's container."""

    max_turns: int = Field(6, ge=1)
    max_total_tokens: int = Field(2048, ge=1)


@register_env("math_tool")
class MathToolEnv(ToolEnv[MathToolConfig], OverEnvironment[MathToolConfig]):
    """Math word problems with tools; graded by math-verify on the final answer."""

    config_class = MathToolConfig

    def __init__(self, config: MathToolConfig) -> None:
        self.inner = make_env(config.data, **config.data_options)
        super().__init__(config)

    def make_tools(self) -> Sequence[Tool]:
        made = {"calculator": CALCULATOR, "python": python_tool(self.config.sandbox)}
        return [made[name] for name in self.config.tools]

    def start(self, task: Task) -> dict[str, list[str]]:
        return {"cells": []}

    def run_call(self, state: Any, call: ToolCall | BadToolCall) -> tuple[str, bool]:
        if not (self.config.keep_state and isinstance(call, ToolCall) and call.name == "python"):
            return call_tool(self.tools, call, self.config.tool_timeout)
        code = call.arguments.get("code")
        if not isinstance(code, str):
            return 'error: invalid arguments for python: "code" must be a string', True
        result = shared_sandbox(self.config.sandbox).run(python_program(code, state["cells"]))
        text, failed = python_output(result)
        if result.ok:
            state["cells"].append(code)
        return (f"error: {text}" if failed else text), failed

    def verify_episode(self, task: Task, transcript: list[Message]) -> VerifyResult:
        return self.inner.verify(self.as_inner(task), last_assistant(transcript))

    def judge_episodes(self, tasks: Sequence[Task], transcripts: Sequence[list[Message]]) -> list[VerifyResult]:
        """The math environment's batched grading of each final answer (its worker pool)."""
        finals = [last_assistant(t) for t in transcripts]
        return self.inner.judge_batch([self.as_inner(t) for t in tasks], finals)

    def gold_turn(self, task: Task, transcript: list[Message]) -> str | None:
        """A calculator call that states the answer, then the answer."""
        if not any(m.role == "tool" for m in transcript) and "calculator" in self.tools:
            call = {"name": "calculator", "arguments": {"expression": task.answer}}
            return f"Let me check.\n<tool_call>{json.dumps(call)}</tool_call>"
        return self.inner.gold_completion(self.as_inner(task))

    def wrong_turn(self, task: Task, transcript: list[Message]) -> str | None:
        return self.inner.wrong_completion(self.as_inner(task))
