"""math-verify's own test cases, read from its source distribution (nothing of it is copied here).

``make setup`` downloads the sdist of the installed math-verify with pip into ``<venv>/upstream``
(``GRPOPP_UPSTREAM_DIR`` overrides the folder). Its ``tests/`` hold (gold, prediction, expected)
cases as ``pytest.mark.parametrize`` tables over a ``compare_strings(gold, pred, ...)`` or
``verify(parse(gold), parse(pred))`` call, plus a few inline ``assert compare_strings(...) == 1``.
This module reads them with ``ast`` without importing or running any of math-verify's test code:
rows are literals (``ast.literal_eval``), except one f-string over ``math.sqrt`` that a small
evaluator below computes. The options of each case (extraction targets, float rounding, strict,
set-relation comparison) come from the keyword arguments of the call in its test function.
"""

from __future__ import annotations

import ast
import importlib.metadata
import math
import os
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UPSTREAM_DIR_VARIABLE = "GRPOPP_UPSTREAM_DIR"


@dataclass(frozen=True)
class UpstreamCase:
    """One (gold, prediction, expected) case of math-verify's suite, with the options it runs under."""

    id: str
    """"<file>::<test>[<row>]" (or "#L<line>" for an inline assert)."""

    gold: str
    pred: str
    expected: bool
    match_types: tuple[str, ...] = ("latex", "expr")
    precision: int = 6
    strict: bool = True
    allow_set_relation_comp: bool = False
    boxed_first: bool = True
    """compare_strings uses ``LatexExtractionConfig(boxed_match_priority=0)``; plain ``parse`` the
    default priority 50 (answer prefixes before boxes)."""


def sdist_path() -> Path:
    """Where set-up put the sdist of the installed math-verify; raises with the fix when it is missing."""
    version = importlib.metadata.version("math-verify")
    folder = Path(os.environ.get(UPSTREAM_DIR_VARIABLE) or Path(sys.prefix) / "upstream")
    path = folder / f"math_verify-{version}.tar.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: `make setup` downloads it (pip download --no-binary :all: --no-deps "
            f"math-verify=={version} -d {folder}), or set {UPSTREAM_DIR_VARIABLE} to a folder that holds it"
        )
    return path


def load_cases(path: Path) -> list[UpstreamCase]:
    """Every (gold, prediction, expected) case of the sdist's ``tests/test_*.py``, in file order."""
    cases: list[UpstreamCase] = []
    with tarfile.open(path) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            parts = member.name.split("/")
            if len(parts) != 3 or parts[1] != "tests" or not parts[2].startswith("test_") or not member.isfile():
                continue
            handle = archive.extractfile(member)
            if handle is None or not parts[2].endswith(".py"):
                continue
            module = ast.parse(handle.read().decode("utf-8"))
            for function in module.body:
                if isinstance(function, ast.FunctionDef):
                    cases += _function_cases(parts[2], function)
    return cases


def _function_cases(file: str, function: ast.FunctionDef) -> list[UpstreamCase]:
    call = _comparison_call(function)
    if call is None:
        return []
    tables = [
        d for d in function.decorator_list if isinstance(d, ast.Call) and ast.unparse(d.func).endswith("parametrize")
    ]
    cases = []
    for table in tables:
        names = [name.strip() for name in ast.literal_eval(table.args[0]).split(",")]
        if "gold" not in names or "pred" not in names:
            continue
        rows = table.args[1]
        if not isinstance(rows, ast.List):
            raise ValueError(f"{file}::{function.name}: the parametrize rows are not a list literal")
        for index, row in enumerate(rows.elts):
            values = dict(zip(names, _evaluate(row), strict=True))
            expected = values.get("expected", values.get("result"))
            cases.append(
                _case(f"{file}::{function.name}[{index}]", values["gold"], values["pred"], expected, call, values)
            )
    if not tables:  # inline asserts: assert compare_strings("<gold>", "<pred>", ...) == <expected>
        for node in ast.walk(function):
            if isinstance(node, ast.Compare) and _is_comparison(node.left) and len(node.comparators) == 1:
                inline: ast.Call = node.left  # type: ignore[assignment]
                gold, pred = (ast.literal_eval(arg) for arg in inline.args[:2])
                expected = ast.literal_eval(node.comparators[0])
                cases.append(_case(f"{file}::{function.name}#L{node.lineno}", gold, pred, expected, inline, {}))
    return cases


def _comparison_call(function: ast.FunctionDef) -> ast.Call | None:
    """The compare_strings(...) or verify(parse(...), parse(...)) call a test function makes, if any."""
    for node in ast.walk(function):
        if _is_comparison(node):
            return node  # type: ignore[return-value]
    return None


def _is_comparison(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and ast.unparse(node.func) in ("compare_strings", "verify")


def _case(case_id: str, gold: Any, pred: Any, expected: Any, call: ast.Call, params: dict[str, Any]) -> UpstreamCase:
    """A case with the options of ``call``: keyword literals, or names bound by the row's parameters."""
    options: dict[str, Any] = {}
    for keyword in call.keywords:
        value = params[keyword.value.id] if isinstance(keyword.value, ast.Name) else ast.literal_eval(keyword.value)
        options[keyword.arg or ""] = value
    boxed_first = ast.unparse(call.func) == "compare_strings"
    return UpstreamCase(
        id=case_id,
        gold=str(gold),
        pred=str(pred),
        expected=bool(expected),
        match_types=tuple(options.get("match_types", ("latex", "expr"))),
        precision=int(options.get("precision", 6)),
        strict=bool(options.get("strict", True)),
        allow_set_relation_comp=bool(options.get("allow_set_relation_comp", False)),
        boxed_first=boxed_first,
    )


def _evaluate(node: ast.AST) -> Any:
    """A row's value: a literal, or an f-string of literals and ``math.<function>(<literals>)``."""
    if isinstance(node, ast.Tuple):
        return tuple(_evaluate(item) for item in node.elts)
    if isinstance(node, ast.JoinedStr):
        return "".join(_evaluate(part) for part in node.values)
    if isinstance(node, ast.FormattedValue):
        spec = "" if node.format_spec is None else _evaluate(node.format_spec)
        return format(_evaluate(node.value), spec)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and ast.unparse(node.func.value) == "math":
        return getattr(math, node.func.attr)(*(ast.literal_eval(arg) for arg in node.args))
    return ast.literal_eval(node)
