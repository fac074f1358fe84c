"""``code``: write a Python program that passes hidden tests, run in the OS-isolated sandbox.

Problems come from a local JSONL file in one of the common formats, detected per row:

- APPS / TACO: ``question``, ``input_output`` (JSON, or a JSON string) with ``inputs`` and
  ``outputs``; stdin/stdout tests, or function-call tests when it names ``fn_name``; optional
  ``starter_code`` and ``solutions`` (a list, or a JSON string of one).
- MBPP: ``text`` (or ``prompt``), ``test_list`` of ``assert f(...) == ...`` strings, ``code``.
- HumanEval: ``prompt`` (signature and docstring), ``test`` with ``def check(candidate)``,
  ``entry_point``, ``canonical_solution`` (the body that follows the prompt).

Asserts are converted into (arguments, expected value) pairs once, at load time
(``rewards.code_judge``); the tests stay hidden: the prompt shows the problem, the function name
and, for function tasks without starter code, one call's arguments (never an expected value).
A hand-written sample of 31 problems ships in ``envs/data/code_sample.jsonl`` (with reference
solutions under the usual fields, never shown to the model), so the environment works offline.

Verification: the program is the last fenced code block of the completion (``python``-tagged
blocks preferred; none: "unparseable"); it runs in the sandbox against every test
(``rewards.sandbox``), judged outside it. Reward "all_pass" (1 when every test passes, else 0) or
"fraction" (the share that passes); a crash, timeout or limit counts as a failed test. A sandbox
that cannot start gives status "error": the sample is masked, never scored 0.

Held-out split: a ``test_path`` when given, else a fixed fraction of the problems chosen by a hash
of the question, as ``envs.math_data`` does.
"""

from __future__ import annotations

import json
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from envs.base import EnvConfig, Environment, Split, Task
from envs.math_data import DataFileError, _held_out, _jsonl_rows
from envs.registry import register_env
from rewards.code_judge import (
    AssertConversionError,
    FunctionTest,
    HiddenTests,
    Outcome,
    OutputMatch,
    StdioTest,
    apps_function_tests,
    convert_assert_list,
    convert_check_function,
    judge,
    plan_jobs,
)
from rewards.extract import strip_thinking
from rewards.sandbox import ExecResult, Job, Sandbox, SandboxConfig, SandboxUnavailable
from rewards.types import VerifyResult

