"""Runs remember their plugins: ``grpopp train --plugin`` records each plugin (file and sha256) in the
run directory, and ``--resume``, ``eval`` and ``eval reverify`` load them without ``--plugin``; a
changed file is loaded with a warning, a missing one is an error that names it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import grpopp.envs.registry as registry
from grpopp.cli.plugins import PLUGINS_FILE, load_plugins, load_recorded_plugins, record_in_new_run
from grpopp.config_tools import UserError
from grpopp.recipes.tiny import TinyModelConfig, load_or_create_tiny_model
from grpopp.training.config import load_train_config

GRPOPP = str(Path(sys.executable).with_name("grpopp"))
COIN_PLUGIN = Path(__file__).parent / "plugins" / "coin_env.py"
COIN_ENVS = ["coin", "coin_flaky", "coin_half_flat"]  # what coin_env.py registers
QUICK = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, sft_steps=3, eval_tasks=4)


pytestmark = pytest.mark.usefixtures("clean_registry")  # tests/conftest.py: plugins loaded here are forgotten


def forget_coin() -> None:
    for name in COIN_ENVS:
        registry._REGISTRY.pop(name)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    path = tmp_path / "my_plugins" / "coin_env.py"
    path.parent.mkdir()
    shutil.copy(COIN_PLUGIN, path)
    return path


def test_a_new_run_records_its_plugins_before_it_starts(tmp_path, plugin, monkeypatch):
    monkeypatch.chdir(tmp_path)
    records = load_plugins(["my_plugins/coin_env.py"])
    config = load_train_config(envs=["coin"])
    assert config.logging.run_dir is None
    pinned = record_in_new_run(config, records)
    run_dir = Path(pinned.logging.run_dir)
    assert run_dir.parent == Path("runs") and run_dir.name[:8].isdigit()  # runs/<UTC time>, as run.train picks
    expected = {
        "plugins": [
            {"plugin": "my_plugins/coin_env.py", "file": str(plugin), "sha256": sha256(plugin), "envs": COIN_ENVS}
        ]
    }
    assert json.loads((run_dir / PLUGINS_FILE).read_text()) == expected
    assert pinned.model_copy(update={"logging": config.logging}) == config  # nothing else changed
    assert record_in_new_run(config, []) is config  # no plugin: nothing written, nothing pinned


def test_recorded_plugins_are_loaded_warned_about_or_refused(tmp_path, plugin, capsys):
    run = tmp_path / "run"
    run.mkdir()
    record = {"plugin": "my_plugins/coin_env.py", "file": str(plugin), "sha256": sha256(plugin), "envs": COIN_ENVS}
    (run / PLUGINS_FILE).write_text(json.dumps({"plugins": [record]}))

    loaded = load_recorded_plugins(run, [])
    assert "coin" in registry.list_envs()
    assert [r.sha256 for r in loaded] == [sha256(plugin)] and capsys.readouterr().err == ""

    forget_coin()  # a new process, after the file changed
    plugin.write_text(plugin.read_text() + "\n# edited\n")
    loaded = load_recorded_plugins(run, [])
    err = " ".join(capsys.readouterr().err.split())
    assert f"plugin my_plugins/coin_env.py ({plugin}) changed since" in err
    assert f"sha256 {record['sha256'][:12]} then, {sha256(plugin)[:12]} now" in err
    assert loaded[0].sha256 == sha256(plugin)

    moved = tmp_path / "elsewhere.py"
    plugin.rename(moved)
    forget_coin()
    with pytest.raises(UserError, match=rf"plugin {plugin} is gone: .*run/plugins.json records it"):
        load_recorded_plugins(run, [])
    # Given again with --plugin from its new place: the recorded one is not needed, no error.
    given = load_plugins([str(moved)])
    assert load_recorded_plugins(run, given) == given

    (run / PLUGINS_FILE).write_text('{"plugins": [{"plugin": 3}]}')
    with pytest.raises(UserError, match=r"run/plugins.json: not a plugin record of grpopp"):
        load_recorded_plugins(run, [])


def grpopp(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPOPP, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_resume_eval_and_reverify_load_the_plugins_of_the_run(tmp_path, plugin):
    model = load_or_create_tiny_model(tmp_path / "cache", QUICK, log=lambda _: None)
    trained = grpopp(
        "train", "--plugin", "my_plugins/coin_env.py", "--env", "coin", "--model", str(model), "--steps", "1",
        "--run-dir", "run", "--set", "checkpoint.every=1", "--set", "batch.prompts_per_step=2",
        "--set", "rollout.completions_per_prompt=2", "--set", "rollout.max_new_tokens=3",
        "--set", "eval.tasks_per_env=2", "--set", "logging.progress=false", cwd=tmp_path,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    recorded = json.loads((tmp_path / "run" / PLUGINS_FILE).read_text())["plugins"]
    assert [(r["file"], r["sha256"]) for r in recorded] == [(str(plugin), sha256(plugin))]

    resumed = grpopp("train", "--resume", "run", cwd=tmp_path)  # no --plugin
    assert resumed.returncode == 0, resumed.stderr
    assert "already complete (1 of 1 steps)" in " ".join(resumed.stdout.split())

    evaluated = grpopp("eval", "run", "--tasks", "2", "--out", "ev", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "ev" / PLUGINS_FILE).read_text())["plugins"] == recorded
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == [PLUGINS_FILE, "results.json", "samples.jsonl"]
    reverified = grpopp("eval", "reverify", "ev/samples.jsonl", cwd=tmp_path)
    assert reverified.returncode == 0, reverified.stderr
    assert "re-verified 2 samples: 0 changed" in reverified.stdout

    plugin.write_text(plugin.read_text() + "\n# edited\n")
    changed = grpopp("train", "--resume", "run", cwd=tmp_path)
    assert changed.returncode == 0, changed.stderr
    assert "changed since run was made with it" in " ".join(changed.stderr.split())

    plugin.unlink()
    gone = grpopp("train", "--resume", "run", cwd=tmp_path)
    assert gone.returncode == 2 and "Traceback" not in gone.stderr
    assert f"plugin {plugin} is gone" in " ".join(gone.stderr.split())
