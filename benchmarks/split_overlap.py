"""How many held-out prompts also occur in the training stream, per built-in environment.

For each environment below: the first 200 test-split tasks (all of them when the split is smaller)
against the first 5,000 train-split tasks (all when smaller). Counted: test tasks whose prompt text
equals a train task's prompt text, and test tasks whose problem equals a train task's problem
(arithmetic: the expression; countdown: the multiset of numbers and the target, so a permutation of
the same numbers counts; reasoning-gym: the question; data sets: the prompt). Task ids are never
compared. The script uses only ``make_env``, ``num_tasks`` and ``task``, so it runs on any tree of
grpopp, e.g. on the committed code before a change:

    PYTHONPATH=. .venv/bin/python benchmarks/split_overlap.py                     # this tree
    mkdir -p /tmp/before && git archive HEAD | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before .venv/bin/python benchmarks/split_overlap.py           # the committed tree

The data environments also run with a separate test file that repeats training rows (the shipped
sample as its own test file, and a test file of the sample's 5 first rows plus 3 new ones), the case
where only dropping repeated questions keeps the splits apart. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import grpopp.envs
from grpopp.envs.base import Environment, Task
from grpopp.envs.registry import make_env

TEST_TASKS = 200
TRAIN_TASKS = 5_000

TINY_ARITHMETIC = {
    "num_operands": 2,
    "max_operand": 49,
    "operators": ["+", "-"],
    "prompt_template": "{expression}=",
    "extraction": ["last_number"],
}
"""The tiny recipe's options (grpopp/recipes/tiny-arithmetic.yaml)."""


def prompt_text(task: Task) -> str:
    if isinstance(task.prompt, str):
        return task.prompt
    return "\n".join(f"[{message.role}] {message.content}" for message in task.prompt)


def problem_key(task: Task) -> str:
    """The problem a task poses, computed here from the task alone (not by the code measured)."""
    metadata = task.metadata
    if task.env == "arithmetic":
        return str(metadata["expression"])
    if task.env == "countdown":
        numbers = sorted(int(n) for n in metadata["numbers"])  # type: ignore[union-attr]
        return f"{numbers}->{metadata['target']}"
    return prompt_text(task)


def first_tasks(env: Environment[Any], split: str, count: int) -> list[Task]:
    size = env.num_tasks(split)  # type: ignore[arg-type]
    return [env.task(i, split) for i in range(count if size is None else min(size, count))]  # type: ignore[arg-type]


def measure(name: str, options: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            env = make_env(name, **options)
        except Exception as exc:  # a configuration the new code refuses: reported, not a crash
            return {"refused": f"{type(exc).__name__}: {str(exc).splitlines()[-1][:160]}"}
    test = first_tasks(env, "test", TEST_TASKS)
    train = first_tasks(env, "train", TRAIN_TASKS)
    train_prompts = {prompt_text(task) for task in train}
    train_problems = {problem_key(task) for task in train}
    return {
        "test": len(test),
        "train": len(train),
        "prompt_overlap": sum(prompt_text(task) in train_prompts for task in test),
        "problem_overlap": sum(problem_key(task) in train_problems for task in test),
        "distinct_test_prompts": len({prompt_text(task) for task in test}),
        "warnings": [str(w.message)[:160] for w in caught],
        "seconds": round(time.perf_counter() - started, 2),
    }


def cases(folder: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, environment, options) of every measured case."""
    data = Path(str(resources.files("grpopp.envs") / "data"))
    partial: dict[str, Path] = {}
    for sample in ("gsm8k_sample.jsonl", "code_sample.jsonl"):
        rows = (data / sample).read_text(encoding="utf-8").splitlines()
        # 3 rows made new by editing their question (rows with a plain-text question: a HumanEval
        # "prompt" is code, which an edit would break)
        extra = [row for row in map(json.loads, rows) if "question" in row or "text" in row][-3:]
        for row in extra:
            column = "question" if "question" in row else "text"
            row[column] = f"(variant) {row[column]}"
        partial[sample] = folder / f"partial_{sample}"
        lines = [*rows[:5], *(json.dumps(row) for row in extra)]
        partial[sample].write_text("".join(f"{line}\n" for line in lines))
    return [
        ("arithmetic, default options", "arithmetic", {}),
        ("arithmetic, tiny recipe options", "arithmetic", TINY_ARITHMETIC),
        ("countdown, default options", "countdown", {}),
        ("reasoning_gym:chain_sum, default options", "reasoning_gym:chain_sum", {}),
        ("reasoning_gym:leg_counting, default options", "reasoning_gym:leg_counting", {}),
        (
            "reasoning_gym:basic_arithmetic, 2 one-digit terms",
            "reasoning_gym:basic_arithmetic",
            {"dataset_options": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}},
        ),
        ("gsm8k, shipped sample (hash slice)", "gsm8k", {}),
        ("math, shipped sample (hash slice)", "math", {}),
        ("code, shipped sample (hash slice)", "code", {}),
        ("gsm8k, test_path = the sample itself", "gsm8k", {"test_path": str(data / "gsm8k_sample.jsonl")}),
        ("gsm8k, test_path = 5 sample rows + 3 new", "gsm8k", {"test_path": str(partial["gsm8k_sample.jsonl"])}),
        ("code, test_path = 5 sample rows + 3 new", "code", {"test_path": str(partial["code_sample.jsonl"])}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per case instead of a table")
    args = parser.parse_args()
    print(f"envs from {Path(grpopp.envs.__file__).parent}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [(label, measure(name, options)) for label, name, options in cases(Path(tmp))]
    if args.json:
        for label, row in rows:
            print(json.dumps({"case": label, **row}))
        return
    columns = ["environment", "test tasks", f"test prompts in first {TRAIN_TASKS:,} train", "same problem"]
    print("\n| " + " | ".join([*columns, "distinct test prompts", "s"]) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for label, row in rows:
        if "refused" in row:
            print(f"| {label} | refused: {row['refused']} | | | | |")
            continue
        print(
            f"| {label} | {row['test']} | {row['prompt_overlap']} | {row['problem_overlap']} | "
            f"{row['distinct_test_prompts']} | {row['seconds']} |"
        )
    for label, row in rows:
        for warning in row.get("warnings", []):
            print(f"warning ({label}): {warning}")


if __name__ == "__main__":
    main()
