"""One optimizer update on a fixed batch, in one process or under ``torchrun`` (tests/test_distributed.py).

Usage: ``python tests/dist_worker.py OUT.pt MINI_BATCHES [kl] [flat] [checkpointing] [lora] [selective]`` (or under
``torchrun --nproc-per-node N``);
``kl`` adds a KL term against a reference model (sharded too under torchrun); ``flat`` turns the
shared-prompt pass off (one pass over each whole sequence: the second method the tests compare with);
``checkpointing`` turns gradient (activation) checkpointing on (``selective``: selective checkpointing,
``grpopp.learner.recompute``); ``lora`` trains LoRA adapters (r=4,
B seeded nonzero) on the frozen model, with ``kl`` against the model with its adapters off.
Every rank builds the same seeded random model and the same batch of 6 groups of 2 (3 per mini-batch
with two mini-batches: unequal shares per rank, so padding passes), two with advantage 0, and
runs ``Trainer.update``; rank 0 saves the gathered parameters (LoRA: the adapters, and the merged
weights) and the update's metrics to OUT.pt (LoRA: and the checkpoint's model files to OUT.model/).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import yaml

from grpopp.learner.distributed import close_distributed, init_distributed
from grpopp.learner.lora import LoraSettings, add_lora
from grpopp.learner.policy import Policy, shard_model
from grpopp.learner.recompute import enable_checkpointing
from grpopp.recipes.tiny import TinyModelConfig, build_model, build_tokenizer
from grpopp.rollout.hf import HFEngine
from grpopp.training.batch import TrainTensors
from grpopp.training.config import load_train_config
from grpopp.training.trainer import Trainer, make_reference


def main(out: Path, mini_batches: int, kl: bool, flat: bool, checkpointing: bool, lora: bool, selective: bool) -> None:
    info, device = init_distributed("cpu")
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))
    if lora:
        add_lora(model, LoraSettings(r=4, alpha=8))
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    if checkpointing or selective:  # as run.load_model does it, before the model is sharded
        enable_checkpointing(model, "selective" if selective else "full")
    folder = Path(tempfile.mkdtemp())
    config_file = folder / "config.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": "unused"},
                "rollout": {"completions_per_prompt": 2, "max_new_tokens": 4},
                "algorithm": {"preset": "grpopp", "loss": {"tis": "off", "kl_coef": 0.05 if kl else 0.0}},
                "envs": [{"name": "arithmetic"}],
                "batch": {
                    "prompts_per_step": 6,
                    "micro_batch_size": 2,
                    "mini_batches": mini_batches,
                    "share_prompts": not flat,
                },
                "optim": {"lr": 1e-2, "weight_decay": 0.1},
                "logging": {"progress": False},
            }
        )
    )
    config = load_train_config(config_file)
    reference = make_reference(model) if kl and not lora else None
    if reference is not None and info.enabled:
        shard_model(reference)
    policy = Policy(model, tokenizer, config.optim, 10, device, info)
    trainer = Trainer(config, policy, HFEngine(policy.model, tokenizer), folder / "run", reference)
    completions = [
        [10, 11],
        [5, 6, 7],
        [12],
        [13, 14, 15],
        [16],
        [17, 18],
        [40, 41, 42, 43],
        [19],
        [20, 21],
        [22],
        [23],
        [24, 25],
    ]
    prompts = [[30, 31, 32]] * 2 + [[33, 34]] * 2 + [[35]] * 2 + [[36, 37]] * 2 + [[38, 39, 30]] * 2 + [[41]] * 2
    tensors = TrainTensors(
        prompts=prompts,
        completions=completions,
        sampler_logprobs=[[-1.0] * len(c) for c in completions],
        rewards=torch.zeros(12, dtype=torch.float64),
        valid=torch.ones(12, dtype=torch.bool),
        trained=torch.ones(12, dtype=torch.bool),
    )
    advantages = torch.tensor([0.5, -0.5, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -0.25, 0.25, 0.75, -0.75])
    metrics = trainer.update(tensors, advantages)
    state = policy.gathered_state(merged=lora)
    if info.is_main:
        torch.save({**state, "metrics": metrics, "world_size": info.world_size}, out)
        if lora:  # a checkpoint's model files: the adapters, and the merged model in merged/
            policy.save_pretrained(out.with_suffix(".model"), state, merged=True)
    trainer.log.close()
    close_distributed()


if __name__ == "__main__":
    options = sys.argv[3:]
    flags = ("kl", "flat", "checkpointing", "lora", "selective")
    main(*(Path(sys.argv[1]), int(sys.argv[2])), *(name in options for name in flags))
