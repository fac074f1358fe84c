"""Benchmark of the code sandbox: what isolation costs per run, and batch throughput.

(a) Executions per second of a trivial program (``pass``), one at a time: a bare subprocess of the
    same interpreter (``python -I -S -c pass``) against a bwrap container (``Sandbox.run``) and the
    weaker rlimits mode, measured side by side in each repeat; medians over the repeats and the
    overhead ratio (bare rate / sandboxed rate).
(b) Throughput of a batch of test runs (a program that reads a number and prints its double, each
    with its own stdin) at full pool concurrency (``Sandbox.run_many``, ``os.cpu_count()`` workers),
    against the same batch of bare subprocesses on a thread pool of the same size.

    .venv/bin/python benchmarks/bench_sandbox.py --out /tmp/bench_sandbox.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from grpopp.rewards.sandbox import Job, Sandbox, SandboxConfig

TRIVIAL = "pass\n"
DOUBLE = "print(int(input()) * 2)\n"


def bare_run(python: str, program: str, stdin: str = "") -> str:
    """The unisolated baseline: the same interpreter and flags, no container, no rlimits."""
    done = subprocess.run([python, "-I", "-S", "-c", program], input=stdin, capture_output=True, text=True, check=True)
    return done.stdout


def rate(runs: int, one: Any) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        one()
    return runs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="sequential runs per repeat in (a)")
    parser.add_argument("--batch", type=int, default=500, help="test runs in the batch of (b)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args()

    config = SandboxConfig(wall_timeout_s=10.0, cpu_time_s=5)
    with Sandbox(config) as box, Sandbox(config.model_copy(update={"isolation": "rlimits"})) as weak:
        python = box.python
        for warm in (lambda: bare_run(python, TRIVIAL), lambda: box.run(TRIVIAL), lambda: weak.run(TRIVIAL)):
            warm()
        rates: dict[str, list[float]] = {"bare": [], "bwrap": [], "rlimits": []}
        for _ in range(args.repeats):  # side by side in every repeat, so drift hits all three alike
            rates["bare"].append(rate(args.runs, lambda: bare_run(python, TRIVIAL)))
            rates["bwrap"].append(rate(args.runs, lambda: box.run(TRIVIAL)))
            rates["rlimits"].append(rate(args.runs, lambda: weak.run(TRIVIAL)))

        jobs = [Job(program=DOUBLE, stdin=f"{i}\n") for i in range(args.batch)]
        expected = [f"{2 * i}\n" for i in range(args.batch)]
        workers = config.worker_count
        batch: dict[str, list[float]] = {"bare": [], "bwrap": []}
        with ThreadPoolExecutor(workers) as pool:
            for _ in range(args.repeats):
                start = time.perf_counter()
                outputs = list(pool.map(lambda job: bare_run(python, job.program, str(job.stdin)), jobs))
                batch["bare"].append(time.perf_counter() - start)
                start = time.perf_counter()
                results = box.run_many(jobs)
                batch["bwrap"].append(time.perf_counter() - start)
                if [r.stdout for r in results] != expected or outputs != expected:
                    raise SystemExit("a batch run gave a wrong output; the benchmark is void")

    median = {name: statistics.median(values) for name, values in rates.items()}
    batch_median = {name: statistics.median(values) for name, values in batch.items()}
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python_host": platform.python_version(),
            "sandbox_interpreter": python,
            "caller_is_root": os.geteuid() == 0,
        },
        "a_sequential": {
            "runs_per_repeat": args.runs,
            "repeats": args.repeats,
            "execs_per_s_median": median,
            "execs_per_s_all": rates,
            "ms_per_exec_median": {name: 1000 / value for name, value in median.items()},
            "overhead_ratio_bwrap": median["bare"] / median["bwrap"],
            "overhead_ratio_rlimits": median["bare"] / median["rlimits"],
        },
        "b_batch": {
            "runs": args.batch,
            "workers": workers,
            "seconds_median": batch_median,
            "seconds_all": batch,
            "runs_per_s": {name: args.batch / value for name, value in batch_median.items()},
            "overhead_ratio_bwrap": batch_median["bwrap"] / batch_median["bare"],
        },
    }
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def print_table(r: dict[str, Any]) -> None:
    a, b, m = r["a_sequential"], r["b_batch"], r["machine"]
    print(f"$ {r['command']}")
    print(
        f"{m['cpus']} CPUs, kernel {m['kernel']}, sandbox interpreter {m['sandbox_interpreter']}, "
        f"caller is root: {m['caller_is_root']}; medians of {a['repeats']} repeats"
    )
    print()
    print(f"(a) trivial program, {a['runs_per_repeat']} runs one at a time")
    print("    mode                    execs/s   ms/exec   overhead vs bare")
    for name, label in (("bare", "bare subprocess"), ("rlimits", "rlimits (weak mode)"), ("bwrap", "bwrap container")):
        ratio = {"bare": 1.0, "rlimits": a["overhead_ratio_rlimits"], "bwrap": a["overhead_ratio_bwrap"]}[name]
        print(
            f"    {label:<22} {a['execs_per_s_median'][name]:8.1f}  {a['ms_per_exec_median'][name]:8.2f}"
            f"   {ratio:6.2f}x"
        )
    print()
    print(f"(b) batch of {b['runs']} test runs (stdin -> stdout), {b['workers']} workers")
    print("    mode                    seconds   runs/s")
    for name, label in (("bare", "bare subprocess"), ("bwrap", "bwrap run_many")):
        print(f"    {label:<22} {b['seconds_median'][name]:8.2f}  {b['runs_per_s'][name]:8.1f}")
    print(f"    bwrap / bare time        {b['overhead_ratio_bwrap']:.2f}x")


if __name__ == "__main__":
    main()
