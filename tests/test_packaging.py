"""The wheel holds every module and data file of the four packages, and builds without a setuptools
warning (issue 14: a wheel without grpopp/rollout failed on import; `make` printed about 80
lines of warnings about grpopp.envs.data and grpopp.recipes). `make wheel-check` (.ci/wheel-check)
goes further: it installs the wheel into a fresh venv and runs the CLI from there."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("envs", "rewards", "grpopp", "cli")


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
    # every file of the four packages in the checkout, found by walking it, not from pyproject.toml
    expected = {name for name in files if name.split("/")[0] in PACKAGES}
    assert expected <= names, sorted(expected - names)
    assert "grpopp/rollout/hf.py" in expected  # the package the hand-written list left out
    assert {"envs/data/gsm8k_sample.jsonl", "grpopp/recipes/tiny-arithmetic.yaml"} <= expected
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info/"  # grpopp-<version>.dist-info/
    stray = sorted(name for name in names - expected if not name.startswith(dist_info))
    assert stray == []  # no tests, caches or build leftovers
    entry_points = zipfile.ZipFile(wheel).read(dist_info + "entry_points.txt").decode()
    assert "grpopp = grpopp.cli.main:app" in entry_points
