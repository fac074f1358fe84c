"""Benchmark: multi-turn episodes with the ``hf`` engine, and the cost of a tool call (issue 16).

1. Episodes per second on the ``tiny-guess`` recipe's game and model (built and cached on first use):
   the same held-out games played with every live episode's turn in one batched engine call
   (``rollout`` on all tasks at once), against one episode at a time (``rollout`` per task and
   sample), measured side by side in alternating repeats; medians.
2. Where a training step's time goes on that recipe: generation (with the environment's steps
   inside it), of which the environment's ``respond``, scoring, and training; medians over steps.
3. One tool call: the ``python`` tool (a fresh bubblewrap container per call) and the ``calculator``
   tool (``ast``), medians over calls.

    .venv/bin/python benchmarks/bench_multiturn.py --repeats 5 --tasks 64 --out /tmp/multiturn.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def episodes_per_second(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpopp.envs.registry import make_env
    from grpopp.recipes.tiny import TINY_GUESS_ENV, load_or_create_tiny_model
    from grpopp.rollout.base import SamplingParams
    from grpopp.rollout.episodes import rollout
    from grpopp.rollout.hf import HFEngine

    folder = load_or_create_tiny_model(recipe="guess", log=lambda _: None)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    env = make_env("guess", **TINY_GUESS_ENV)
    envs = {"guess": env}
    tasks = [env.task(i, "test") for i in range(args.tasks)]
    engine = HFEngine(model, tokenizer, batch_size=256)
    params = SamplingParams(max_new_tokens=3, temperature=1.0, seed=0)
    times: dict[str, list[float]] = {"batched": [], "one_at_a_time": []}
    turns = 0
    for _ in range(args.repeats):
        started = time.perf_counter()
        out = rollout(engine, tasks, envs, params, n=args.samples)
        times["batched"].append(time.perf_counter() - started)
        turns = sum(c.episode.turns for group in out for c in group if c.episode)
        started = time.perf_counter()
        for task in tasks:
            for _ in range(args.samples):
                rollout(engine, [task], envs, params, n=1)
        times["one_at_a_time"].append(time.perf_counter() - started)
    episodes = len(tasks) * args.samples
    result = {
        mode: {"median_s": statistics.median(values), "episodes_per_s": episodes / statistics.median(values)}
        for mode, values in times.items()
    }
    result["speedup"] = result["one_at_a_time"]["median_s"] / result["batched"]["median_s"]
    result["episodes"] = episodes
    result["mean_turns"] = turns / episodes
    return result


def step_time_shares(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    from grpopp.jobs.run import train
    from grpopp.training.config import load_train_config, recipe_path

    with tempfile.TemporaryDirectory() as scratch:
        data = yaml.safe_load(recipe_path("tiny-guess").read_text())
        data["steps"] = args.steps
        data["eval"] = {"tasks_per_env": 0}
        data["checkpoint"] = {"every": 0, "keep_last": 1}
        data["logging"] = {"run_dir": str(Path(scratch) / "run"), "progress": False}
        config_file = Path(scratch) / "config.yaml"
        config_file.write_text(yaml.safe_dump(data))
        train(load_train_config(config_file))
        rows = [json.loads(line) for line in (Path(scratch) / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [row for row in rows if "time/step" in row][1:]  # the first step warms caches up
    keys = ("time/step", "time/generation", "time/environment", "time/scoring", "time/training")
    medians = {key: statistics.median(row.get(key, 0.0) for row in rows) for key in keys}
    step = medians["time/step"]
    return {
        "median_seconds": medians,
        "shares": {key.removeprefix("time/"): value / step for key, value in medians.items() if key != "time/step"},
        "steps": len(rows),
    }


def tool_call_cost(args: argparse.Namespace) -> dict[str, Any]:
    from grpopp.envs.tools import CALCULATOR, call_tool, python_tool
    from grpopp.envs.tools import ToolCall as Call
    from grpopp.rewards.sandbox import SandboxConfig

    tools = {
        "python": python_tool(SandboxConfig(wall_timeout_s=5.0, cpu_time_s=3, memory_mb=512)),
        "calculator": CALCULATOR,
    }
    calls = {
        "python": Call(name="python", arguments={"code": "print(sum(range(10)))"}),
        "calculator": Call(name="calculator", arguments={"expression": "(3 + 4) * 2 / 7"}),
    }
    call_tool(tools, calls["python"], 10.0)  # the sandbox's first start (its probe) is not counted
    result = {}
    for name, call in calls.items():
        seconds = []
        for _ in range(args.tool_calls):
            started = time.perf_counter()
            text, failed = call_tool(tools, call, 10.0)
            seconds.append(time.perf_counter() - started)
            assert not failed, text
        result[name] = {"median_ms": 1000 * statistics.median(seconds), "calls": len(seconds)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=64, help="held-out games per repeat")
    parser.add_argument("--samples", type=int, default=2, help="episodes per game")
    parser.add_argument("--steps", type=int, default=20, help="training steps for the time shares")
    parser.add_argument("--tool-calls", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "episodes": episodes_per_second(args),
        "step": step_time_shares(args),
        "tools": tool_call_cost(args),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
