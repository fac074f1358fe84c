"""Training throughput and memory on GPUs: ``grpopp train`` with the ``hf`` and ``vllm`` engines.

The GPU machines this project gets have no model hub, so the model is built here: a Llama with the
layer shapes of Qwen2.5-0.5B (hidden 896, 24 layers, 14 query / 2 key-value heads, MLP 4864; about
360M parameters without the embeddings) and the project's small tokenizer, randomly initialised.
The task is the test plugin ``coin`` (tests/plugins/coin_env.py: correct when the completion's
first character has an even code point), so a random model still gets rewards with variance and
every step trains. Completions run to ``--max-new-tokens`` mostly (a random model seldom stops),
which makes the token counts, and so the rates, stable.

Each engine runs ``--steps`` steps of ``grpopp train`` (under ``torchrun`` with ``--nproc`` > 1) in
its own process, one after the other. Reported per engine: medians over the steps after the first
two (warm-up, CUDA graphs, caches) of generation tokens/s (generated tokens of the whole job over
the generation time), training tokens/s (trained completion tokens over the update time), seconds
per step, and memory: the trainer's peak ``torch.cuda.max_memory_allocated`` on rank 0 and the
peak device memory of each GPU from ``nvidia-smi`` sampled every 0.2 s (vLLM's pools included).

    .venv/bin/python benchmarks/bench_gpu_train.py --engines hf vllm --steps 12 --out /tmp/gpu.json
    .venv/bin/python benchmarks/bench_gpu_train.py --engines vllm --nproc 8 --out /tmp/gpu8.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from grpopp.recipes.tiny import build_tokenizer

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "tests" / "plugins" / "coin_env.py"
SHAPES = {
    # Qwen2.5-0.5B's transformer (its config.json), with the project's vocabulary.
    "qwen0.5b": {
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
    },
    # A quick check that the script works (runs on a CPU too, with --engines hf).
    "small": {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 256,
    },
}


def build(shape: str, folder: Path, max_length: int) -> int:
    """Save the model and tokenizer to ``folder``; return the number of parameters."""
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_length,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


class GpuMemory:
    """Peak ``memory.used`` (MiB) of every GPU, from ``nvidia-smi`` every ``period`` seconds."""

    def __init__(self, period: float = 0.2) -> None:
        self.period = period
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            ).stdout
            for line in out.strip().splitlines():
                index, used = (int(x) for x in line.split(","))
                self.peak[index] = max(self.peak.get(index, 0), used)
            time.sleep(self.period)

    def __enter__(self) -> GpuMemory:
        if torch.cuda.is_available():  # nothing to sample on a CPU machine
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def train_command(args: argparse.Namespace, engine: str, model_dir: Path, run_dir: Path) -> list[str]:
    grpopp = str(Path(sys.executable).with_name("grpopp"))
    launch = [grpopp]
    if args.nproc > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc)]
        launch.append(grpopp)
    sets = {
        "rollout.engine.type": engine,
        "rollout.max_new_tokens": args.max_new_tokens,
        "rollout.completions_per_prompt": args.group_size,
        "batch.prompts_per_step": args.prompts,
        "batch.micro_batch_size": args.micro_batch_size,
        "batch.skip_zero_advantage": "false",  # every completion is trained: a stable training rate
        "eval.tasks_per_env": 8,
        "checkpoint.every": 0,
        "logging.progress": "false",
        "model.dtype": "bfloat16" if args.nproc == 1 else "float32",
        "model.attn_implementation": "sdpa",
    }
    if engine == "vllm":
        sets["rollout.engine.gpu_memory_utilization"] = args.vllm_memory
        sets["rollout.engine.max_model_len"] = args.max_new_tokens + 64
    if args.nproc > 1:
        sets["model.fsdp_param_dtype"] = "bfloat16"  # float32 master weights, bf16 compute
    command = [*launch, "train", "--plugin", str(PLUGIN), "--env", "coin", "--model", str(model_dir)]
    command += ["--steps", str(args.steps), "--run-dir", str(run_dir)]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    return command


def summarise(run_dir: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "reward" in row][2:]  # the first two steps warm up
    if not steps:
        raise RuntimeError(f"{run_dir}: fewer than 3 steps logged; run more --steps")

    def median(key: str) -> float | None:
        values = [row[key] for row in steps if key in row]
        return statistics.median(values) if values else None

    parts = ("time/generation", "time/scoring", "time/training")
    seconds = [sum(row.get(part, 0.0) for part in parts) for row in steps]
    return {
        "steps_measured": len(steps),
        "generation_tokens_per_s": median("tokens_per_second/generation"),
        "training_tokens_per_s": median("tokens_per_second/training"),
        "seconds_per_step": statistics.median(seconds),
        "generation_s": median("time/generation"),
        "training_s": median("time/training"),
        "completion_length_mean": median("length/mean"),
        "trainer_peak_allocated_gib_rank0": max((row.get("memory/peak_allocated_gib", 0) for row in steps), default=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    parser.add_argument("--shape", default="qwen0.5b", choices=sorted(SHAPES))
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) under torchrun; 1: no torchrun")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=32, help="prompts per step")
    parser.add_argument("--group-size", type=int, default=8, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--vllm-memory", type=float, default=0.35, help="rollout.engine.gpu_memory_utilization")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_gpu_train"))
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per engine run")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = args.work / f"model-{args.shape}"
    parameters = build(args.shape, model_dir, args.max_new_tokens + 64)
    results: dict[str, Any] = {
        "shape": args.shape,
        "parameters": parameters,
        "nproc": args.nproc,
        "prompts": args.prompts,
        "group_size": args.group_size,
        "max_new_tokens": args.max_new_tokens,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "engines": {},
    }
    for engine in args.engines:
        run_dir = args.work / f"run-{engine}-{args.nproc}-{int(time.time())}"
        command = train_command(args, engine, model_dir, run_dir)
        print("$", " ".join(command), flush=True)
        started = time.perf_counter()
        with GpuMemory() as memory:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
        if done.returncode != 0:
            print(done.stdout[-4000:], done.stderr[-6000:], sep="\n", file=sys.stderr)
            results["engines"][engine] = {"error": done.stderr[-2000:]}
            continue
        summary = summarise(run_dir)
        summary["wall_s"] = time.perf_counter() - started
        summary["device_peak_mib"] = memory.peak
        results["engines"][engine] = summary
        print(json.dumps({engine: summary}, indent=2), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
