"""One learner update of TRL's ``GRPOTrainer`` on a given rollout batch: its peak memory and time.

What is measured: the update only (no generation, no scoring): TRL's own ``training_step`` (forward through
TRL's fused LM head, GRPO loss, backward) on each micro-batch of ``--micro-batch-size`` rows in order, then
gradient clipping (max norm 1.0), one AdamW step and ``zero_grad``, as ``Trainer`` runs them at the end of an
accumulation window. Reported: wall time of that update, the process's peak resident memory during it
(``VmHWM`` after writing ``5`` to ``/proc/self/clear_refs`` just before it) and the resident memory before it.
The model, the trainer, the optimizer (``trainer.create_optimizer()``) and the inputs are all built first,
every weight is read once, since ``from_pretrained`` memory-maps them and pages them in only when used, and
AdamW's state is allocated by one step on zero gradients: the measured update is a steady-state one.

The inputs are exactly what ``GRPOTrainer._generate_and_score_completions`` returns, on policy: prompts
left-padded and completions right-padded over the whole batch, their masks, the given advantages,
``num_items_in_batch`` (completion tokens of the batch) and no ``old_per_token_logps``; they are cut into
micro-batches by TRL's ``split_tensor_dict``. The configuration matches grpopp's learner: no KL
(``beta=0``), token-level normaliser over the whole batch (``loss_type="dapo"``), clip 0.2/0.28, unscaled
advantages, lr 1e-6, ``adamw_torch``, ``max_grad_norm=1.0``; with ``--lora-r`` > 0 a LoRA adapter on all
linear layers. Deviation from ``Trainer.train()``: the rollout is given, so ``GRPOTrainer._prepare_inputs``
(which would generate, shuffle and split) returns each prepared micro-batch as it is.

Batch file (JSON): ``{"prompts": [[ids], ...], "completions": [[ids], ...], "advantages": [...],
"group_size": G, "pad_token_id": int, "temperature": float}``, one row per completion, groups adjacent.
Prints one JSON line (last line of stdout), also written to ``--out`` if given.

Set-up of the TRL venv (for this benchmark only; never a project dependency):

    python3 -m venv /tmp/trl-venv && /tmp/trl-venv/bin/pip install torch==2.13.0
    /tmp/trl-venv/bin/pip install trl==1.16.0 transformers==5.23.0 torch==2.13.0 peft==0.21.2

    /tmp/trl-venv/bin/python benchmarks/learner_trl_worker.py --model /tmp/bench-qwen05b \\
        --batch /tmp/batch.json --micro-batch-size 4 --lora-r 0 --dtype float32 --threads 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import transformers
import trl
from bench_learner import memory_mib  # beside this file; it imports nothing beyond the standard library
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import pad, split_tensor_dict


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder (weights and a tokenizer)")
    parser.add_argument("--batch", required=True, help="rollout batch JSON")
    parser.add_argument("--micro-batch-size", type=int, required=True)
    parser.add_argument("--lora-r", type=int, default=0, help="LoRA rank; 0 = full fine-tuning")
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--out", help="also write the JSON result here")
    return parser.parse_args()


def dummy_reward(completions, **kwargs) -> list[float]:
    """Never called: nothing is generated or scored."""
    return [0.0] * len(completions)


def build_trainer(args: argparse.Namespace, batch: dict, output_dir: str) -> GRPOTrainer:
    rows = len(batch["completions"])
    if rows % args.micro_batch_size:
        raise SystemExit(f"{rows} rows do not split into micro-batches of {args.micro_batch_size}")
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    config = GRPOConfig(
        output_dir=output_dir,
        beta=0.0,
        loss_type="dapo",
        epsilon=0.2,
        epsilon_high=0.28,
        scale_rewards="none",
        num_generations=batch["group_size"],
        per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=rows // args.micro_batch_size,
        max_completion_length=max(len(c) for c in batch["completions"]),
        temperature=batch["temperature"],
        learning_rate=1e-6,
        optim="adamw_torch",
        max_grad_norm=1.0,
        use_cpu=True,
        bf16=args.dtype == "bfloat16",
        activation_checkpointing=args.gradient_checkpointing,  # transformers 5's name for gradient_checkpointing
        use_vllm=False,
        report_to=[],
    )
    peft_config = None
    if args.lora_r > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    return GRPOTrainer(
        model=model,
        reward_funcs=dummy_reward,
        args=config,
        train_dataset=Dataset.from_dict({"prompt": ["unused"] * rows}),
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def rollout_inputs(trainer: GRPOTrainer, batch: dict) -> dict[str, torch.Tensor]:
    """The dict ``_generate_and_score_completions`` returns for this rollout (on policy, no KL, no vLLM)."""
    device = trainer.accelerator.device
    multiple = trainer.pad_to_multiple_of
    prompt_ids = [torch.tensor(ids) for ids in batch["prompts"]]
    completion_ids = [torch.tensor(ids) for ids in batch["completions"]]
    pad_id = batch["pad_token_id"]
    completion_mask = pad([torch.ones_like(ids) for ids in completion_ids], 0, "right", multiple).to(device)
    return {
        "prompt_ids": pad(prompt_ids, pad_id, "left", multiple).to(device),
        "prompt_mask": pad([torch.ones_like(ids) for ids in prompt_ids], 0, "left", multiple).to(device),
        "completion_ids": pad(completion_ids, pad_id, "right", multiple).to(device),
        "completion_mask": completion_mask,
        "advantages": torch.tensor(batch["advantages"], dtype=torch.float32, device=device),
        "num_items_in_batch": completion_mask.sum(),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    batch = json.loads(Path(args.batch).read_text())
    with tempfile.TemporaryDirectory(prefix="learner_trl_") as output_dir:
        trainer = build_trainer(args, batch, output_dir)
        inputs = rollout_inputs(trainer, batch)
        micro_batches = split_tensor_dict(inputs, trainer.args.gradient_accumulation_steps)

        # What Trainer.train() does before its first step: checkpointing, optimizer, accelerator.prepare
        if trainer.args.activation_checkpointing:
            trainer.model.activation_checkpointing_enable()
        trainer.create_optimizer()
        model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
        trainer._prepare_inputs = lambda prepared: prepared  # the rollout is given: no generation
        trainer.current_gradient_accumulation_steps = len(micro_batches)  # set per window by Trainer._run_epoch
        model.zero_grad()
        for tensor in model.state_dict().values():  # page in weights that from_pretrained left memory-mapped
            tensor.sum()
        # AdamW allocates its state at its first step: one step on zero gradients (weight decay 0: the
        # weights stay as they are) makes the measured update a steady-state one, as every later step.
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.grad = torch.zeros_like(parameter)
        trainer.optimizer.step()
        model.zero_grad()

        rss_before = memory_mib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts from the current RSS
        start = time.perf_counter()
        loss_sum = 0.0
        for micro_batch in micro_batches:
            loss_sum += trainer.training_step(model, micro_batch, None).item()
        grad_norm = trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        model.zero_grad()
        seconds = time.perf_counter() - start
        peak = memory_mib("VmHWM")

    tokens = int(inputs["completion_mask"].sum())
    result = {
        "trainer": "trl",
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "lora_r": args.lora_r,
        "micro_batch_size": args.micro_batch_size,
        "rows": len(batch["completions"]),
        "tokens": tokens,
        "positions": inputs["prompt_ids"].numel() + inputs["completion_ids"].numel(),
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "peak_rss_mib": peak,
        "rss_before_mib": rss_before,
        "peak_growth_mib": peak - rss_before,
        "loss_sum": loss_sum,
        "grad_norm": float(grad_norm),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    line = json.dumps(result)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