RewardMode = Literal["all_pass", "fraction"]
_FENCE = re.compile(r"^```[ \t]*([A-Za-z0-9_+\-]*)[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_PYTHON_TAGS = frozenset({"python", "python3", "py"})
_WRONG = "__grpopp_wrong_answer__"


@dataclass(frozen=True)
class CodeProblem:
    """One problem as loaded: what the model sees, the hidden tests, and a reference solution."""

    question: str
    suite: HiddenTests
    solution: str | None
    """Reference program (never shown to the model); None when the data has none."""

    source: str
    """"file:line" of the row."""

    starter_code: str = ""
    style: str = "apps"
    """Row format: "apps", "mbpp" or "humaneval"."""


class CodeConfig(EnvConfig):
    """Options of the ``code`` environment."""

    path: str | None = None
    """Local .jsonl of problems (APPS/TACO, MBPP or HumanEval rows). None: the shipped sample."""

    test_path: str | None = None
    """Local held-out .jsonl, same formats. None: a held-out slice of the data (see test_fraction)."""

    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    """Share of problems held out for evaluation when there is no test_path (by hash of the question)."""

    reward_mode: RewardMode = "all_pass"
    """"all_pass": 1 when every test passes, else 0. "fraction": the share of tests passed."""

    max_tests: int | None = Field(None, ge=1)
    """Use at most this many tests of each problem (the first ones); None: all."""

    skip_unconvertible: bool = False
    """Skip (with a warning) problems whose asserts cannot be converted, instead of failing to load."""

    sandbox: SandboxConfig = SandboxConfig(wall_timeout_s=6.0, cpu_time_s=4)
    """Isolation and limits of each run; the wall and CPU budgets are per test."""

    output_match: OutputMatch = OutputMatch()
    """How stdout is compared with the expected output of stdio tests."""

    stdio_prompt: str = (
        "{question}\n\nWrite a Python 3 program that reads the input from standard input and prints the answer to "
        "standard output. Give the complete program in one ```python code block."
    )
    """Prompt of stdin/stdout problems; ``{question}`` is replaced."""

    function_prompt: str = (
        "{question}\n\n{signature}Give the complete Python 3 code in one ```python code block; it is imported and "
        "`{fn_name}` is called, nothing is read from standard input."
    )
    """Prompt of function-call problems; ``{question}``, ``{fn_name}`` and ``{signature}`` (the
    starter code, or one call's arguments when there is none) are replaced."""

    @model_validator(mode="after")
    def _check(self) -> CodeConfig:
        for name in ("path", "test_path"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise ValueError(f"{name}: no such file {value!r}; give a .jsonl file of problems")
        if "{question}" not in self.stdio_prompt or "{question}" not in self.function_prompt:
            raise ValueError("stdio_prompt and function_prompt must contain '{question}'")
        if self.output_match.float_tolerance is not None and self.output_match.whitespace == "exact":
            raise ValueError("output_match.float_tolerance compares tokens; set output_match.whitespace to 'tokens'")
        return self


_SANDBOXES: dict[SandboxConfig, Sandbox] = {}
_SANDBOX_LOCK = threading.Lock()


def shared_sandbox(config: SandboxConfig) -> Sandbox:
    """One sandbox (and thread pool) per config in this process; a failure to start is not cached,
    so installing bwrap mid-run is picked up."""
    with _SANDBOX_LOCK:
        if config not in _SANDBOXES:
            _SANDBOXES[config] = Sandbox(config)
        return _SANDBOXES[config]


def extract_program(completion: str) -> str | None:
    """The program in a completion: the last ```python (or ```py / ```python3) block, else the last
    untagged block; None when there is no complete fenced block (e.g. a truncated completion)."""
    blocks = [(match.group(1).lower(), match.group(2)) for match in _FENCE.finditer(strip_thinking(completion))]
    for wanted in (lambda tag: tag in _PYTHON_TAGS, lambda tag: tag == ""):
        chosen = [code for tag, code in blocks if wanted(tag)]
        if chosen and chosen[-1].strip():
            return chosen[-1]
    return None


@register_env("code")
class CodeEnv(Environment[CodeConfig]):
    """Python programs judged by hidden tests in an OS-isolated sandbox; a 31-problem sample ships."""

    config_class = CodeConfig

    def __init__(self, config: CodeConfig) -> None:
        super().__init__(config)
        self.skipped: list[str] = []
        """Problems left out (skip_unconvertible), as "source: reason"."""
        self._splits = self._load()

    # -- data ------------------------------------------------------------------------------------

    def _load(self) -> dict[Split, list[CodeProblem]]:
        cfg = self.config
        sample = Path(str(resources.files("envs") / "data" / "code_sample.jsonl"))
        train = self._read(Path(cfg.path) if cfg.path else sample)
        test = self._read(Path(cfg.test_path)) if cfg.test_path else None
        if self.skipped:
            warnings.warn(
                f"code: skipped {len(self.skipped)} problems with unconvertible tests, first: {self.skipped[0]}",
                stacklevel=3,
            )
        if test is None:
            test = [p for p in train if _held_out(p.question, cfg.test_fraction)]
            train = [p for p in train if not _held_out(p.question, cfg.test_fraction)]
        if not train:
            raise DataFileError("code: no training problems left after reading the data")
        return {"train": train, "test": test}

    def _read(self, path: Path) -> list[CodeProblem]:
        if path.suffix not in (".jsonl", ".json"):
            raise DataFileError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl (one problem per line)")
        problems = []
        for source, row in _jsonl_rows(path):
            try:
                problem = parse_problem(row, source)
            except AssertConversionError as exc:
                if not self.config.skip_unconvertible:
                    raise DataFileError(str(exc)) from None
                self.skipped.append(str(exc))
                continue
            if self.config.max_tests is not None:
                problem = _first_tests(problem, self.config.max_tests)
            problems.append(problem)
        return problems

    # -- environment contract --------------------------------------------------------------------

    def num_tasks(self, split: Split = "train") -> int | None:
        return len(self._splits[split])

    def _problem(self, index: int, split: Split) -> CodeProblem:
        problems = self._splits[split]
        if not 0 <= index < len(problems):
            raise IndexError(f"code {split} has {len(problems)} tasks; index {index} is out of range")
        return problems[index]

    def task(self, index: int, split: Split = "train") -> Task:
        problem = self._problem(index, split)
        suite = problem.suite
        tests: list[Any] = [test.model_dump() for test in (suite.stdio if suite.kind == "stdio" else suite.calls)]
        return Task(
            id=self.task_id(index, split),
            env=self.name,
            split=split,
            index=index,
            prompt=self.make_prompt(self._prompt_text(problem)),
            answer=None,
            tests=tests,
            metadata={"kind": suite.kind, "fn_name": suite.fn_name, "source": problem.source, "style": problem.style},
        )

    def _prompt_text(self, problem: CodeProblem) -> str:
        suite = problem.suite
        if suite.kind == "stdio":
            return self.config.stdio_prompt.format(question=problem.question)
        if problem.style == "humaneval":
            signature = ""  # the HumanEval prompt is the signature and docstring itself
            question = f"Complete this Python function:\n```python\n{problem.question.rstrip()}\n```"
        else:
            question = problem.question
            if problem.starter_code.strip():
                signature = f"Start from:\n```python\n{problem.starter_code.rstrip()}\n```\n"
            else:
                example = ", ".join(json.dumps(arg) for arg in suite.calls[0].args) if suite.calls else ""
                signature = f"Write a function `{suite.fn_name}`, called like `{suite.fn_name}({example})`. "
        return self.config.function_prompt.format(question=question, fn_name=suite.fn_name, signature=signature)

    def verify(self, task: Task, completion: str) -> VerifyResult:
        return self.verify_batch([task], [completion])[0]

    def verify_batch(self, tasks: Sequence[Task], completions: Sequence[str]) -> list[VerifyResult]:
        """All runs of all completions go to the sandbox pool at once; each completion's verdict is
        then made from its own runs."""
        plans: list[tuple[HiddenTests, int, int] | VerifyResult] = []
        jobs: list[Job] = []
        for task, completion in zip(tasks, completions, strict=True):
            plans.append(self._plan(task, completion, jobs))
        if jobs:
            try:
                sandbox = shared_sandbox(self.config.sandbox)
            except SandboxUnavailable as exc:
                failed = VerifyResult.error(f"sandbox unavailable: {exc}", "sandbox")
                return [plan if isinstance(plan, VerifyResult) else failed for plan in plans]
            results = sandbox.run_many(jobs)
        else:
            results = []
        return [
            plan if isinstance(plan, VerifyResult) else self._verdict(plan[0], results[plan[1] : plan[2]])
            for plan in plans
        ]

    def _plan(self, task: Task, completion: str, jobs: list[Job]) -> tuple[HiddenTests, int, int] | VerifyResult:
        """Queue the runs that judge one completion; a VerifyResult when none are needed."""
        try:
            suite = suite_from_task(task)
        except (ValueError, TypeError) as exc:
            return VerifyResult.error(f"task {task.id} has no usable tests: {exc}", "code")
        program = extract_program(completion)
        if program is None:
            return VerifyResult(
                status="unparseable", score=0.0, reason="no complete ```python code block found", decided_by="extract"
            )
        start = len(jobs)
        jobs.extend(plan_jobs(program, suite, self.config.sandbox))
        return suite, start, len(jobs)

    def _verdict(self, suite: HiddenTests, results: Sequence[ExecResult]) -> VerifyResult:
        outcomes = judge(suite, results, self.config.output_match)
        return self.score(outcomes, isolation=results[0].isolation if results else "bwrap")

    def score(self, outcomes: Sequence[Outcome], isolation: str = "bwrap") -> VerifyResult:
        """The reward of a list of test outcomes: an infrastructure error anywhere means no verdict."""
        errors = [o for o in outcomes if o.kind == "error"]
        if errors:
            return VerifyResult.error(f"the sandbox failed: {errors[0].reason}", f"sandbox:{isolation}")
        passed = sum(o.passed for o in outcomes)
        total = len(outcomes)
        first_failure = next(((i, o) for i, o in enumerate(outcomes) if not o.passed), None)
        reason = f"{passed}/{total} tests passed"
        if first_failure is not None:
            index, outcome = first_failure
            detail = f": {outcome.reason}" if outcome.reason else ""
            reason += f"; test {index}: {outcome.kind.replace('_', ' ')}{detail}"
        if self.config.reward_mode == "fraction":
            value = passed / total if total else 0.0
        else:
            value = 1.0 if passed == total and total else 0.0
        status = "correct" if total and passed == total else "incorrect"
        return VerifyResult(status=status, score=value, reason=reason, decided_by=f"sandbox:{isolation}")

    def gold_completion(self, task: Task) -> str:
        solution = self._problem(task.index, task.split).solution
        if solution is None:
            raise ValueError(f"{task.id} has no reference solution (add 'solutions', 'code' or 'canonical_solution')")
        return f"Here is my solution.\n```python\n{solution.rstrip()}\n```"

    def wrong_completion(self, task: Task) -> str:
        if task.metadata.get("kind") == "function":
            name = task.metadata.get("fn_name")
            return f"```python\ndef {name}(*args, **kwargs):\n    return {_WRONG!r}\n```"
        return f"```python\nprint({_WRONG!r})\n```"


# -- row parsing ---------------------------------------------------------------------------------


def suite_from_task(task: Task) -> HiddenTests:
    """The hidden tests of a task, validated (they travel in ``Task.tests`` and ``metadata``)."""
    kind, tests = task.metadata.get("kind"), task.tests
    if kind not in ("stdio", "function") or not tests:
        raise ValueError(f"metadata.kind is {kind!r} and there are {len(tests or [])} tests")
    if kind == "stdio":
        return HiddenTests(kind="stdio", stdio=[StdioTest.model_validate(test) for test in tests])
    fn_name = task.metadata.get("fn_name")
    if not isinstance(fn_name, str):
        raise ValueError("a function task needs metadata.fn_name")
    return HiddenTests(kind="function", fn_name=fn_name, calls=[FunctionTest.model_validate(test) for test in tests])


def _first_tests(problem: CodeProblem, limit: int) -> CodeProblem:
    suite = problem.suite
    suite = suite.model_copy(update={"stdio": suite.stdio[:limit], "calls": suite.calls[:limit]})
    return CodeProblem(problem.question, suite, problem.solution, problem.source, problem.starter_code, problem.style)


def _text_field(row: dict[str, Any], source: str, *names: str) -> str:
    for name in names:
        if isinstance(row.get(name), str) and row[name].strip():
            return str(row[name])
    raise DataFileError(f"{source}: missing text field {' or '.join(map(repr, names))}; the row has {sorted(row)}")


def _json_field(value: Any, source: str, name: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataFileError(f"{source}: field {name!r} is a string but not valid JSON ({exc.msg})") from None
    return value


def _stdio_text(value: Any) -> str:
    """APPS stores each input/output as a string; TACO sometimes as a list of lines."""
    if isinstance(value, list):
        return "\n".join(str(line) for line in value) + "\n"
    return str(value)


def parse_problem(row: dict[str, Any], source: str) -> CodeProblem:
    """One JSONL row in APPS/TACO, MBPP or HumanEval format as a CodeProblem."""
    if "input_output" in row:
        return _parse_apps(row, source)
    if "test_list" in row:
        question = _text_field(row, source, "text", "prompt")
        if str(row.get("test_setup_code") or "").strip():
            raise AssertConversionError(f"{source}: test_setup_code is not supported (the tests would need it)")
        fn_name, calls = convert_assert_list(list(row["test_list"]), source)
        solution = row.get("code") if isinstance(row.get("code"), str) else None
        suite = HiddenTests(kind="function", fn_name=fn_name, calls=calls)
        return CodeProblem(question, suite, solution, source, "", "mbpp")
    if "test" in row and "entry_point" in row:
        prompt = _text_field(row, source, "prompt")
        entry_point = str(row["entry_point"])
        calls = convert_check_function(str(row["test"]), entry_point, source)
        body = row.get("canonical_solution")
        solution = prompt + body if isinstance(body, str) else None
        suite = HiddenTests(kind="function", fn_name=entry_point, calls=calls)
        return CodeProblem(prompt, suite, solution, source, "", "humaneval")
    raise DataFileError(
        f"{source}: unknown row format (keys {sorted(row)}); expected APPS/TACO 'input_output', MBPP 'test_list', "
        "or HumanEval 'test' + 'entry_point'"
    )


def _parse_apps(row: dict[str, Any], source: str) -> CodeProblem:
    question = _text_field(row, source, "question", "problem", "prompt")
    io = _json_field(row["input_output"], source, "input_output")
    if not isinstance(io, dict) or not isinstance(io.get("inputs"), list) or not isinstance(io.get("outputs"), list):
        raise DataFileError(f"{source}: input_output needs lists 'inputs' and 'outputs'")
    inputs, outputs = io["inputs"], io["outputs"]
    if len(inputs) != len(outputs) or not inputs:
        raise DataFileError(f"{source}: input_output has {len(inputs)} inputs and {len(outputs)} outputs; need as many")
    solutions = _json_field(row.get("solutions"), source, "solutions")
    solution = solutions[0] if isinstance(solutions, list) and solutions and isinstance(solutions[0], str) else None
    starter = str(row.get("starter_code") or "")
    fn_name = io.get("fn_name")
    if fn_name:
        try:
            calls = apps_function_tests(inputs, outputs, source)
        except AssertConversionError as exc:
            raise DataFileError(str(exc)) from None
        suite = HiddenTests(kind="function", fn_name=str(fn_name), calls=calls)
    else:
        tests = [StdioTest(input=_stdio_text(i), output=_stdio_text(o)) for i, o in zip(inputs, outputs, strict=True)]
        suite = HiddenTests(kind="stdio", stdio=tests)
    return CodeProblem(question, suite, solution, source, starter, "apps")


def iter_problems(path: Path) -> Iterator[CodeProblem]:
    """Every problem of a JSONL file (used by tests and tools); raises on the first bad row."""
    for source, row in _jsonl_rows(path):
        yield parse_problem(row, source)
