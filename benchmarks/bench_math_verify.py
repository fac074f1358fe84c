"""Benchmark: MathVerifier's worker pool against a plain serial math-verify loop in this process.

(a) Throughput on 2,000 realistic (gold, completion) pairs: boxed fractions, decimals, LaTeX
    expressions, "Answer:" lines, wrong answers, answers hidden in <think> blocks, no answer at all.
    Medians over --repeats runs, serial and pool alternating. Both sides are warm, as in training:
    before timing, the serial loop (once) and each pool run's fresh verifier grade --warmup pairs
    whose gold answers differ from the timed ones (math-verify's LaTeX parser fills its caches as it
    goes), so the pool's gold cache holds none of the timed golds.
(b) The same pairs with ~1% replaced by inputs that hang sympy (huge power towers and the like):
    worst per-call latency and total time. The serial loop gets math-verify's own timeout (it runs
    on the main thread, where the signal works); it is reported unbounded if a call outlives it.

    .venv/bin/python benchmarks/bench_math_verify.py --out bench_math_verify.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from grpopp.rewards.math_verify_pool import MathVerifier, MathVerifyConfig

Pair = tuple[str, str]

FILLER = [
    "Let me set up the problem carefully. ",
    "We first simplify the expression step by step. ",
    "Checking the arithmetic again: 12 + 30 = 42 and 42 / 6 = 7. ",
    "Substituting back into the original equation confirms the value. ",
    "Consider the cases n = 1, 2, 3 separately. ",
]
HANGERS = ["9^{9^{9}}", "7^{7^{7^{7}}}", "2^{2^{2^{2^{2^{2^{2}}}}}}", "\\frac{3^{3^{19}}}{3^{3^{19}}+1}"]


def _reasoning(rng: random.Random) -> str:
    return "".join(rng.choice(FILLER) for _ in range(rng.randint(2, 6)))


def make_pair(rng: random.Random) -> Pair:
    """One (gold, completion) pair of a random kind; about 60% correct, 30% wrong, 10% no answer."""
    a, b = rng.randint(1, 40), rng.randint(2, 40)
    wrong = rng.random() < 0.33
    kind = rng.choice(["fraction", "decimal", "integer", "latex", "think", "unparseable"])
    if kind == "fraction":
        gold, answer = (
            f"\\frac{{{a}}}{{{b}}}",
            rng.choice([f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}", f"\\dfrac{{{a}}}{{{b}}}"]),
        )
        answer = f"\\frac{{{a + 1}}}{{{b}}}" if wrong else answer
        return gold, f"{_reasoning(rng)}So the answer is $\\boxed{{{answer}}}$."
    if kind == "decimal":
        gold = f"{a / 4:g}"
        answer = f"\\frac{{{a}}}{{4}}" if rng.random() < 0.5 else gold
        answer = f"{a / 4 + 0.5:g}" if wrong else answer
        return gold, f"{_reasoning(rng)}Therefore the result is \\boxed{{{answer}}}"
    if kind == "integer":
        gold, answer = str(a * b), str(a * b + 1 if wrong else a * b)
        ending = rng.choice([f"Answer: {answer}", f"The answer is {answer}.", f"so in total we get {answer} apples."])
        return gold, f"{_reasoning(rng)}{ending}"
    if kind == "latex":
        gold, right, bad = rng.choice(
            [
                (f"{a}\\sqrt{{2}}", f"\\sqrt{{{2 * a * a}}}", f"{a + 1}\\sqrt{{2}}"),
                ("x^2+2x+1", "(x+1)^2", "(x+2)^2"),
                (f"({a}, {a + b}]", f"({a}, {a + b}]", f"[{a}, {a + b}]"),
                (f"\\frac{{\\pi}}{{{b}}}", f"\\pi/{b}", f"\\frac{{\\pi}}{{{b + 1}}}"),
                (f"\\{{{a}, {b}\\}}", f"\\{{{b}, {a}\\}}", f"\\{{{a}, {b + 1}\\}}"),
            ]
        )
        return gold, f"{_reasoning(rng)}Hence $\\boxed{{{bad if wrong else right}}}$."
    if kind == "think":
        gold = str(a + b)
        return gold, f"<think>{_reasoning(rng)}maybe \\boxed{{{a + b + 7}}}</think>The answer is \\boxed{{{a + b}}}."
    return str(a), rng.choice(["I am not sure how to solve this.", "Let me think about it more before I commit."])


def make_pairs(count: int, seed: int) -> list[Pair]:
    return [make_pair(random.Random(seed * 1_000_003 + index)) for index in range(count)]


def warmup_pairs(count: int, seed: int) -> list[Pair]:
    """Pairs of the same kinds whose gold answers never occur among ``make_pairs``' (scaled by 1000)."""
    return [(f"1000 \\cdot ({gold})", completion) for gold, completion in make_pairs(count, seed + 7919)]


