"""``grpopp envs ...`` and ``grpopp verify`` run as a user runs them: subprocesses of the console script."""

import json
import subprocess
import sys
from pathlib import Path

GRPOPP = str(Path(sys.executable).with_name("grpopp"))
WORD_PLUGIN = str(Path(__file__).parent / "plugins" / "word_envs.py")

BROKEN_PLUGIN = '''
from grpopp.envs.base import EnvConfig, Environment, Task
from grpopp.envs.registry import register_env
from grpopp.rewards.types import VerifyResult


@register_env("always_wrong")
class AlwaysWrong(Environment[EnvConfig]):
    """A broken environment: its verifier rejects even the gold answer."""

    def num_tasks(self, split="train"):
        return 4

    def task(self, index, split="train"):
        return Task(id=self.task_id(index, split), env=self.name, split=split, index=index, prompt="2+2?", answer="4")

    def verify(self, task, completion):
        return VerifyResult(status="incorrect", score=0.0, decided_by="broken")

    def gold_completion(self, task):
        return "4"

    def wrong_completion(self, task):
        return "5"
'''


def grpopp(*args, stdin=None):
    return subprocess.run(
        [GRPOPP, *args], capture_output=True, text=True, timeout=180, input=stdin, env={"COLUMNS": "250"}
    )


def test_envs_list():
    result = grpopp("envs", "list")
    assert result.returncode == 0, result.stderr
    for name in ("arithmetic", "countdown", "gsm8k", "math", "reasoning_gym:<task>"):
        assert name in result.stdout


def test_envs_show_lists_options_with_defaults_and_help():
    result = grpopp("envs", "show", "arithmetic")
    assert result.returncode == 0, result.stderr
    for text in ("max_operand", "99", "Largest operand", "reward.format", "reward.length", "seed"):
        assert text in result.stdout


def test_envs_sample_json_is_reproducible():
    first = grpopp("envs", "sample", "arithmetic", "-n", "3", "--json", "--set", "max_operand=9")
    second = grpopp("envs", "sample", "arithmetic", "-n", "3", "--json", "--set", "max_operand=9")
    assert first.returncode == 0, first.stderr
    tasks = [json.loads(line) for line in first.stdout.splitlines()]
    assert [t["id"] for t in tasks] == ["arithmetic/train/0", "arithmetic/train/1", "arithmetic/train/2"]
    assert first.stdout == second.stdout
    for task in tasks:
        a, op, b = task["metadata"]["expression"].split()
        assert int(a) <= 9 and int(b) <= 9
        assert int(task["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b))


def test_envs_check_passes_for_builtins():
    for name in ("arithmetic", "countdown"):
        result = grpopp("envs", "check", name, "-n", "5")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "FAIL" not in result.stdout and result.stdout.count("pass") == 6
        assert "train/test disjoint by content" in result.stdout and "600/600 ok" in result.stdout


def test_envs_check_fails_overlapping_splits_and_names_the_prompts():
    # words_shared: 15 words, train and test tasks pick from all of them (ids differ, prompts do not)
    result = grpopp("envs", "check", "words_shared", "--plugin", WORD_PLUGIN, "--content-tasks", "200")
    assert result.returncode == 1, result.stdout + result.stderr
    row = result.stdout[result.stdout.index("train/test disjoint") :]
    assert "FAIL" in result.stdout and "200/400 ok" in row
    assert "words_shared/test/0 has the prompt of words_shared/train/" in " ".join(row.split())


def test_a_space_too_small_to_split_is_refused_with_the_fix():
    result = grpopp("envs", "sample", "arithmetic", "--set", "max_operand=3")
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "too small to split into train and test: 32 distinct expressions" in message
    assert "raise max_operand or num_operands" in message
    result = grpopp("envs", "sample", "words", "--plugin", WORD_PLUGIN)
    assert result.returncode == 2 and "words: the test split holds only 2 distinct problems" in result.stderr


def test_envs_check_fails_a_broken_plugin(tmp_path):
    plugin = tmp_path / "broken_env.py"
    plugin.write_text(BROKEN_PLUGIN)
    result = grpopp("envs", "check", "always_wrong", "--plugin", str(plugin))
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "gold answers score correct" in result.stdout


def test_verify_one_completion_prints_the_breakdown():
    task = json.loads(grpopp("envs", "sample", "arithmetic", "-n", "1", "--json").stdout)
    result = grpopp(
        "verify", "--env", "arithmetic", "--task-id", task["id"], "--completion", f"Answer: {task['answer']}"
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["status"] == "correct" and out["reward"] == 1.0 and out["valid"]
    assert out["components"]["correctness"] == {"value": 1.0, "weight": 1.0}
    assert out["verification"]["decided_by"] == "exact_int"


def test_verify_jsonl_keeps_going_past_a_bad_line():
    task = json.loads(grpopp("envs", "sample", "arithmetic", "-n", "1", "--json").stdout)
    lines = [
        json.dumps({"task_id": task["id"], "completion": f"Answer: {task['answer']}", "num_tokens": 3}),
        "{not json",
        json.dumps({"task_id": task["id"]}),
        json.dumps({"task_id": task["id"], "completion": "Answer: -1"}),
    ]
    result = grpopp("verify", "--env", "arithmetic", "--input", "-", stdin="\n".join(lines))
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[0]["status"] == "correct" and records[0]["num_tokens_source"] == "given"
    assert records[1]["line"] == 2 and "-:2" in records[1]["error"]
    assert records[2]["line"] == 3 and "missing field 'completion'" in records[2]["error"]
    assert records[3]["status"] == "incorrect"
    assert "2 input line(s) could not be read" in result.stderr


def test_envs_mix_from_flags_and_from_a_yaml_file(tmp_path):
    result = grpopp("envs", "mix", "--env", "arithmetic:0.7", "--env", "countdown:0.3", "--batches", "2")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "arithmetic/train" in line]
    assert len(rows) == 2 and all(" 7 " in row and " 3 " in row for row in rows)

    config = tmp_path / "mix.yaml"
    config.write_text(
        "envs:\n  - {name: arithmetic, weight: 1, config: {max_operand: 9}}\n  - {name: countdown, weight: 3}\n"
    )
    result = grpopp("envs", "mix", "--config", str(config), "--batches", "1", "--batch-size", "8")
    assert result.returncode == 0, result.stderr
    assert " 2 " in result.stdout and " 6 " in result.stdout


def test_bad_options_are_named():
    result = grpopp("envs", "sample", "arithmetic", "--set", "max_opernd=5")
    assert result.returncode == 2
    assert "Did you mean 'max_operand'" in result.stderr
    result = grpopp("envs", "mix", "--env", "arithmetic:-1")
    assert result.returncode == 2 and "weight must be a positive number" in result.stderr
