"""The wheel holds every module and data file of the four folders, under the one installed name
``grpopp`` (pyproject's package-dir: grpopp_trainer/ -> grpopp/, envs/ -> grpopp/envs/, ...), claims no
other top-level name, and builds without a setuptools warning (issue 14: a wheel without
grpopp/rollout failed on import; `make` printed about 80 lines of warnings about the data folders).
`make wheel-check` (.ci/wheel-check) goes further: it installs the wheel into a fresh venv and runs the
CLI from there."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALLED_AS = {"grpopp_trainer": "grpopp", "envs": "grpopp/envs", "rewards": "grpopp/rewards", "cli": "grpopp/cli"}
"""Each folder of the checkout and where its files go in the wheel."""


def _installed_name(name: str) -> str | None:
    folder, _, rest = name.partition("/")
    return f"{INSTALLED_AS[folder]}/{rest}" if folder in INSTALLED_AS else None


def _checkout_files() -> list[str]:
    """The checkout's files as a clean clone would hold them (tracked, and untracked but not ignored)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to list the source files")
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [name for name in listed.split("\0") if name and (REPO / name).is_file()]


def test_wheel_holds_every_module_and_data_file_and_builds_without_warnings(tmp_path):
    source = tmp_path / "src"
    files = _checkout_files()
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    output = build.stdout + build.stderr
    assert "Warning" not in output and "would be ignored" not in output, output
    (wheel,) = tmp_path.glob("grpopp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # every file of the four folders in the checkout, found by walking it, not from pyproject.toml
    expected = {installed for name in files if (installed := _installed_name(name)) is not None}
    assert expected <= names, sorted(expected - names)
    assert "grpopp/rollout/hf.py" in expected  # the package the hand-written list left out
    assert {"grpopp/envs/data/gsm8k_sample.jsonl", "grpopp/recipes/tiny-arithmetic.yaml"} <= expected
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info/"  # grpopp-<version>.dist-info/
    stray = sorted(name for name in names - expected if not name.startswith(dist_info))
    assert stray == []  # no tests, caches or build leftovers
    assert {name.split("/")[0] for name in names} == {"grpopp", dist_info.rstrip("/")}  # no cli/, envs/, rewards/
    entry_points = zipfile.ZipFile(wheel).read(dist_info + "entry_points.txt").decode()
    assert "grpopp = grpopp.cli.main:app" in entry_points