def with_hangers(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], set[int]]:
    """A copy with ``fraction`` of the pairs replaced by hanging inputs; also their indices."""
    rng = random.Random(seed)
    chosen = set(rng.sample(range(len(pairs)), max(1, round(fraction * len(pairs)))))
    mixed = [
        (str(rng.randint(2, 9)), f"Thus \\boxed{{{rng.choice(HANGERS)}}}") if i in chosen else p
        for i, p in enumerate(pairs)
    ]
    return mixed, chosen


def serial_grade(pairs: list[Pair], timeout_s: int) -> tuple[list[bool | None], list[float]]:
    """The plain loop: math_verify.parse / verify in this process, math-verify's own timeouts."""
    from math_verify import parse, verify

    verdicts: list[bool | None] = []
    latencies = []
    for gold, completion in pairs:
        start = time.perf_counter()
        gold_parsed = parse(f"${gold}$", parsing_timeout=timeout_s)
        verdicts.append(verify(gold_parsed, parse(completion, parsing_timeout=timeout_s), timeout_seconds=timeout_s))
        latencies.append(time.perf_counter() - start)
    return verdicts, latencies


def pool_grade(pairs: list[Pair], config: MathVerifyConfig, warmup: list[Pair]) -> tuple[list[str], float]:
    """A fresh verifier, warmed up on ``warmup`` (workers started, parser caches filled), then one
    verify_many call, timed."""
    with MathVerifier(config) as verifier:
        verifier.verify_many(warmup or [("1", "\\boxed{1}")])
        start = time.perf_counter()
        statuses = [result.status for result in verifier.verify_many(pairs)]
        return statuses, time.perf_counter() - start


