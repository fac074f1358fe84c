"""Benchmark: held-out accuracy at equal wall time, with and without dynamic sampling (issue 18).

Three algorithms train the warm-started tiny model (``grpopp.recipes.tiny``) for the same wall time on
a held-out addition environment that this file defines as a user plugin (``bench_addition``: sums of
two numbers in 0..49, prompt "{expression}=", the expressions split by content into train and test):

- ``dapo-no-ds``: the ``dapo`` preset with dynamic sampling off;
- ``grpopp-fixed``: the ``grpopp`` preset with dynamic sampling as it was built before (and as DAPO's
  recipe and verl's ``filter_groups`` do it): every round generates 2x the missing prompts, and groups
  with signal beyond the batch are thrown away (``adaptive=false``, ``max_staleness=0``,
  ``oversample_factor=2``);
- ``grpopp``: the ``grpopp`` preset as shipped: rounds ask for missing / (1 - p), and surplus groups
  are carried to the next step.

Every run: 8 prompts x 8 completions a step, at most 32 new tokens, temperature 1, AdamW lr 1e-4
constant, the hf engine, fp32, on this machine's CPU threads (``--threads``). The runs alternate
(seed 0: the three algorithms, then seed 1, ...), each in its own subprocess that trains until
``--seconds`` of training-loop wall time have passed (the step under way finishes), then evaluates on
the first ``--eval-tasks`` test tasks, sampled at temperature 1 (avg@1 with ``--eval-samples``
completions per task) and greedy. Measured per run: steps, completions generated and trained per
second, and the share of generated groups with signal that were wasted (thrown away or dropped for
age, never trained). Reported: the mean and the spread (min..max) over seeds.

    .venv/bin/python benchmarks/bench_dynamic_sampling.py --seconds 60 --seeds 0 1 2 --eval-tasks 300 --out /tmp/ds.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PLUGIN = '''
"""bench_addition: two-number sums in 0..49 with the warm start's prompt, held out by content."""
from grpopp.envs.arithmetic import ArithmeticConfig, ArithmeticEnv
from grpopp.envs.registry import register_env


class AdditionConfig(ArithmeticConfig):
    max_operand: int = 49
    operators: tuple = ("+",)
    prompt_template: str = "{expression}="
    extraction: tuple = ("last_number",)


@register_env("bench_addition")
class Addition(ArithmeticEnv):
    """a + b with a, b in 0..49; train and test split by the expression."""

    config_class = AdditionConfig
