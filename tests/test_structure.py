"""The package graph: which of grpopp's packages imports which, read from the source with ``ast``.

Packages are the sub-packages of ``grpopp`` (``grpopp.envs``, ``grpopp.training``, ...) and its two
leaf modules (``grpopp.config_tools``, ``grpopp.progress``). The graph must have no cycle, the leaves
and the environments must import nothing above them, and importing the environment registry must not
load torch (as reasoning-gym's registry imports only its own package).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"grpopp_trainer": "grpopp", "envs": "grpopp.envs", "rewards": "grpopp.rewards", "cli": "grpopp.cli"}


def module_name(path: Path) -> str:
    """grpopp's installed name of a source file (pyproject's package-dir mapping)."""
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [FOLDERS[folder], *rest]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """The graph node of a module: grpopp.<first part> (grpopp itself for the root package)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def imported_modules(path: Path) -> set[str]:
    """Every grpopp module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "grpopp" or name.startswith("grpopp.")}


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            source = package_of(module_name(path))
            targets = {package_of(name) for name in imported_modules(path)} - {source, "grpopp"}
            graph.setdefault(source, set()).update(targets)
    # "from grpopp.learner import checkpoint" names a module; a name like grpopp.objective.losses.X is dropped
    # to its package, so only packages that exist are nodes.
    return {node: {t for t in targets if t in graph} for node, targets in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_graph_has_no_cycle() -> None:
    assert find_cycle(package_graph()) is None, find_cycle(package_graph())


LAYERS = [
    "grpopp.cli",
    "grpopp.jobs",
    "grpopp.training",
    "grpopp.evaluation",
    "grpopp.learner",
    "grpopp.recipes",
    "grpopp.rollout",
    "grpopp.objective",
    "grpopp.envs",
    "grpopp.rewards",
    "grpopp.config_tools",
    "grpopp.progress",
]
"""The packages top to bottom, as README "Layout" and grpopp/__init__.py list them."""


def test_every_package_imports_only_packages_below_it() -> None:
    graph = package_graph()
    assert sorted(graph) == sorted([*LAYERS, "grpopp"])
    upward = [
        (node, target)
        for node, targets in graph.items()
        if node != "grpopp"
        for target in targets
        if LAYERS.index(target) <= LAYERS.index(node)
    ]
    assert upward == []


def test_find_cycle_finds_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("grpopp.config_tools", set()),
        ("grpopp.progress", set()),
        ("grpopp.rewards", set()),
        ("grpopp.envs", {"grpopp.rewards", "grpopp.config_tools"}),
        ("grpopp.objective", {"grpopp.rewards", "grpopp.config_tools"}),
    ],
)
def test_the_lower_packages_import_only_below_them(package: str, allowed: set[str]) -> None:
    assert package_graph()[package] <= allowed


def test_only_the_cli_imports_the_cli_and_nothing_below_the_jobs_imports_them() -> None:
    graph = package_graph()
    assert [node for node, targets in graph.items() if "grpopp.cli" in targets] == []
    assert sorted(node for node, targets in graph.items() if "grpopp.jobs" in targets) == ["grpopp.cli"]


def test_importing_the_environment_registry_does_not_load_torch() -> None:
    code = (
        "import sys, grpopp.envs.registry, grpopp.envs.mixture, grpopp.envs.math_data, grpopp.rewards.shaping\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'transformers'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert result.stdout.strip() == "[]"


def test_the_old_top_level_names_say_what_to_import_instead() -> None:
    code = "import sys; sys.path.insert(0, sys.argv[1]); import envs.base"
    result = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "envs is grpopp's envs/ folder, installed as grpopp.envs: import grpopp.envs.base" in result.stderr
