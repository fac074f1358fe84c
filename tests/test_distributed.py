"""Multi-process training on CPU with torchrun and gloo (FSDP2): the sharded update equals the
single-process one, only rank 0 writes, checkpoints load in one process, bf16 mixed precision keeps
float32 weights, and a run resumes on another number of processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from grpopp_trainer.tiny import TinyModelConfig, build_model, build_tokenizer

HERE = Path(__file__).parent
WORKER = str(HERE / "dist_worker.py")
PLUGIN = str(HERE / "plugins" / "coin_env.py")
GRPOPP = str(Path(sys.executable).with_name("grpopp"))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=HERE.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.parametrize(("mini_batches", "extra"), [(1, []), (2, []), (2, ["kl"])])
def test_one_update_on_two_processes_equals_one_process(tmp_path, mini_batches, extra):
    """6 groups of 2, micro-batches of 2, two groups with advantage 0: the ranks get unequal shares
    (padding passes); with two mini-batches a second, off-policy step (pi_old from each rank's own
    rows) with AdamW momentum; with ``kl`` a sharded reference model and the KL term."""
    single, double = tmp_path / "single.pt", tmp_path / "double.pt"
    run([sys.executable, WORKER, str(single), str(mini_batches), *extra])
    run([*TORCHRUN, WORKER, str(double), str(mini_batches), *extra])
    one, two = torch.load(single, weights_only=False), torch.load(double, weights_only=False)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["state"].keys() == two["state"].keys()
    for key, value in one["state"].items():
        torch.testing.assert_close(two["state"][key], value, rtol=0, atol=2e-5)
    assert any(
        not torch.equal(value, v) for value, v in zip(one["state"].values(), initial_state().values(), strict=True)
    )
    # Tokens trained on: 14 in the four groups with advantages (the two others skipped), 23 in all
    # twelve completions when the KL term needs every row.
    assert two["metrics"]["train_tokens"] == one["metrics"]["train_tokens"] == (23.0 if extra else 14.0)
    for key in ("loss", "grad_norm", "entropy", "ratio_mean", *(["kl_mean"] if extra else [])):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5, abs=1e-8), key


def initial_state() -> dict[str, torch.Tensor]:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))
    return model.state_dict()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))
    path = tmp_path_factory.mktemp("random-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def steps_logged(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if "reward" in row]


def set_steps(run_dir: Path, steps: int) -> None:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["steps"] = steps
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


def test_torchrun_training_writes_once_and_resumes_across_world_sizes(tmp_path, model_dir):
    run_dir = tmp_path / "run"
    train = [
        "train", "--plugin", PLUGIN, "--env", "coin", "--model", str(model_dir), "--steps", "2",
        "--run-dir", str(run_dir), "--set", "checkpoint.every=1", "--set", "checkpoint.keep_last=10",
        "--set", "batch.prompts_per_step=4", "--set", "rollout.completions_per_prompt=2",
        "--set", "rollout.max_new_tokens=3", "--set", "eval.tasks_per_env=4", "--set", "logging.progress=false",
        "--set", "batch.micro_batch_size=2", "--set", "model.fsdp_param_dtype=bfloat16",
    ]  # fmt: skip
    first = run([*TORCHRUN, GRPOPP, *train])
    assert first.stdout.count("held-out accuracy before training") == 1  # rank 0 alone prints
    assert steps_logged(run_dir) == [1, 2]  # and writes: one line per step
    state = torch.load(run_dir / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=False)
    assert state["world_size"] == 2 and state["step"] == 2
    model = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / "step-000002")
    assert type(model).__name__ == "LlamaForCausalLM"  # a single process loads the gathered weights
    weights = load_file(run_dir / "checkpoints" / "step-000002" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}  # bf16 compute, float32 master weights

    set_steps(run_dir, 3)  # go on for one step in one process, then one more on two
    resumed = run([GRPOPP, "train", "--plugin", PLUGIN, "--resume", str(run_dir)])
    assert "resumed from" in resumed.stdout and "at step 2" in resumed.stdout
    assert steps_logged(run_dir) == [1, 2, 3]
    set_steps(run_dir, 4)
    again = run([*TORCHRUN, GRPOPP, "train", "--plugin", PLUGIN, "--resume", str(run_dir)])
    assert again.stdout.count("at step 3") == 1
    assert steps_logged(run_dir) == [1, 2, 3, 4]
    final = torch.load(run_dir / "checkpoints" / "step-000004" / "trainer_state.pt", weights_only=False)
    assert final["world_size"] == 2 and len(final["policy"]["optimizer"]["state"]) == len(
        state["policy"]["optimizer"]["state"]
    )