'''

ALGORITHMS: dict[str, dict[str, Any]] = {
    "dapo-no-ds": {"preset": "dapo", "dynamic_sampling": {"enabled": False}},
    "grpopp-fixed": {
        "preset": "grpopp",
        "dynamic_sampling": {"adaptive": False, "max_staleness": 0, "oversample_factor": 2.0},
    },
    "grpopp": {"preset": "grpopp"},
}


def run_config(algorithm: dict[str, Any], seed: int, run_dir: Path) -> dict[str, Any]:
    return {
        "model": {"name_or_path": "tiny", "attn_implementation": "eager"},
        "rollout": {
            "engine": {"type": "hf", "batch_size": 256},
            "completions_per_prompt": 8,
            "max_new_tokens": 32,
            "temperature": 1.0,
        },
        "algorithm": algorithm,
        "envs": [{"name": "bench_addition"}],
        "batch": {"prompts_per_step": 8, "micro_batch_size": 64},
        "optim": {"lr": 1e-4, "warmup_steps": 0, "schedule": "constant"},
        "steps": 1_000_000,
        "eval": {"tasks_per_env": 0},
        "logging": {"run_dir": str(run_dir), "progress": False, "samples_per_step": 0},
        "seed": seed,
    }


def worker(args: argparse.Namespace) -> None:
    """One run: train for ``--seconds``, evaluate, print a JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    import yaml

    from grpopp.envs.registry import load_plugin
    from grpopp.evaluation.evaluate import EvalSettings, evaluate_engine
    from grpopp.jobs.run import load_model, make_engine, model_source
    from grpopp.learner.policy import Policy
    from grpopp.training.config import load_train_config
    from grpopp.training.trainer import Trainer

    load_plugin(args.plugin)
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        run_dir.mkdir()
        config_file = Path(scratch) / "config.yaml"
        config_file.write_text(yaml.safe_dump(run_config(ALGORITHMS[args.algorithm], args.seed, run_dir)))
        config = load_train_config(config_file)
        torch.manual_seed(config.seed)
        source = model_source(config.model)
        model, tokenizer = load_model(config.model, source)
        policy = Policy(model, tokenizer, config.optim, config.derived().total_optimizer_steps, torch.device("cpu"))
        engine = make_engine(config, policy.model, tokenizer, source)
        trainer = Trainer(config, policy, engine, run_dir)
        totals = dict.fromkeys(("generated", "trained", "signal", "wasted", "rounds"), 0.0)
        phases = dict.fromkeys(("generation", "scoring", "training", "other"), 0.0)
        started = time.perf_counter()
        while time.perf_counter() - started < args.seconds:
            metrics = trainer.train_step().metrics
            trainer.step += 1
            groups = metrics["dynamic_sampling/groups_generated"]
            totals["generated"] += metrics["completions_generated"]
            totals["trained"] += metrics["completions_trained"]
            totals["signal"] += groups * (1 - metrics["dynamic_sampling/zero_variance_fraction"])
            totals["rounds"] += metrics["dynamic_sampling/rounds"]
            for phase in ("generation", "scoring", "training"):
                phases[phase] += metrics[f"time/{phase}"]
            phases["other"] += metrics["time/step"] - sum(metrics[f"time/{p}"] for p in phases if p != "other")
            totals["wasted"] += (
                metrics["dynamic_sampling/groups_wasted"] + metrics["dynamic_sampling/groups_dropped_stale"]
            )
        seconds = time.perf_counter() - started
        accuracy = {}
        for name, greedy, samples in (("sampled", False, args.eval_samples), ("greedy", True, 1)):
            params = config.rollout.sampling_params(seed=1234, greedy=greedy)
            run = evaluate_engine(
                engine,
                trainer.envs,
                {"bench_addition": args.eval_tasks},
                params,
                trainer.limits,
                EvalSettings(samples=samples, bootstrap=0),
            )
            accuracy[name] = run.overall.avg.value
        trainer.log.close()
    print(
        json.dumps(
            {
                "algorithm": args.algorithm,
                "seed": args.seed,
                "steps": trainer.step,
                "seconds": seconds,
                "generated_per_s": totals["generated"] / seconds,
                "trained_per_s": totals["trained"] / seconds,
                "wasted_share": totals["wasted"] / max(totals["signal"], 1.0),
                "accuracy_sampled": accuracy["sampled"],
                "accuracy_greedy": accuracy["greedy"],
                "rounds_per_step": totals["rounds"] / max(trainer.step, 1),
                "seconds_per_step": {phase: value / max(trainer.step, 1) for phase, value in phases.items()},
            }
        )
    )


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for algorithm in dict.fromkeys(r["algorithm"] for r in results):
        runs = [r for r in results if r["algorithm"] == algorithm]
        row: dict[str, Any] = {"runs": len(runs)}
        for key in ("steps", "generated_per_s", "trained_per_s", "wasted_share", "accuracy_sampled", "accuracy_greedy"):
            values = [r[key] for r in runs]
            row[key] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
        table[algorithm] = row
    return table


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row[key]
    return f"{value['mean']:{fmt}} ({value['min']:{fmt}}..{value['max']:{fmt}})"


def print_table(table: dict[str, dict[str, Any]], seconds: float, seeds: list[int]) -> None:
    print(f"\nequal wall time: {seconds:g} s of training per run; seeds {seeds}; mean (min..max) over seeds\n")
    print("| run | steps | generated/s | trained/s | wasted groups with signal | held-out sampled acc | greedy |")
    print("|---|---|---|---|---|---|---|")
    columns = [
        ("steps", ".0f"),
        ("generated_per_s", ".0f"),
        ("trained_per_s", ".0f"),
        ("wasted_share", ".1%"),
        ("accuracy_sampled", ".3f"),
        ("accuracy_greedy", ".3f"),
    ]
    for algorithm, row in table.items():
        print(f"| {algorithm} | " + " | ".join(_cell(row, key, fmt) for key, fmt in columns) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="training wall time per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--eval-tasks", type=int, default=400)
    parser.add_argument("--eval-samples", type=int, default=4, help="sampled completions per task (avg@k)")
    parser.add_argument("--algorithms", nargs="+", choices=list(ALGORITHMS), default=list(ALGORITHMS))
    parser.add_argument("--out", type=Path, default=None, help="write the runs and the table as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--algorithm", choices=list(ALGORITHMS), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--plugin", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        plugin = Path(scratch) / "bench_addition.py"
        plugin.write_text(PLUGIN)
        for seed in args.seeds:
            for algorithm in args.algorithms:  # alternating: machine load hits every algorithm alike
                command = [sys.executable, __file__, "--worker", "--algorithm", algorithm, "--seed", str(seed)]
                command += ["--plugin", str(plugin), "--seconds", str(args.seconds), "--threads", str(args.threads)]
                command += ["--eval-tasks", str(args.eval_tasks), "--eval-samples", str(args.eval_samples)]
                out = subprocess.run(command, capture_output=True, text=True, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                results.append(result)
                print(json.dumps(result), flush=True)
    table = summarise(results)
    print_table(table, args.seconds, args.seeds)
    if args.out:
        args.out.write_text(
            json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": results, "table": table}, indent=1)
        )


if __name__ == "__main__":
    main()
