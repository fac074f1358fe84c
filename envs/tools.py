"""Tools for multi-turn environments: typed Python functions the model calls, and ``ToolEnv``.

- ``tool(function)`` makes a ``Tool``: its JSON schema comes from the signature and the Google-style
  docstring (``transformers.utils.get_json_schema``, the schema chat templates take as ``tools=``);
  arguments are validated against the signature by pydantic (``validate_call``) before the call.
- A parser reads tool calls out of an assistant turn. ``HermesParser`` reads the Hermes / Qwen
  format, ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; another format is a class
  with the same ``parse`` and ``stop`` (``ToolCallParser``).
- ``ToolEnv`` answers a turn that calls tools with one ``tool`` message per call, in order, and ends
  the episode at a turn without a call (the final answer). A bad call (unparseable, an unknown tool,
  invalid arguments, a tool that raises or overruns ``tool_timeout``) is answered with an error
  message as that tool's result and counted (``Reply.tool_errors``); it never ends the run.
- Built-in tools: ``calculator`` (arithmetic through ``ast``, never ``eval``) and ``python_tool``
  (a program in the bubblewrap sandbox, one container per call; with ``keep_state`` the earlier
  cells of the episode run again first, their output discarded).

How the model learns about the tools (``grpopp.rollout.chat.prompt_ids``): through the chat
template's ``tools=`` argument when the template renders it, otherwise through a system message
(``TOOLS_SYSTEM_PROMPT``; for a plain-text prompt, the same text before it).
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import operator
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, validate_call

from grpopp.envs.base import Message, Task
from grpopp.envs.multiturn import MultiTurnConfig, MultiTurnEnv, Reply
from grpopp.rewards.sandbox import ExecResult, SandboxConfig, shared_sandbox

TOOLS_SYSTEM_PROMPT = (
    "You may call these tools:\n<tools>\n{tools}\n</tools>\n"
    'To call a tool, write <tool_call>{{"name": <tool name>, "arguments": <JSON object>}}</tool_call>; '
    "its result comes back in the next message. Answer without a tool call when you are done."
)
"""The system message that describes the tools when the chat template does not render ``tools=``
(``{tools}``: one JSON schema per line)."""


@dataclass(frozen=True)
class Tool:
    """A Python function the model may call."""

    name: str
    function: Callable[..., Any]
    schema: dict[str, Any]
    """The JSON schema of the function ({"type": "function", "function": {...}})."""
    validated: Callable[..., Any] = field(repr=False)
    """``function`` with its arguments checked against its signature (pydantic ``validate_call``)."""


def tool(function: Callable[..., Any]) -> Tool:
    """A ``Tool`` from a typed function with a Google-style docstring (a summary, then ``Args:``
    describing every argument). The schema is ``transformers.utils.get_json_schema``'s."""
    from transformers.utils.chat_template_utils import (
        DocstringParsingException,
        TypeHintParsingException,
        get_json_schema,
    )

    try:
        schema = get_json_schema(function)
    except (DocstringParsingException, TypeHintParsingException) as exc:
        raise TypeError(
            f"tool {getattr(function, '__name__', function)!r}: {exc}. A tool needs a type hint on every argument "
            "and a docstring with a summary line and an 'Args:' section describing each argument"
        ) from exc
    return Tool(schema["function"]["name"], function, schema, validate_call(function))


class ToolCall(BaseModel):
    """One call parsed from an assistant turn."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    arguments: dict[str, JsonValue] = {}


class BadToolCall(BaseModel):
    """A tool call that could not be parsed; ``error`` tells the model why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error: str


class ToolCallParser(Protocol):
    """Reads tool calls out of an assistant turn."""

    stop: tuple[str, ...]
    """Stop strings that end a turn after a call (the model waits for the result there)."""

    def parse(self, text: str) -> list[ToolCall | BadToolCall]:
        """The calls of ``text`` in order; empty when it calls no tool."""
        ...


