"""grpopp's ``vllm`` engine and evaluation split under torchrun (tests/test_distributed.py).

Usage: ``python tests/dist_vllm_worker.py MODE MODEL_DIR OUT_DIR`` (or under ``torchrun --nproc-per-node N``).

``train``: ``grpopp.jobs.run.train`` with ``rollout.engine.type=vllm``, vLLM itself replaced by
tests/vllm_fake.py (through ``vllm_engine._load_vllm``, so everything else is the real path). The
fake starts from a perturbed copy of the model, so a weight load that does not happen shows. The run
has sleep level 2 (every generation after the first needs a load, a collective under FSDP), dynamic
sampling on ``coin_half_flat`` (several generation rounds a step) and one evaluation task (rank 1
evaluates no prompt at all), and bf16 compute under FSDP (so vLLM gets bf16 weights). Each rank
writes ``rank-R.json``: the largest difference between its engine's final weights and the saved
final checkpoint rounded to bf16, its calls to vLLM, and what the loader got.

``eval``: greedy evaluation of 7 held-out tasks with the ``hf`` engine on the FSDP-sharded model; rank
0 writes ``eval.json`` with every completion in task order, for comparison with one process (the
model's weights are perturbed first: a random model answers the same to every prompt).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer
from vllm_fake import FakeLLM

from grpopp.envs.registry import load_plugin
from grpopp.evaluation.evaluate import EvalSettings, evaluate_engine
from grpopp.learner.distributed import close_distributed, init_distributed
from grpopp.learner.policy import Policy
from grpopp.rewards.shaping import LengthLimits
from grpopp.rollout import vllm_engine
from grpopp.rollout.base import SamplingParams
from grpopp.rollout.hf import HFEngine
from grpopp.training.config import TrainConfig, load_train_config

HERE = Path(__file__).parent
load_plugin(str(HERE / "plugins" / "coin_env.py"))

FAKES: list[FakeLLM] = []
LOADER_ARGS: list[dict[str, Any]] = []


def fake_load_vllm(
    source: str, settings: Any, dtype: str, seed: int, distributed: bool, model: Any, lora_rank: int = 0
) -> vllm_engine.LoadedVLLM:
    """``vllm_engine._load_vllm`` with vLLM replaced: the fake's model is read from ``source`` as
    vLLM would, then perturbed. (The fake stands in here for sleep level 2 under torchrun, which
    vLLM's CPU build cannot do; tests/test_vllm_real.py runs the real vLLM under torchrun.)"""
    LOADER_ARGS.append({"dtype": dtype, "seed": seed, "distributed": distributed})
    model = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    fake = FakeLLM(model, AutoTokenizer.from_pretrained(source))
    FAKES.append(fake)
    return vllm_engine.LoadedVLLM(fake, lambda **kwargs: kwargs)


def train(model_dir: Path, out: Path) -> None:
    from grpopp.jobs.run import train as run_train

    vllm_engine._load_vllm = fake_load_vllm  # type: ignore[assignment]
    config_file = out / f"config-{os.environ.get('RANK', '0')}.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(model_dir), "fsdp_param_dtype": "bfloat16"},
                "device": "auto",
                "steps": 2,
                "seed": 5,
                "envs": [{"name": "coin_half_flat"}],
                "rollout": {
                    "engine": {"type": "vllm", "sleep_level": 2, "weight_sync_bucket_mb": 1, "integrity_probe": False},
                    "completions_per_prompt": 2,
                    "max_new_tokens": 3,
                },
                "algorithm": {"preset": "grpopp", "dynamic_sampling": {"enabled": True, "max_generation_rounds": 3}},
                "batch": {"prompts_per_step": 4, "micro_batch_size": 2},
                "optim": {"lr": 5e-2},
                "eval": {"tasks_per_env": 1},
                "logging": {"progress": False, "run_dir": str(out / "run")},
            }
        )
    )
    config = load_train_config(config_file)
    info, _ = init_distributed("auto")
    summary = run_train(config)
    dist.barrier()  # rank 0 has written the final checkpoint
    (fake,) = FAKES
    final = AutoModelForCausalLM.from_pretrained(out / "run" / "checkpoints" / f"step-{summary.steps:06d}")
    saved = {name: value.to(torch.bfloat16).float() for name, value in final.state_dict().items()}
    gap = max(float((value - saved[name]).abs().max()) for name, value in fake.inner.model.state_dict().items())
    report = {
        "rank": info.rank,
        "weight_gap": gap,
        "loader": LOADER_ARGS,
        "calls": [c if isinstance(c, str) else list(c) for c in fake.calls],
        "loaded_dtypes": sorted(str(d) for d in fake.inner.dtypes),
        "requests": len(fake.requests),
    }
    (out / f"rank-{info.rank}.json").write_text(json.dumps(report))
    close_distributed()


def evaluate(model_dir: Path, out: Path) -> None:
    from grpopp.envs.mixture import build_mixture

    info, device = init_distributed("cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a random model answers "====" to everything: make the answers differ
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    policy = Policy(model, tokenizer, TrainConfig().optim, 1, device, info)
    envs = {env.name: env for env in build_mixture(TrainConfig.model_validate({"envs": [{"name": "coin"}]}).envs).envs}
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    with policy.full_parameters():
        run = evaluate_engine(
            HFEngine(policy.model, tokenizer),
            envs,
            {"coin": 7},
            params,
            LengthLimits(max_length=6, cache_length=0),
            EvalSettings(bootstrap=0),
            info,
        )
    if info.is_main:
        texts = [[s.completion.text for s in g.samples] for g in run.groups]
        tasks = [g.task.index for g in run.groups]
        accuracy = run.overall.avg.value
        (out / "eval.json").write_text(json.dumps({"tasks": tasks, "texts": texts, "accuracy": accuracy}))
    close_distributed()


if __name__ == "__main__":
    mode, model_dir, out_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    {"train": train, "eval": evaluate}[mode](model_dir, out_dir)
