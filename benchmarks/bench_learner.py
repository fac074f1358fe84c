"""Benchmark: one learner update at a real model size -- peak memory and tokens per second of grpopp's
learner variants, side by side with TRL's ``GRPOTrainer`` on the same model, batch and LoRA settings.

Model: Qwen2.5-0.5B's architecture (24 layers, hidden 896, 14 query / 2 key-value heads, MLP 4864,
151,936-token vocabulary, tied embeddings: 494M parameters) with random weights, built locally from its
config (no hub here) into ``--model-dir`` on first use. Batch: a fixed rollout batch of ``--prompts`` x
``--group`` completions with random token ids, prompt lengths uniform in [--prompt-min, --prompt-max]
and completion lengths in [--completion-min, --completion-max], advantages +1 / -1 (zero mean in each
group). One update = the forward and backward passes over every micro-batch and one AdamW step (lr
1e-6, clip 1.0): token-level loss (DAPO), clip 0.2 / 0.28, no KL, on-policy (pi_old = the forward pass).

Variants (each in a fresh process; the runs alternate, variant after variant, ``--repeats`` times):

- ``full-plain``: full fine-tuning, log-probs by ``log_softmax(logits.float() / tau).gather`` (what
  grpopp did before ``grpopp.learner.logprobs``), micro-batches of ``--micro-batch-size`` rows;
- ``full-logits``: the model's logits [b, T, V] reduced a chunk at a time (``selected_logprobs``);
- ``full``: grpopp's default, the output layer fused into the chunked log-probs (the logits exist one
  chunk at a time: ``linear_selected_logprobs``), the same micro-batches;
- ``full-budget``: the same with token-budget micro-batches (``batch.max_tokens_per_micro_batch`` =
  micro-batch size x (longest prompt + longest completion): the fixed split's worst-case pass);
- ``lora``, ``lora-budget``: LoRA r=16, alpha 32, every linear layer (peft), as above;
- ``full-packed``, ``lora-packed``: padding-free passes (``batch.packing``) under the same budget,
  counted in real tokens;
- ``trl-full``, ``trl-lora``: TRL's ``GRPOTrainer`` (``benchmarks/learner_trl_worker.py``, run by
  ``--trl-python``, a separate venv) with the same micro-batches;
- ``full-selective``, ``lora-selective``: selective activation checkpointing
  (``model.gradient_checkpointing: selective``: the products' outputs kept, element-wise work redone);
- with gradient checkpointing (``model.gradient_checkpointing``; on by default in TRL's ``GRPOConfig``),
  run when named: ``full-ckpt``, ``lora-ckpt``, ``trl-full-ckpt``, ``trl-lora-ckpt``;
  ``full-ckpt-untiled``, ``lora-ckpt-untiled``: the same without the tiled MLP (``recompute.TILED_LAYERS``
  emptied in the worker: each layer rerun whole by torch's non-reentrant checkpoint, as before tiling).

Measured in each process around the update only, a steady-state one (AdamW's state is allocated
first by a step on zero gradients, which leaves the weights as they are): seconds, completion tokens
per second, the peak resident memory (``VmHWM`` after resetting it through ``/proc/self/clear_refs``
just before the update: weights, optimizer state and every transient) and its growth over the
resident memory before the update.

Memory and time are taken in separate runs (``--malloc split``, the default), as no one allocator
setting gives both honestly:

- memory, in one round first, with glibc mapping each block over 64 KiB and returning it when freed
  (``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0``), so the resident memory follows the live
  tensors; it is the same to the MiB from run to run. Under glibc's defaults its arenas keep freed
  blocks and the peak depends on the order of allocations (seen: 9.3 GB and 11.5 GB peaks for the
  same LoRA update);
- time, in ``--repeats`` rounds after it (medians), under glibc's defaults, as users run: the setting
  above page-faults every fresh block in, which slowed the LoRA update with gradient checkpointing by
  1.5x (88 s against 58 s), and variants that allocate more by more.

``--malloc exact`` or ``default`` takes both from every round under that one setting.

    .venv/bin/python benchmarks/bench_learner.py --trl-python /tmp/trl-venv/bin/python --repeats 3 \\
        --out /tmp/bench_learner.json

Set-up of the TRL venv (for this benchmark only): see ``benchmarks/learner_trl_worker.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GRPOPP_VARIANTS = (
    "full-plain",
    "full-logits",
    "full",
    "full-budget",
    "full-packed",
    "lora",
    "lora-budget",
    "lora-packed",
)
TRL_VARIANTS = ("trl-full", "trl-lora", "trl-full-ckpt", "trl-lora-ckpt")
UNTILED = ("full-ckpt-untiled", "lora-ckpt-untiled")
CHECKPOINTED = ("full-ckpt", "lora-ckpt", *UNTILED, "trl-full-ckpt", "trl-lora-ckpt")
"""Variants with gradient checkpointing (TRL's GRPOConfig has it on by default): not run unless named."""
SELECTIVE = ("full-selective", "lora-selective")
"""Variants with selective activation checkpointing (``model.gradient_checkpointing: selective``)."""
LORA = {"r": 16, "alpha": 32}
EXACT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
"""glibc settings under which the resident memory follows the live tensors (the memory round of
``--malloc split``; every round of ``--malloc exact``)."""


def malloc_rounds(malloc: str, repeats: int) -> list[tuple[str, bool, bool, bool]]:
    """The rounds of a benchmark under ``--malloc`` (split, exact, default), each as (label, run under
    EXACT_MALLOC?, taken for memory?, taken for time?)."""
    if malloc == "split":
        timed = [(f"time {k + 1}/{repeats}", False, False, True) for k in range(repeats)]
        return [("memory", True, True, False), *timed]
    return [(f"{k + 1}/{repeats}", malloc == "exact", True, True) for k in range(repeats)]


def build_model(folder: Path) -> None:
    """Qwen2.5-0.5B's architecture with random weights (seed 0), and the tiny model's tokenizer (the
    token ids of the batch are never decoded)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from grpopp.recipes.tiny import build_tokenizer

    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)


def make_batch(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    prompts, completions, advantages = [], [], []
    for _ in range(args.prompts):
        prompt = [rng.randrange(1, 151936) for _ in range(rng.randint(args.prompt_min, args.prompt_max))]
        for k in range(args.group):
            prompts.append(prompt)
            length = rng.randint(args.completion_min, args.completion_max)
            completions.append([rng.randrange(1, 151936) for _ in range(length)])
            advantages.append(1.0 if k % 2 == 0 else -1.0)
    return {
        "prompts": prompts,
        "completions": completions,
        "advantages": advantages,
        "group_size": args.group,
        "pad_token_id": 0,
        "temperature": 1.0,
    }


def memory_mib(field: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def grpopp_worker(args: argparse.Namespace) -> None:
    """One update with grpopp's ``Trainer.update`` on the batch file; prints a JSON line."""
    import torch

    from grpopp.jobs.run import load_model
    from grpopp.learner import policy as policy_module
    from grpopp.learner import recompute
    from grpopp.learner.policy import Policy
    from grpopp.rollout.hf import HFEngine
    from grpopp.training.batch import TrainTensors
    from grpopp.training.config import load_train_config
    from grpopp.training.trainer import Trainer

    torch.set_num_threads(args.threads)
    batch = json.loads(Path(args.batch).read_text())
    rows = len(batch["prompts"])
    lora = args.variant.startswith("lora")
    checkpointing: bool | str = "selective" if args.variant.endswith("selective") else "-ckpt" in args.variant
    budget = None
    packing = args.variant.endswith("packed")
    if args.variant.endswith(("budget", "packed")):
        longest = max(map(len, batch["prompts"])) + max(map(len, batch["completions"]))
        budget = args.micro_batch_size * longest
    config_file = Path(args.run_dir + ".yaml")
    config_file.write_text(
        json.dumps(  # JSON is YAML; resolved as ``grpopp train --config`` resolves a file (the preset)
            {
                "model": {
                    "name_or_path": args.model_dir,
                    "dtype": args.dtype,
                    "attn_implementation": "sdpa",
                    "lora": LORA if lora else None,
                    "gradient_checkpointing": checkpointing,
                },
                "rollout": {"completions_per_prompt": batch["group_size"], "temperature": batch["temperature"]},
                "algorithm": {"preset": "dapo", "loss": {"tis": "off", "kl_coef": 0.0}},
                "batch": {
                    "prompts_per_step": rows // batch["group_size"],
                    "micro_batch_size": args.micro_batch_size,
                    "max_tokens_per_micro_batch": budget,
                    "packing": packing,
                },
                "optim": {"lr": 1e-6, "weight_decay": 0.0, "max_grad_norm": 1.0},
                "eval": {"tasks_per_env": 0},
                "logging": {"run_dir": args.run_dir, "progress": False},
            }
        )
    )
    config = load_train_config(config_file)
    if args.variant in ("full-plain", "full-logits"):  # the logits path (no fused output layer)
        policy_module.output_layer = lambda model: None
    if args.variant == "full-plain":
        policy_module.selected_logprobs = plain_logprobs
    if args.variant in UNTILED:
        recompute.TILED_LAYERS = frozenset()
    model, tokenizer = load_model(config.model)
    policy = Policy(model, tokenizer, config.optim, 1, torch.device("cpu"))
    trainer = Trainer(config, policy, HFEngine(policy.model, tokenizer), Path(args.run_dir))
    completions = batch["completions"]
    tensors = TrainTensors(
        prompts=batch["prompts"],
        completions=completions,
        sampler_logprobs=[[0.0] * len(c) for c in completions],
        rewards=torch.tensor([max(a, 0.0) for a in batch["advantages"]], dtype=torch.float64),
        valid=torch.ones(rows, dtype=torch.bool),
        trained=torch.ones(rows, dtype=torch.bool),
    )
    advantages = torch.tensor(batch["advantages"])
    with torch.no_grad():  # page the memory-mapped weights in: they are not the update's memory
        sum(float(p.sum()) for p in model.parameters())
    # AdamW allocates its state at its first step: one step on zero gradients (weight decay 0: the weights
    # stay as they are) makes the measured update a steady-state one, as every later step is.
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.grad = torch.zeros_like(parameter)
    policy.optimizer.step()
    policy.optimizer.zero_grad(set_to_none=True)
    before = memory_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on
    started = time.perf_counter()
    metrics = trainer.update(tensors, advantages)
    seconds = time.perf_counter() - started
    peak = memory_mib("VmHWM")
    trainer.log.close()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens = sum(len(c) for c in completions)
    print(
        json.dumps(
            {
                "trainer": "grpopp",
                "variant": args.variant,
                "seconds": seconds,
                "tokens": tokens,
                "tokens_per_second": tokens / seconds,
                "peak_rss_mib": peak,
                "rss_before_mib": before,
                "peak_growth_mib": peak - before,
                "loss": metrics.get("loss"),
                "grad_norm": metrics.get("grad_norm"),
                "padding_fraction": metrics.get("padding_fraction"),
                "trainable_params": trainable,
                "max_tokens_per_micro_batch": budget,
            }
        )
    )


def plain_logprobs(logits: Any, targets: Any, temperature: float, with_entropy: bool = False) -> tuple[Any, Any]:
    """The plain computation: a float32 log-softmax of the whole [B, T, V] logits."""
    import torch

    log_softmax = torch.log_softmax(logits.float() / temperature, dim=-1)
    logprobs = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(log_softmax.exp() * log_softmax).sum(dim=-1)
    return logprobs, entropy


def run_variant(args: argparse.Namespace, variant: str, batch_file: Path, work: Path, exact: bool) -> dict[str, Any]:
    if variant in TRL_VARIANTS:
        command = [args.trl_python, str(HERE / "learner_trl_worker.py"), "--model", args.model_dir]
        command += ["--batch", str(batch_file), "--micro-batch-size", str(args.micro_batch_size)]
        command += ["--lora-r", str(LORA["r"] if "lora" in variant else 0), "--lora-alpha", str(LORA["alpha"])]
        command += ["--dtype", args.dtype, "--threads", str(args.threads)]
        command += ["--gradient-checkpointing"] if variant.endswith("ckpt") else []
    else:
        run_dir = work / f"run-{variant}-{time.monotonic_ns()}"
        command = [sys.executable, __file__, "--worker", "--variant", variant, "--batch", str(batch_file)]
        command += ["--model-dir", args.model_dir, "--micro-batch-size", str(args.micro_batch_size)]
        command += ["--dtype", args.dtype, "--threads", str(args.threads), "--run-dir", str(run_dir)]
    env = {**os.environ, **(EXACT_MALLOC if exact else {})}
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["variant"] = variant
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default="/tmp/bench-qwen05b")
    parser.add_argument("--trl-python", default="/tmp/trl-venv/bin/python")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[v for v in (*GRPOPP_VARIANTS, *SELECTIVE, *TRL_VARIANTS) if v not in CHECKPOINTED],
        choices=[*GRPOPP_VARIANTS, *SELECTIVE, "full-ckpt", "lora-ckpt", *UNTILED, *TRL_VARIANTS],
    )
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompt-min", type=int, default=48)
    parser.add_argument("--prompt-max", type=int, default=96)
    parser.add_argument("--completion-min", type=int, default=32)
    parser.add_argument("--completion-max", type=int, default=256)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--malloc",
        choices=["split", "exact", "default"],
        default="split",
        help="split: memory from one round under EXACT_MALLOC (glibc maps every block over 64 KiB and returns "
        "it when freed, so peak RSS is the peak of live tensors), then time from --repeats rounds under glibc's "
        "defaults; exact, default: both from every round under that setting",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--work", default="/tmp/bench-learner")
    parser.add_argument("--out", default=None)
    # worker mode (one grpopp variant in this process)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--batch", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        grpopp_worker(args)
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not (Path(args.model_dir) / "config.json").is_file():
        build_model(Path(args.model_dir))
    batch = make_batch(args)
    batch_file = work / "batch.json"
    batch_file.write_text(json.dumps(batch))
    tokens = sum(map(len, batch["completions"]))
    print(f"batch: {len(batch['prompts'])} completions, {tokens} completion tokens", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in args.variants}
    for label, exact, for_memory, for_time in malloc_rounds(args.malloc, args.repeats):
        for variant in args.variants:
            result = run_variant(args, variant, batch_file, work, exact)
            result.update(round=label, exact_malloc=exact, for_memory=for_memory, for_time=for_time)
            runs[variant].append(result)
            print(
                f"[{label}] {variant:14s} {result['seconds']:7.1f} s  "
                f"{result['tokens_per_second']:7.1f} tok/s  peak {result['peak_rss_mib']:8.0f} MiB  "
                f"growth {result['peak_growth_mib']:8.0f} MiB",
                flush=True,
            )
    summary = {}
    for variant, results in runs.items():
        timed = [r for r in results if r["for_time"]]
        measured = [r for r in results if r["for_memory"]]
        summary[variant] = {key: statistics.median(r[key] for r in timed) for key in ("seconds", "tokens_per_second")}
        summary[variant].update(
            {key: statistics.median(r[key] for r in measured) for key in ("peak_rss_mib", "peak_growth_mib")}
        )
        summary[variant]["padding_fraction"] = results[0].get("padding_fraction")
        summary[variant]["grad_norm"] = results[0].get("grad_norm")
    print(f"\n{'variant':14s} {'seconds':>8s} {'tok/s':>8s} {'peak MiB':>9s} {'growth MiB':>11s} {'padding':>8s}")
    for variant, row in summary.items():
        padding = row["padding_fraction"]
        print(
            f"{variant:14s} {row['seconds']:8.1f} {row['tokens_per_second']:8.1f} {row['peak_rss_mib']:9.0f} "
            f"{row['peak_growth_mib']:11.0f} {'' if padding is None else f'{padding:8.3f}'}"
        )
    if args.out:
        settings = {k: v for k, v in vars(args).items() if k not in ("worker", "variant", "batch", "run_dir")}
        Path(args.out).write_text(json.dumps({"settings": settings, "summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