class HermesParser:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Hermes 2 Pro, Qwen 2.5 and 3)."""

    stop: tuple[str, ...] = ("</tool_call>",)
    _CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)

    def parse(self, text: str) -> list[ToolCall | BadToolCall]:
        calls: list[ToolCall | BadToolCall] = []
        for body in self._CALL.findall(text):
            try:
                data = json.loads(body.strip())
            except json.JSONDecodeError as exc:
                calls.append(BadToolCall(error=f"the tool call is not valid JSON ({exc.msg} at {exc.pos})"))
                continue
            if not isinstance(data, dict) or not isinstance(data.get("name"), str):
                calls.append(BadToolCall(error='a tool call must be a JSON object with a string "name"'))
                continue
            arguments = data.get("arguments", {})
            if isinstance(arguments, str):  # some models write the arguments as a JSON string
                with contextlib.suppress(json.JSONDecodeError):
                    arguments = json.loads(arguments)
            if not isinstance(arguments, dict):
                calls.append(BadToolCall(error=f'"arguments" of {data["name"]} must be a JSON object'))
                continue
            calls.append(ToolCall(name=data["name"], arguments=arguments))
        return calls


def call_tool(tools: dict[str, Tool], call: ToolCall | BadToolCall, timeout: float) -> tuple[str, bool]:
    """(the result the model reads, whether the call failed). Never raises."""
    if isinstance(call, BadToolCall):
        return f"error: {call.error}", True
    found = tools.get(call.name)
    if found is None:
        return f"error: unknown tool {call.name!r}; the tools are {', '.join(sorted(tools)) or 'none'}", True
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = found.validated(**call.arguments)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
            outcome["error"] = f"invalid arguments for {call.name}: {problems}"
        except Exception as exc:
            outcome["error"] = f"{call.name} raised {type(exc).__name__}: {exc}"

    worker = threading.Thread(target=run, name=f"grpopp-tool-{call.name}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return f"error: {call.name} took more than {timeout:g} s", True
    if "error" in outcome:
        return f"error: {outcome['error']}"[:4000], True
    value = outcome.get("value")
    return (value if isinstance(value, str) else json.dumps(value, default=str))[:4000], False


class ToolEnvConfig(MultiTurnConfig):
    """``MultiTurnConfig`` plus the tools' limits."""

    tool_timeout: float = Field(10.0, gt=0)
    """Seconds one tool call may take; beyond it the model reads an error (the python tool's own
    sandbox limits are ``sandbox``'s)."""

    max_calls_per_turn: int = Field(4, ge=1)
    """Calls of one turn that run; the model reads an error for each one beyond."""


ToolConfigT = TypeVar("ToolConfigT", bound=ToolEnvConfig)


class ToolEnv(MultiTurnEnv[ToolConfigT]):
    """A multi-turn environment whose turns call tools (module docstring). Subclasses set
    ``config_class``, implement ``num_tasks``, ``task``, ``verify_episode`` and ``make_tools``."""

    config_class: ClassVar[type[MultiTurnConfig]] = ToolEnvConfig
    parser: ToolCallParser = HermesParser()

    def __init__(self, config: ToolConfigT) -> None:
        super().__init__(config)
        self.tools: dict[str, Tool] = {t.name: t for t in self.make_tools()}

    def make_tools(self) -> Sequence[Tool]:
        """The tools of this environment."""
        return ()

    @property
    def tool_schemas(self) -> list[dict[str, Any]]:
        return [t.schema for t in self.tools.values()]

    @property
    def stop(self) -> tuple[str, ...]:
        return self.parser.stop

    def respond(self, task: Task, state: Any, transcript: list[Message]) -> Reply:
        calls = self.parser.parse(transcript[-1].content)
        if not calls:
            return Reply(done=True)
        messages, errors = [], 0
        for index, call in enumerate(calls):
            if index >= self.config.max_calls_per_turn:
                content, failed = f"error: at most {self.config.max_calls_per_turn} tool calls run per turn", True
            else:
                content, failed = self.run_call(state, call)
            errors += failed
            name = call.name if isinstance(call, ToolCall) else None
            messages.append(Message(role="tool", content=content, name=name))
        return Reply(messages=messages, tool_calls=len(calls), tool_errors=errors)

    def run_call(self, state: Any, call: ToolCall | BadToolCall) -> tuple[str, bool]:
        """One call's result; environments with stateful tools override it (``python_tool``)."""
        return call_tool(self.tools, call, self.config.tool_timeout)


