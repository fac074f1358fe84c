"""The grpopp command line, run as a user runs it: a subprocess of the installed console script."""

import json
import subprocess
import sys
from pathlib import Path

GRPOPP = str(Path(sys.executable).with_name("grpopp"))


def grpopp(*args):
    return subprocess.run([GRPOPP, *args], capture_output=True, text=True, timeout=120, env={"COLUMNS": "200"})


def test_help_lists_the_commands():
    result = grpopp("--help")
    assert result.returncode == 0
    for command in ("algo", "version"):
        assert command in result.stdout


def test_algo_list_shows_every_preset():
    result = grpopp("algo", "list")
    assert result.returncode == 0, result.stderr
    for name in ("grpo", "dapo", "dr_grpo", "gspo", "cispo", "grpopp", "2503.14476", "token_truncate"):
        assert name in result.stdout


def test_algo_show_prints_resolved_json_with_overrides():
    result = grpopp("algo", "show", "dapo", "--set", "loss.eps_high=0.3", "--set", "loss.kl_coef=0.01")
    assert result.returncode == 0, result.stderr
    cfg = json.loads(result.stdout)
    assert cfg["loss"]["eps_high"] == 0.3 and cfg["loss"]["kl_coef"] == 0.01
    assert cfg["loss"]["eps_low"] == 0.2  # untouched fields keep the preset's value
    assert "2503.14476" in result.stderr  # the source is shown beside the config


def test_algo_show_bad_key_fails_with_the_fix():
    result = grpopp("algo", "show", "dapo", "--set", "loss.eps_hihg=0.3")
    assert result.returncode == 2
    assert "Did you mean 'loss.eps_high'" in result.stderr
    assert result.stdout == ""


def test_algo_show_unknown_preset():
    result = grpopp("algo", "show", "dpo")
    assert result.returncode == 2
    assert "Did you mean 'dapo'" in result.stderr