def worst_pool_latency(pairs: list[Pair], config: MathVerifyConfig) -> float:
    """Single verify() calls on one input of each hanging kind: the pool's worst per-call latency."""
    with MathVerifier(config) as verifier:
        verifier.verify("1", "\\boxed{1}")
        latencies = []
        for hanger in HANGERS:
            start = time.perf_counter()
            verifier.verify("2", f"Thus \\boxed{{{hanger}}}")
            latencies.append(time.perf_counter() - start)
        return max(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=400, help="pairs with other golds graded before timing")
    parser.add_argument("--timeout", type=float, default=5.0, help="hard limit per call (pool and serial)")
    parser.add_argument("--workers", type=int, default=0, help="0 = os.cpu_count()")
    parser.add_argument("--hang-fraction", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # the serial loop's "Timeout during ..." lines

    config = MathVerifyConfig(timeout_seconds=args.timeout, workers=args.workers)
    pairs = make_pairs(args.pairs, args.seed)
    serial_timeout = max(1, int(args.timeout))  # math-verify's alarm takes whole seconds

    warmup = warmup_pairs(args.warmup, args.seed)
    serial_grade(warmup, serial_timeout)
    serial_times, pool_runs = [], []
    for _ in range(args.repeats):  # alternating, so both sides see the same machine load
        serial_times.append(sum(serial_grade(pairs, serial_timeout)[1]))
        pool_runs.append(pool_grade(pairs, config, warmup))
    serial_s = statistics.median(serial_times)
    pool_s, pool_times = statistics.median(t for _, t in pool_runs), [t for _, t in pool_runs]
    statuses = Counter(pool_runs[0][0])

    mixed, hung = with_hangers(pairs, args.hang_fraction, args.seed + 1)
    serial_mixed_verdicts, serial_mixed_latencies = serial_grade(mixed, serial_timeout)
    mixed_statuses, pool_mixed_s = pool_grade(mixed, config, warmup)
    normal_agree = sum(
        a == b for i, (a, b) in enumerate(zip(mixed_statuses, pool_runs[0][0], strict=True)) if i not in hung
    )
    pool_worst = worst_pool_latency(mixed, config)
    serial_worst = max(serial_mixed_latencies)

    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "workers": config.worker_count},
        "pairs": len(pairs),
        "repeats": args.repeats,
        "warmup_pairs": args.warmup,
        "timeout_s": args.timeout,
        "pool_statuses_clean": dict(statuses),
        "a_throughput": {
            "serial_s_median": serial_s,
            "serial_s_all": serial_times,
            "pool_s_median": pool_s,
            "pool_s_all": pool_times,
            "serial_pairs_per_s": len(pairs) / serial_s,
            "pool_pairs_per_s": len(pairs) / pool_s,
            "speedup": serial_s / pool_s,
        },
        "b_hanging": {
            "hanging_inputs": len(hung),
            "serial_total_s": sum(serial_mixed_latencies),
            "serial_worst_call_s": serial_worst,
            "serial_bounded": serial_worst <= args.timeout + 1.0,
            "serial_hanging_verdicts": dict(Counter(str(serial_mixed_verdicts[i]) for i in hung)),
            "pool_total_s": pool_mixed_s,
            "pool_worst_call_s": pool_worst,
            "pool_bounded": pool_worst <= args.timeout + 1.0,
            "pool_statuses": dict(Counter(mixed_statuses)),
            "pool_hanging_statuses": dict(Counter(mixed_statuses[i] for i in hung)),
            "normal_results_same_as_clean_run": f"{normal_agree}/{len(pairs) - len(hung)}",
        },
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(r: dict[str, Any]) -> None:
    a, b = r["a_throughput"], r["b_hanging"]
    print(f"$ {r['command']}")
    print(
        f"{r['pairs']} pairs, {r['machine']['cpus']} CPUs, pool workers {r['machine']['workers']}, "
        f"timeout {r['timeout_s']:g} s, medians of {r['repeats']}; pool verdicts: {r['pool_statuses_clean']}"
    )
    print()
    print("(a) clean pairs              serial loop      pool")
    print(f"    total time (median)      {a['serial_s_median']:8.2f} s  {a['pool_s_median']:8.2f} s")
    print(f"    pairs per second         {a['serial_pairs_per_s']:8.1f}    {a['pool_pairs_per_s']:8.1f}")
    print(f"    pool speed-up            {a['speedup']:.2f}x")
    print()
    print(f"(b) {b['hanging_inputs']} hanging inputs mixed in  serial loop      pool")
    print(f"    total time               {b['serial_total_s']:8.2f} s  {b['pool_total_s']:8.2f} s")
    print(f"    worst call               {b['serial_worst_call_s']:8.2f} s  {b['pool_worst_call_s']:8.2f} s")
    print(f"    bounded by timeout+1 s   {b['serial_bounded']!s:>8}    {b['pool_bounded']!s:>8}")
    print(f"    serial: hanging inputs -> verify() returned {b['serial_hanging_verdicts']} (a timeout reads as False)")
    print(
        f"    pool: hanging inputs -> {b['pool_hanging_statuses']}, "
        f"normal results unchanged {b['normal_results_same_as_clean_run']}"
    )


if __name__ == "__main__":
    main()
