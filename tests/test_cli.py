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
    # loss.eps_high is the flat loss form's key (as `grpopp train --set algorithm.loss.eps_high`)
    assert cfg["loss"]["objective"]["eps_high"] == 0.3 and cfg["loss"]["kl_coef"] == 0.01
    assert cfg["loss"]["objective"]["eps_low"] == 0.2  # untouched fields keep the preset's value
    assert "2503.14476" in result.stderr  # the source is shown beside the config


def test_algo_show_bad_key_fails_with_the_fix():
    result = grpopp("algo", "show", "dapo", "--set", "loss.objective.eps_hihg=0.3")
    assert result.returncode == 2
    assert "Did you mean loss.objective.eps_high?" in result.stderr
    assert result.stdout == ""


def test_algo_show_unknown_preset():
    result = grpopp("algo", "show", "dpo")
    assert result.returncode == 2
    assert "Did you mean 'dapo'" in result.stderr


def test_algo_list_fits_100_columns_without_cutting_a_value():
    result = subprocess.run(
        [GRPOPP, "algo", "list"], capture_output=True, text=True, timeout=120, env={"COLUMNS": "100"}
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert "…" not in result.stdout
    for value in ("seq_mean_token_mean", "constant_norm", "token_truncate", "0.0003 / 0.0004", "k3 x 0.04"):
        assert value in result.stdout  # whole, on one line
    header_cells = {cell.strip() for line in lines if line.startswith("┃") for cell in line.strip("┃").split("┃")}
    assert set(PRESET_NAMES) <= header_cells  # every preset has its column
    assert "arXiv 2503.14476" in result.stdout  # the sources, below the tables


PRESET_NAMES = ("grpo", "dapo", "dr_grpo", "gspo", "cispo", "grpopp")


def _commands():
    """Every command of the app: (words, click command)."""
    import typer

    from grpopp.cli.main import app

    def walk(command, words):
        if hasattr(command, "commands"):  # a group
            for name, sub in command.commands.items():
                yield from walk(sub, [*words, name])
        else:
            yield words, command

    return list(walk(typer.main.get_command(app), []))


def test_help_texts_have_no_markup_accidents():
    from rich.text import Text

    for words, command in _commands():
        for text in [command.help or "", *(getattr(param, "help", None) or "" for param in command.params)]:
            assert "`" not in text, (words, text)  # RST/markdown quotes would show as written
            # rich markup would swallow "[name]"; such text must be written "\[name]"
            assert Text.from_markup(text).plain == text.replace("\\[", "["), (words, text)
    report_help = grpopp("report", "--help")
    assert "pip install -e '.[report]'" in " ".join(report_help.stdout.split())


def test_envs_show_names_where_set_works_and_has_no_set_itself():
    (show,) = [command for words, command in _commands() if words == ["envs", "show"]]
    assert "--set" not in {opt for param in show.params for opt in getattr(param, "opts", [])}
    assert "on envs sample, envs check and verify" in " ".join((show.help or "").split())


def test_every_command_turns_user_errors_into_exit_status_2():
    from grpopp.cli.errors import user_errors

    wrapper_code = user_errors(lambda: None).__code__
    for words, command in _commands():
        layers, function = [], command.callback  # typer wraps the callback too
        while function is not None:
            layers.append(function.__code__)
            function = getattr(function, "__wrapped__", None)
        assert (wrapper_code in layers) == (words != ["version"]), words
    assert len(_commands()) >= 14  # the walk reaches the subcommands
