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
from random_model import save_random_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from grpopp.recipes.tiny import TinyModelConfig, build_model, build_tokenizer

HERE = Path(__file__).parent
WORKER = str(HERE / "dist_worker.py")
PLUGIN = str(HERE / "plugins" / "coin_env.py")
GRPOPP = str(Path(sys.executable).with_name("grpopp"))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=HERE.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


CHECKPOINTING = ("checkpointing", "selective")


@pytest.mark.parametrize(
    ("mini_batches", "extra"),
    [
        (1, []),
        (2, []),
        (2, ["kl"]),
        (1, ["checkpointing"]),
        (2, ["kl", "lora"]),
        (1, ["lora", "selective"]),
        (1, ["lora", "checkpointing"]),
    ],
)
def test_one_update_on_two_processes_equals_one_process(tmp_path, mini_batches, extra):
    """6 groups of 2, micro-batches of 2, two groups with advantage 0: the ranks get unequal shares
    (padding passes); with two mini-batches a second, off-policy step (pi_old from each rank's own
    rows) with AdamW momentum; with ``kl`` a sharded reference model and the KL term; with
    ``checkpointing`` gradient checkpointing in the sharded layers (the one process without; ``selective``:
    selective checkpointing); with
    ``lora`` LoRA adapters on the frozen model, the KL reference being that model with adapters off,
    and the gathered adapters and merged weights compared. The two
    processes share prompts in their passes (two forward passes, where every rank's completions
    are longer than one token), the one process runs the flat pass: a second method."""
    single, double = tmp_path / "single.pt", tmp_path / "double.pt"
    run([sys.executable, WORKER, str(single), str(mini_batches), *[e for e in extra if e not in CHECKPOINTING], "flat"])
    run([*TORCHRUN, WORKER, str(double), str(mini_batches), *extra])
    one, two = torch.load(single, weights_only=False), torch.load(double, weights_only=False)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    trained = "merged" if "lora" in extra else "model"  # the whole model's weights
    for part in {"model", trained}:
        assert one[part].keys() == two[part].keys()
        for key, value in one[part].items():
            torch.testing.assert_close(two[part][key], value, rtol=0, atol=2e-5)
    initial = initial_state()
    assert one[trained].keys() == initial.keys() - ({"lm_head.weight"} if "lora" in extra else set())
    assert any(not torch.equal(value, initial[key]) for key, value in one[trained].items())
    if "lora" in extra:  # only the adapters trained: A and B of 7 linear layers in each of 2 layers
        assert len(one["model"]) == 2 * 7 * 2 and all(".lora_" in key for key in one["model"])
        folder = double.with_suffix(".model")  # written by rank 0 of the sharded run
        adapters = load_file(str(folder / "adapter_model.safetensors"))
        assert len(adapters) == 2 * 7 * 2 and (folder / "adapter_config.json").is_file()
        merged = load_file(str(folder / "merged" / "model.safetensors"))
        assert merged.keys() == two["merged"].keys()
        assert all(torch.equal(merged[key], value) for key, value in two["merged"].items())
    # Tokens trained on: 14 in the four groups with advantages (the two others skipped), 23 in all
    # twelve completions when the KL term needs every row.
    assert two["metrics"]["train_tokens"] == one["metrics"]["train_tokens"] == (23.0 if "kl" in extra else 14.0)
    for key in ("loss", "grad_norm", "entropy", "ratio_mean", *(["kl_mean"] if "kl" in extra else [])):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5, abs=1e-8), key


def initial_state() -> dict[str, torch.Tensor]:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))
    return model.state_dict()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_random_model(tmp_path_factory.mktemp("random-model"), num_layers=2)


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


VLLM_WORKER = str(HERE / "dist_vllm_worker.py")


def test_vllm_engine_under_torchrun_follows_the_sharded_policy(tmp_path, model_dir):
    """``grpopp.jobs.run.train`` with ``rollout.engine.type=vllm`` on 2 processes, vLLM replaced by
    tests/vllm_fake.py: each rank's engine ends with exactly the saved weights (gathered from the
    FSDP shards; the float32 master weights rounded to the bf16 compute dtype), every rank makes the
    same weight loads, sleeps and wake-ups (collectives stay matched, also when rank 1 has no
    evaluation prompt), and each rank samples with its own seed."""
    run([*TORCHRUN, VLLM_WORKER, "train", str(model_dir), str(tmp_path)])
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "reward" in row]
    assert [row["step"] for row in steps] == [1, 2] and all(row["grad_norm"] > 0 for row in steps)
    rounds = int(sum(row["dynamic_sampling/rounds"] for row in steps))
    for rank, report in enumerate(ranks):
        assert report["weight_gap"] == 0.0  # the fake started 1.0 away from the model
        # vLLM computes in the learner's dtype (model.fsdp_param_dtype) and gets its weights in it.
        assert report["loader"] == [{"dtype": "bfloat16", "seed": 5 + rank, "distributed": True}]
        assert report["loaded_dtypes"] == ["torch.bfloat16"]
        # Loads: one at start-up, one before the first training round (the engine slept at level 2
        # after evaluating), one per further round, one after each step's update: 2 + rounds.
        assert report["calls"].count("load") == 2 + rounds
    assert rounds > 2  # dynamic sampling needed several rounds in some step
    without_generate = [[c for c in report["calls"] if c != "generate"] for report in ranks]
    assert without_generate[0] == without_generate[1]
    # Rank 0 generated for both evaluations (one task each) and every round; rank 1 only the rounds.
    assert ranks[0]["calls"].count("generate") == rounds + 2
    assert ranks[1]["calls"].count("generate") == rounds
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoints" / "step-000002").state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in initial_state().items())


def test_evaluation_split_across_processes_equals_one_process(tmp_path, model_dir):
    """Greedy evaluation of 7 tasks: each of 2 ranks decodes its share (4 and 3 tasks, with the
    policy unsharded), and the gathered completions, in task order, are one process's."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    run([sys.executable, VLLM_WORKER, "eval", str(model_dir), str(one)])
    run([*TORCHRUN, VLLM_WORKER, "eval", str(model_dir), str(two)])
    single, double = json.loads((one / "eval.json").read_text()), json.loads((two / "eval.json").read_text())
    assert single["tasks"] == double["tasks"] == list(range(7))
    assert len({text for (text,) in single["texts"]}) > 3  # the answers differ from task to task
    assert double == single
