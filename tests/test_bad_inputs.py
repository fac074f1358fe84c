"""Bad inputs through the CLI: each is refused with exit status 2 and one paragraph on stderr that
names the culprit (key, file, line, option) and the fix, without a traceback, before anything is
loaded or written.

Every case runs in a prepared workspace (the current directory during the test): a run directory
made with a plugin (config.yaml, plugins.json, metrics.jsonl, a checkpoint cut short, an earlier
evaluation), data files, config files and plugins. The workspace's files (bytes and mtimes) and
folders are compared before and after each command: a refused command changes nothing and leaves no
new folder. Most cases run in-process (typer's CliRunner, milliseconds each); a few run the
installed ``grpopp`` script as a user does.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from random_model import save_random_model
from typer.testing import CliRunner

from grpopp.cli.main import app
from grpopp.config_tools import FOREIGN_NAMES, ConfigError
from grpopp.training.config import TrainConfig, load_train_config

GRPOPP = str(Path(sys.executable).with_name("grpopp"))
COIN_PLUGIN = Path(__file__).parent / "plugins" / "coin_env.py"
EVAL_STAMP = "20260101-000000"
OLD_SAMPLES = '{"checkpoint": "old", "sample": 0}\n'

RAISES_PLUGIN = 'raise RuntimeError("plugin setup failed on purpose")\n'
DUPLICATE_PLUGIN = '''
from grpopp.envs.base import EnvConfig, Environment
from grpopp.envs.registry import register_env


@register_env("arithmetic")
class Arithmetic2(Environment[EnvConfig]):
    """A second 'arithmetic'."""

    def num_tasks(self, split="train"):
        return 1

    def task(self, index, split="train"):
        raise NotImplementedError

    def verify(self, task, completion):
        raise NotImplementedError

    def gold_completion(self, task):
        return ""

    def wrong_completion(self, task):
        return ""
'''
NODOC_PLUGIN = DUPLICATE_PLUGIN.replace('"arithmetic"', '"nodoc_env"').replace(
    '    """A second \'arithmetic\'."""\n\n', ""
)


pytestmark = pytest.mark.usefixtures("clean_registry")  # tests/conftest.py: plugins loaded here are forgotten


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_model(tmp_path_factory.mktemp("random-model"))


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, random_model_dir: Path) -> Path:
    """The prepared files; the test runs inside this folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plugin").mkdir()
    plugin = tmp_path / "plugin" / "coin_env.py"
    shutil.copy(COIN_PLUGIN, plugin)
    (tmp_path / "raises.py").write_text(RAISES_PLUGIN)
    (tmp_path / "dup.py").write_text(DUPLICATE_PLUGIN)
    (tmp_path / "nodoc.py").write_text(NODOC_PLUGIN)

    run = tmp_path / "run"  # a run made with --plugin, its only checkpoint cut short
    config = load_train_config(envs=["coin"]).model_dump(mode="json")
    (run / "checkpoints" / "step-000001").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    record = {"plugin": "plugin/coin_env.py", "file": str(plugin), "sha256": sha256(plugin), "envs": ["coin"]}
    (run / "plugins.json").write_text(json.dumps({"plugins": [record]}))
    (run / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n')
    (run / "checkpoints" / "step-000001" / "trainer_state.pt").write_bytes(b"PK\x03\x04 cut short")
    (run / "checkpoints" / "step-000001" / "model.safetensors").write_bytes(b"\x08\x00\x00")
    old_eval = run / "evals" / EVAL_STAMP
    old_eval.mkdir(parents=True)
    (old_eval / "samples.jsonl").write_text(OLD_SAMPLES)
    (old_eval / "results.json").write_text('{"checkpoints": []}\n')

    bare = tmp_path / "bare_run"  # a run directory without any checkpoint
    bare.mkdir()
    (bare / "config.yaml").write_text(yaml.safe_dump(load_train_config().model_dump(mode="json")))
    (bare / "metrics.jsonl").write_text("")

    data = tmp_path / "data"
    data.mkdir()
    (data / "empty.jsonl").write_text("")
    (data / "broken.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?", \n')
    (data / "nocol.jsonl").write_text('{"prompt": "1+1?", "answer": "#### 2"}\n')
    (data / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    (data / "lonely.jsonl").write_text("{}\n")
    broken_eval = tmp_path / "broken_eval"
    broken_eval.mkdir()
    (broken_eval / "samples.jsonl").write_text("{}\n")
    (broken_eval / "results.json").write_text("{not json")

    (tmp_path / "bad.yaml").write_text("steps: 3\nrollout: [1, 2\n")
    (tmp_path / "bad.toml").write_text("steps = \n")
    (tmp_path / "cfg.json").write_text("{}")
    (tmp_path / "trl.yaml").write_text("algorithm:\n  preset: dapo\n  epsilon_high: 0.3\n")
    (tmp_path / "envtypo.yaml").write_text("envs:\n  - {name: arithmetic, wieght: 2}\n")
    for name, path in (("missing", "data/missing.jsonl"), ("broken", "data/broken.jsonl")):
        (tmp_path / f"gsm8k_{name}.yaml").write_text(f"envs:\n  - {{name: gsm8k, config: {{path: {path}}}}}\n")
    (tmp_path / "emptydir").mkdir()
    shutil.copytree(random_model_dir, tmp_path / "model")
    (tmp_path / "notes.txt").write_text("not a model\n")
    (tmp_path / "prog.py").write_text("print('hi')\n")
    return tmp_path


def snapshot(root: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every file (bytes, mtime) and folder (None) under ``root``, by relative path; Python's own
    bytecode caches aside."""
    state: dict[str, tuple[bytes, int] | None] = {}
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        key = path.relative_to(root).as_posix()
        state[key] = (path.read_bytes(), path.stat().st_mtime_ns) if path.is_file() else None
    return state


