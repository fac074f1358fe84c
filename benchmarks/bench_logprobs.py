"""Benchmark: peak memory and time of per-token log-probs (+ entropy) and their gradient, plain
(``log_softmax(logits.float() / tau).gather``, what the learner did before) against
``grpopp.learner.logprobs.selected_logprobs`` (chunked, backward recomputed), on the same logits.

Each variant runs in its own fresh process, which reports the growth of its peak resident memory
(``ru_maxrss``) over the logits and their gradient buffer, created before the measurement; runs
alternate. As in ``bench_learner.py`` (``--malloc split``), the memory comes from one round with glibc
returning freed blocks (``EXACT_MALLOC``: the peak follows the live tensors; under glibc's defaults
its arenas keep freed blocks and the chunked peak read 162 to 592 MiB over three runs) and the time
from the medians of ``--repeats`` rounds under glibc's defaults. Default shape: 8 x 256 positions of
Qwen2.5's 151,936-token vocabulary, logits in bfloat16 (as a bf16 model produces them).

    .venv/bin/python benchmarks/bench_logprobs.py --repeats 3 --out /tmp/logprobs.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_learner import EXACT_MALLOC, malloc_rounds  # beside this file: standard library imports only


def worker(args: argparse.Namespace) -> None:
    from grpopp.learner.logprobs import selected_logprobs

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    logits = torch.randn(args.batch, args.length, args.vocab, generator=generator).to(dtype).requires_grad_(True)
    targets = torch.randint(0, args.vocab, (args.batch, args.length), generator=generator)
    logits.grad = torch.zeros_like(logits)  # the gradient buffer exists in both variants: not counted
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if args.variant == "plain":
        log_softmax = torch.log_softmax(logits.float() / args.temperature, dim=-1)
        logprobs = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            entropy = -(log_softmax.exp() * log_softmax).sum(dim=-1)
    else:
        logprobs, entropy = selected_logprobs(logits, targets, args.temperature, with_entropy=True)
    logprobs.sum().backward()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "variant": args.variant,
                "peak_growth_mib": (peak - before) / 1024,
                "seconds": seconds,
                "entropy_mean": float(entropy.mean()),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=["plain", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    runs = []
    shape = ["--batch", str(args.batch), "--length", str(args.length), "--vocab", str(args.vocab)]
    shape += ["--dtype", args.dtype, "--temperature", str(args.temperature), "--threads", str(args.threads)]
    for label, exact, for_memory, for_time in malloc_rounds("split", args.repeats):
        for variant in ("plain", "chunked"):
            out = subprocess.run(
                [sys.executable, __file__, "--worker", "--variant", variant, *shape],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, **(EXACT_MALLOC if exact else {})},
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append(
                result | {"round": label, "exact_malloc": exact, "for_memory": for_memory, "for_time": for_time}
            )
            print(json.dumps(runs[-1]), flush=True)
    table = {}
    for variant in ("plain", "chunked"):
        mine = [r for r in runs if r["variant"] == variant]
        table[variant] = {
            "peak_growth_mib": statistics.median(r["peak_growth_mib"] for r in mine if r["for_memory"]),
            "seconds": statistics.median(r["seconds"] for r in mine if r["for_time"]),
        }
    logits_mib = args.batch * args.length * args.vocab * torch.finfo(getattr(torch, args.dtype)).bits / 8 / 2**20
    shape_text = f"{args.batch} x {args.length} x {args.vocab} {args.dtype}"
    print(f"\nlogits {shape_text} ({logits_mib:.0f} MiB); memory: exact malloc; time: medians of {args.repeats}")
    for variant, row in table.items():
        growth, seconds = row["peak_growth_mib"], row["seconds"]
        print(f"{variant:8s} peak memory growth {growth:8.0f} MiB   forward+backward {seconds:.2f} s")
    if args.out:
        args.out.write_text(
            json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": runs, "table": table}, indent=1)
        )


if __name__ == "__main__":
    main()