# -- calculator ---------------------------------------------------------------------------------------

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_DIGITS = 1000
"""The calculator refuses a number with more digits than this (``9**9**9`` would take the machine)."""


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(repr(node.value))  # 0.1 as one tenth, not its binary approximation
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return Fraction(_UNARY[type(node.op)](_evaluate(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1:
                raise ValueError("only whole-number powers are supported")
            size = math.log10(max(abs(left.numerator), abs(left.denominator), 2)) * abs(right.numerator)
            if size > _MAX_DIGITS:
                raise ValueError(f"the result would have more than {_MAX_DIGITS} digits")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ZeroDivisionError("division by zero")
        return Fraction(_BINARY[type(node.op)](left, right))
    raise ValueError(f"unsupported expression element {type(node).__name__}: use numbers, + - * / // % ** and ()")


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly and return the result.

    Args:
        expression: Numbers combined with + - * / // % ** and parentheses, e.g. "(3 + 4) * 2 / 7".
    """
    value = _evaluate(ast.parse(expression.strip(), mode="eval"))
    if value.denominator == 1:
        return str(value.numerator)
    return repr(float(value))


CALCULATOR = tool(calculator)
"""The ``calculator`` tool."""


# -- python -------------------------------------------------------------------------------------------

_OUTPUT_LIMIT = 2000
"""Characters of a python call's output the model reads (the tail is cut with a note)."""


def python_program(code: str, earlier: Sequence[str] = ()) -> str:
    """The program one ``python`` call runs: the ``earlier`` cells of the episode first with their
    output discarded (``keep_state``), then ``code``; each compiled as its own cell."""
    lines = ["import contextlib as _c, io as _io"]
    for cell in earlier:
        lines.append("with _c.redirect_stdout(_io.StringIO()), _c.redirect_stderr(_io.StringIO()):")
        lines.append(f"    exec(compile({cell!r}, '<cell>', 'exec'), globals())")
    lines.append(f"exec(compile({code!r}, '<cell>', 'exec'), globals())")
    return "\n".join(lines) + "\n"


def python_output(result: ExecResult) -> tuple[str, bool]:
    """(what the model reads of a sandboxed run, whether the tool itself failed). The program's own
    exception is an ordinary result (its traceback); the sandbox failing to run it is a tool error."""
    if result.error is not None:
        return f"error: the sandbox could not run the program: {result.error}", True
    text = result.stdout
    if result.timed_out or result.limits_hit:
        text += f"\n[stopped: {', '.join(result.limits_hit) or 'wall'} limit]"
    elif result.exit_code != 0:
        text += result.stderr[-_OUTPUT_LIMIT:]
    if len(text) > _OUTPUT_LIMIT:
        text = text[:_OUTPUT_LIMIT] + f"\n[output cut at {_OUTPUT_LIMIT} characters]"
    return text or "(no output)", False


def python_tool(sandbox_config: SandboxConfig) -> Tool:
    """The ``python`` tool: ``code`` runs in a fresh bubblewrap container with ``sandbox_config``'s
    limits (``grpopp.rewards.sandbox``); the model reads its stdout (and stderr when it fails)."""

    def python(code: str) -> str:
        """Run a Python program in a sandbox and return what it prints. Use print() to see values.

        Args:
            code: The Python program to run.
        """
        text, failed = python_output(shared_sandbox(sandbox_config).run(python_program(code)))
        if failed:
            raise RuntimeError(text)
        return text

    return tool(python)