def check_refusal(exit_code: int, stdout: str, stderr: str, named: tuple[str, ...]) -> str:
    """Exit status 2, nothing on stdout, one paragraph "error: ..." on stderr naming each of ``named``."""
    assert exit_code == 2, stdout + stderr
    assert "Traceback" not in stdout + stderr
    assert stdout == ""
    message = stderr.strip()
    assert message.startswith("error: ") and "\n\n" not in message, stderr
    assert message.count("error:") == 1, stderr
    text = " ".join(message.split())
    for part in named:
        assert part in text, f"{part!r} not in {text!r}"
    return text


def refused(workspace: Path, args: list[str], *named: str) -> str:
    """Run ``grpopp ARGS`` in-process; it must be refused (``check_refusal``) and change nothing."""
    before = snapshot(workspace)
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    text = check_refusal(result.exit_code, result.stdout, result.stderr, named)
    assert snapshot(workspace) == before
    return text


# (arguments, what the message must name). Paths are relative to the workspace.
CASES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    # config files and --set
    "missing config file": (["train", "--config", "nope.yaml", "--dry-run"], ("'nope.yaml' does not exist",)),
    "bad YAML": (["train", "--config", "bad.yaml", "--dry-run"], ("bad.yaml:3", "invalid YAML")),
    "bad TOML": (["train", "--config", "bad.toml", "--dry-run"], ("bad.toml", "invalid TOML")),
    "config of another type": (["train", "--config", "cfg.json"], ("'cfg.json'", "use a .yaml, .yml or .toml file")),
    "unknown key": (["train", "--set", "optim.lrr=1", "--dry-run"], ("'optim.lrr'", "Did you mean 'optim.lr'")),
    "TRL epsilon_high": (
        ["train", "--set", "algorithm.epsilon_high=0.28", "--dry-run"],
        ("'algorithm.epsilon_high'", "TRL", "algorithm.loss.objective.eps_high"),
    ),
    "TRL loss_type": (
        ["train", "--set", "algorithm.loss_type=dr_grpo", "--dry-run"],
        ("'algorithm.loss_type'", "algorithm.loss.aggregation.type", "dr_grpo = constant_norm"),
    ),
    "TRL num_generations": (
        ["train", "--set", "rollout.num_generations=8", "--dry-run"],
        ("'rollout.num_generations'", "rollout.completions_per_prompt"),
    ),
    "TRL beta": (["train", "--set", "beta=0.04", "--dry-run"], ("'beta'", "algorithm.loss.kl_coef")),
    "TRL name with no grpopp key": (
        ["train", "--set", "gradient_accumulation_steps=4", "--dry-run"],
        ("'gradient_accumulation_steps'", "batch.micro_batch_size"),
    ),
    "verl rollout.n": (
        ["train", "--set", "actor_rollout_ref.rollout.n=8", "--dry-run"],
        ("'actor_rollout_ref.rollout.n'", "verl", "rollout.completions_per_prompt"),
    ),
    "verl clip_ratio_high": (
        ["train", "--set", "actor_rollout_ref.actor.clip_ratio_high=0.28", "--dry-run"],
        ("verl", "algorithm.loss.objective.eps_high"),
    ),
    "TRL name in a config file": (
        ["train", "--config", "trl.yaml", "--dry-run"],
        ("'algorithm.epsilon_high'", "algorithm.loss.objective.eps_high"),
    ),
    "typo in a config file's list": (
        ["train", "--config", "envtypo.yaml", "--dry-run"],
        ("'envs.0.wieght'", "Did you mean 'envs.0.weight'"),
    ),
    "TRL name in algo show": (
        ["algo", "show", "dapo", "--set", "epsilon_high=0.3"],
        ("'epsilon_high'", "loss.objective.eps_high"),
    ),
    "value below its bound": (["train", "--set", "optim.lr=-1", "--dry-run"], ("optim.lr", "greater than 0")),
    "group of one": (
        ["train", "--set", "rollout.completions_per_prompt=1", "--dry-run"],
        ("rollout.completions_per_prompt", "greater than or equal to 2"),
    ),
    "cross-field rule": (
        ["train", "--set", "batch.prompts_per_step=3", "--set", "batch.mini_batches=2", "--dry-run"],
        ("batch.prompts_per_step=3", "batch.mini_batches=2"),
    ),
    "--set without a value": (["train", "--set", "optim.lr", "--dry-run"], ("'optim.lr'", "is not KEY=VALUE")),
    "--set below a leaf": (["train", "--set", "optim.lr.x=1", "--dry-run"], ("'optim.lr'", "has no sub-keys")),
    "unknown preset": (["algo", "show", "dpo"], ("'dpo'", "Did you mean 'dapo'")),
    # environments, weights, data files
    "unknown environment": (["train", "--env", "nosuch", "--dry-run"], ("'nosuch'", "--plugin")),
    "negative weight": (["train", "--env", "arithmetic:-1", "--dry-run"], ("'arithmetic:-1'", "positive number")),
    "zero weight": (["envs", "mix", "--env", "arithmetic:0"], ("'arithmetic:0'", "positive number")),
    "weight without a name": (["train", "--env", ":0.5", "--dry-run"], ("':0.5'", "give an environment name")),
    "missing data file": (
        ["train", "--config", "gsm8k_missing.yaml", "--dry-run"],
        ("'data/missing.jsonl'", "no such file"),
    ),
    "broken JSONL line": (
        ["train", "--config", "gsm8k_broken.yaml", "--dry-run"],
        ("data/broken.jsonl:2", "not valid JSON"),
    ),
    "empty data file": (
        ["envs", "sample", "gsm8k", "--set", "path=data/empty.jsonl"],
        ("data/empty.jsonl", "no training problems"),
    ),
    "missing column": (
        ["envs", "sample", "gsm8k", "--set", "path=data/nocol.jsonl"],
        ("data/nocol.jsonl:1", "missing column 'question'", "question_column"),
    ),
    "space too small to split": (
        ["envs", "sample", "arithmetic", "--set", "max_operand=3"],
        ("too small to split", "raise max_operand"),
    ),
    "bad --split": (["envs", "sample", "arithmetic", "--split", "dev"], ("--split", "'dev'")),
    "envs show of an unknown name": (["envs", "show", "arithmatic"], ("'arithmatic'", "Did you mean 'arithmetic'")),
    "envs mix of nothing": (["envs", "mix"], ("--env NAME[:WEIGHT]",)),
    # plugins
    "missing plugin file": (["train", "--plugin", "gone.py", "--dry-run"], ("'gone.py'", "no such file")),
    "plugin that raises": (
        ["envs", "list", "--plugin", "raises.py"],
        ("'raises.py'", "RuntimeError", "plugin setup failed on purpose"),
    ),
    "plugin with a taken name": (["envs", "list", "--plugin", "dup.py"], ("'arithmetic'", "the name is taken")),
    # models and runs
    "missing model folder": (
        ["train", "--model", "/no/such/dir", "--dry-run"],
        ("'/no/such/dir'", "no such folder", "hub id"),
    ),
    "missing model folder, real run": (["train", "--model", "./no_model"], ("'./no_model'", "no such folder")),
    "folder that is no model": (["train", "--model", "emptydir", "--dry-run"], ("'emptydir'", "config.json")),
    "LoRA on a layer the model lacks": (
        ["train", "--model", "model", "--set", 'model.lora.target_modules=["qproj"]'],
        ("model.lora.target_modules=['qproj']", "not found in the base model"),
    ),
    "LoRA adapters for vLLM without LoRA": (
        ["train", "--set", "rollout.engine.type=vllm", "--set", "rollout.engine.lora_adapters=true", "--dry-run"],
        ("rollout.engine.lora_adapters=true", "model.lora is not set"),
    ),
    "--run-dir that is a file": (["train", "--run-dir", "notes.txt"], ("'notes.txt' is a file",)),
    "--run-dir of an earlier run": (["train", "--run-dir", "run"], ("run already holds a run", "--resume run")),
    "--resume of a non-run folder": (["train", "--resume", "emptydir"], ("--resume emptydir", "config.yaml")),
    "--resume with config options": (
        ["train", "--resume", "run", "--set", "steps=3"],
        ("--resume continues a run with its own saved config",),
    ),
    "--resume with --dry-run": (["train", "--resume", "run", "--dry-run"], ("--dry-run", "--resume")),
    # evaluation
    "missing eval target": (["eval", "/no/such/path"], ("'/no/such/path'", "run directory", "hub id")),
    "eval target that is a file": (["eval", "notes.txt"], ("'notes.txt'", "is a file")),
    "eval target without config.json": (["eval", "emptydir"], ("'emptydir'", "config.json")),
    "bad --checkpoints": (["eval", "run", "--checkpoints", "bogus"], ("--checkpoints 'bogus'", "every:N")),
    "--checkpoints every:0": (["eval", "run", "--checkpoints", "every:0"], ("--checkpoints 'every:0'",)),
    "bad --checkpoints on a model": (["eval", "tiny", "--checkpoints", "best"], ("--checkpoints 'best'",)),
    "run without checkpoints": (["eval", "bare_run"], ("bare_run", "no complete checkpoint")),
    "checkpoint cut short": (["eval", "run"], ("checkpoint run/checkpoints/step-000001", "cut short")),
    "--greedy with samples into an earlier evaluation": (
        ["eval", "run", "--out", f"run/evals/{EVAL_STAMP}", "--greedy", "--samples", "2"],
        ("--greedy", "--samples 1"),
    ),
    "k above samples into an earlier evaluation": (
        ["eval", "run", "--out", f"run/evals/{EVAL_STAMP}", "--samples", "2", "--k", "5"],
        ("ks", "ask for k <= --samples"),
    ),
    "unknown eval environment into a new folder": (
        ["eval", "run", "--env", "nosuch:5", "--out", "new/eval"],
        ("'nosuch'",),
    ),
    "eval task count 0": (["eval", "tiny", "--env", "arithmetic:0"], ("'arithmetic:0'", ">= 1")),
    "--out is a file": (["eval", "tiny", "--out", "notes.txt"], ("--out notes.txt", "a file is there")),
    "reverify of a missing file": (["eval", "reverify", "nope.jsonl"], ("nope.jsonl", "no such file")),
    "reverify without results.json": (["eval", "reverify", "data/lonely.jsonl"], ("no results.json beside it",)),
    "reverify with a broken results.json": (
        ["eval", "reverify", "broken_eval/samples.jsonl"],
        ("broken_eval/results.json", "not a grpopp eval results.json"),
    ),
    # verify, report, sandbox
    "verify of a missing file": (
        ["verify", "--env", "arithmetic", "--input", "no-such-file.jsonl"],
        ("--input no-such-file.jsonl", "no such file"),
    ),
    "verify of a binary file": (
        ["verify", "--env", "arithmetic", "--input", "data/binary.jsonl"],
        ("--input data/binary.jsonl", "not UTF-8"),
    ),
    "verify of an empty file": (
        ["verify", "--env", "arithmetic", "--input", "data/empty.jsonl"],
        ("--input data/empty.jsonl", "holds no line"),
    ),
    "verify of nothing": (["verify", "--env", "arithmetic"], ("--task-id", "--input")),
    "report of a non-run folder": (["report", "emptydir"], ("emptydir has no metrics.jsonl",)),
    "report of an empty log": (["report", "bare_run"], ("metrics.jsonl holds no readable line",)),
    "sandbox program missing": (["sandbox", "run", "missing.py"], ("program missing.py", "no such file")),
    "sandbox stdin missing": (["sandbox", "run", "prog.py", "--stdin", "in.txt"], ("--stdin in.txt", "no such file")),
    "sandbox bad isolation": (["sandbox", "run", "prog.py", "--isolation", "docker"], ("--isolation", "'docker'")),
    "sandbox bad limit": (
        ["sandbox", "run", "prog.py", "--wall-timeout", "-1"],
        ("--wall-timeout", "greater than 0"),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_with_one_paragraph(workspace: Path, case: str) -> None:
    args, named = CASES[case]
    refused(workspace, args, *named)


def test_the_sweep_is_wide() -> None:
    assert len(CASES) >= 40


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_wandb_without_the_package_fails_before_the_model_loads(workspace: Path) -> None:
    refused(
        workspace,
        ["train", "--set", "logging.wandb=true", "--model", "./no_model_needed_yet"],
        "model.name_or_path",  # the model folder is checked first, still before any load
    )
    refused(workspace, ["train", "--set", "logging.wandb=true"], "logging.wandb=true", "pip install wandb")


def test_resume_of_a_truncated_checkpoint_is_refused(workspace: Path) -> None:
    # The only checkpoint's trainer_state.pt and model.safetensors are cut short (checkpoint.py checks
    # them on --resume); the recorded plugin is loaded by itself.
    refused(workspace, ["train", "--resume", "run"], "--resume run", "checkpoint")


def test_a_missing_recorded_plugin_names_the_file_and_the_fix(workspace: Path) -> None:
    (workspace / "plugin" / "coin_env.py").unlink()
    expected = ("plugin/coin_env.py is gone", "run/plugins.json", "registered coin", "--plugin path/to/file.py")
    for args in (["train", "--resume", "run"], ["eval", "run"]):
        refused(workspace, args, *expected)


def test_an_earlier_evaluation_survives_a_refused_one(workspace: Path) -> None:
    folder = workspace / "run" / "evals" / EVAL_STAMP
    refused(workspace, ["eval", "run", "--out", str(folder), "--checkpoints", "bogus"], "--checkpoints")
    assert (folder / "samples.jsonl").read_text() == OLD_SAMPLES
    assert sorted(p.name for p in folder.iterdir()) == ["results.json", "samples.jsonl"]


def test_a_plugin_environment_without_a_docstring_is_listed(workspace: Path, clean_registry) -> None:
    result = CliRunner().invoke(app, ["envs", "list", "--plugin", "nodoc.py"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.stdout.splitlines() if "nodoc_env" in line]
    assert "EnvConfig" in row
    clean_registry()  # a new process
    shown = CliRunner().invoke(app, ["envs", "show", "nodoc_env", "--plugin", "nodoc.py"])
    assert shown.exit_code == 0, shown.output
    assert "seed" in shown.stdout


# The user's view: the installed script in a subprocess (slower, so only a few).
SUBPROCESS_CASES = {
    "train --model of a missing folder": (
        ["train", "--model", "/no/such/dir", "--set", "steps=1"],
        ("'/no/such/dir'", "no such folder"),
    ),
    "eval of a missing path": (["eval", "/no/such/path"], ("'/no/such/path'", "no such folder")),
    "verify of a missing file": (
        ["verify", "--env", "arithmetic", "--input", "no-such-file.jsonl"],
        ("no-such-file.jsonl",),
    ),
    "empty data file": (["envs", "sample", "gsm8k", "--set", "path=data/empty.jsonl"], ("data/empty.jsonl",)),
}


@pytest.mark.parametrize("case", list(SUBPROCESS_CASES))
def test_bad_input_in_a_subprocess(workspace: Path, case: str) -> None:
    args, named = SUBPROCESS_CASES[case]
    before = snapshot(workspace)
    env = {"COLUMNS": "100", "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([GRPOPP, *args], capture_output=True, text=True, timeout=120, env=env, cwd=workspace)
    check_refusal(result.returncode, result.stdout, result.stderr, named)
    assert snapshot(workspace) == before


def is_train_config_key(key: str) -> bool:
    """Whether a dotted key names a field of TrainConfig (walked by hand, field by field; a variant
    field, a union of models such as algorithm.loss.objective, into each of its members)."""
    models: list[type[BaseModel]] = [TrainConfig]
    *parents, leaf = key.split(".")
    for part in parents:
        annotations = [model.model_fields[part].annotation for model in models if part in model.model_fields]
        members = [arg for annotation in annotations for arg in (typing.get_args(annotation) or (annotation,))]
        models = [member for member in members if isinstance(member, type) and issubclass(member, BaseModel)]
    return any(leaf in model.model_fields for model in models)


@pytest.mark.parametrize("entry", FOREIGN_NAMES, ids=lambda entry: (entry.trl + entry.verl)[0])
def test_every_trl_and_verl_name_is_answered_with_grpopps_key(entry) -> None:
    assert entry.key == "" or is_train_config_key(entry.key)
    for name in (*entry.trl, *entry.verl):
        with pytest.raises(ConfigError) as error:
            load_train_config(overrides=[f"{name}=1"])
        message = str(error.value)
        assert message.startswith(f"unknown key {name!r}: {name} is ")
        assert (f"grpopp's key is {entry.key}" if entry.key else "a setting grpopp does not have") in message
