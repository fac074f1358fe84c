"""Tools and the built-in multi-turn environments: schemas, parsing, bad calls, the sandboxed python
tool, how tools reach the model, and the environments' own contract checks."""

from __future__ import annotations

import json
import time

import pytest
from test_multiturn import CHATML, ScriptedEngine, chatml_tokenizer

from grpopp.envs.base import Message
from grpopp.envs.check import check_env
from grpopp.envs.registry import make_env
from grpopp.envs.tools import (
    TOOLS_SYSTEM_PROMPT,
    BadToolCall,
    HermesParser,
    ToolCall,
    ToolEnv,
    ToolEnvConfig,
    calculator,
    tool,
)
from grpopp.rewards.shaping import LengthLimits
from grpopp.rollout.base import SamplingParams
from grpopp.rollout.chat import prompt_ids
from grpopp.rollout.episodes import rollout
from grpopp.rollout.groups import score_groups


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("(3 + 4) * 2 / 7", "2"),
        ("2**10 / 3", repr(1024 / 3)),
        ("0.1 + 0.2", "0.3"),  # decimal literals exactly: not 0.30000000000000004
        ("-7 // 2", "-4"),
        ("17 % 5", "2"),
        ("2 ** -2", "0.25"),
    ],
)
def test_calculator_by_hand(expression, expected):
    assert calculator(expression) == expected


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("__import__('os').system('true')", "unsupported expression element Call"),
        ("1 / 0", "division by zero"),
        ("9 ** 9 ** 9", "more than 1000 digits"),
        ("2 ** 0.5", "whole-number powers"),
        ("x + 1", "unsupported expression element Name"),
    ],
)
def test_calculator_refuses_what_is_not_arithmetic(expression, error):
    with pytest.raises((ValueError, ZeroDivisionError), match=error):
        calculator(expression)


def add(a: int, b: int = 1) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def test_tool_schema_comes_from_the_signature_and_docstring():
    assert tool(add).schema == {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "description": "The first number."},
                    "b": {"type": "integer", "description": "The second number."},
                },
                "required": ["a"],  # b has a default
            },
            "return": {"type": "integer"},
        },
    }

    def undocumented(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="docstring"):
        tool(undocumented)


def test_hermes_parser_reads_calls_and_names_what_is_wrong():
    parser = HermesParser()
    text = (
        'I will add. <tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
        '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1}"}</tool_call>'
        "<tool_call>{not json}</tool_call>"
        '<tool_call>{"arguments": {}}</tool_call>'
        '<tool_call>{"name": "add", "arguments": [1]}</tool_call>'
        '<tool_call>{"name": "add", "arguments": {"a": 5}}'  # cut at the turn's end: still read
    )
    calls = parser.parse(text)
    assert calls[0] == ToolCall(name="add", arguments={"a": 2, "b": 3})
    assert calls[1] == ToolCall(name="add", arguments={"a": 1})
    assert isinstance(calls[2], BadToolCall) and "not valid JSON" in calls[2].error
    assert isinstance(calls[3], BadToolCall) and '"name"' in calls[3].error
    assert isinstance(calls[4], BadToolCall) and "must be a JSON object" in calls[4].error
    assert calls[5] == ToolCall(name="add", arguments={"a": 5})
    assert parser.parse("The answer is 5.") == []


def boom() -> str:
    """Always fails."""
    raise RuntimeError("broken tool")


def slow() -> str:
    """Takes too long."""
    time.sleep(3)
    return "late"


class AddEnv(ToolEnv[ToolEnvConfig]):
    name = "add_env"
    config_class = ToolEnvConfig

    def make_tools(self):
        return [tool(add), tool(boom), tool(slow)]

    def num_tasks(self, split="train"):
        return None

    def task(self, index, split="train"):
        raise NotImplementedError

    def verify_episode(self, task, transcript):
        raise NotImplementedError


def test_every_bad_call_is_answered_with_an_error_and_counted():
    env = AddEnv(ToolEnvConfig(tool_timeout=0.3, max_calls_per_turn=6))
    calls = [
        '{"name": "add", "arguments": {"a": 2, "b": 40}}',
        '{"name": "nope", "arguments": {}}',
        '{"name": "add", "arguments": {"a": "two"}}',
        '{"name": "add", "arguments": {"c": 1, "a": 1}}',
        '{"name": "boom", "arguments": {}}',
        '{"name": "slow", "arguments": {}}',
        "{oops",
    ]
    turn = "".join(f"<tool_call>{c}</tool_call>" for c in calls)
    started = time.perf_counter()
    reply = env.respond(None, None, [Message(role="assistant", content=turn)])
    assert time.perf_counter() - started < 2.0
    contents = [m.content for m in reply.messages]
    assert contents[0] == "42" and reply.messages[0].role == "tool" and reply.messages[0].name == "add"
    assert contents[1].startswith("error: unknown tool 'nope'; the tools are add, boom, slow")
    assert contents[2].startswith("error: invalid arguments for add: a: Input should be a valid integer")
    assert "c: Unexpected keyword argument" in contents[3]
    assert contents[4] == "error: boom raised RuntimeError: broken tool"
    assert contents[5] == "error: slow took more than 0.3 s"
    assert contents[6] == "error: at most 6 tool calls run per turn"
    assert (reply.tool_calls, reply.tool_errors, reply.done) == (7, 6, False)
    assert env.respond(None, None, [Message(role="assistant", content="Final: 42")]).done


def test_python_tool_runs_in_a_fresh_container_per_call_unless_state_is_kept():
    env = make_env("math_tool")
    state = env.start(env.task(0))
    assert env.run_call(state, ToolCall(name="python", arguments={"code": "print(6 * 7)"})) == ("42\n", False)
    assert env.run_call(state, ToolCall(name="python", arguments={"code": "x = 1"})) == ("(no output)", False)
    text, failed = env.run_call(state, ToolCall(name="python", arguments={"code": "print(x)"}))
    assert "NameError" in text and not failed  # the program's own error: an ordinary result
    text, failed = env.run_call(state, ToolCall(name="python", arguments={"code": "open('/etc/passwd').read()[0]"}))
    assert "FileNotFoundError" in text or "PermissionError" in text
    kept = make_env("math_tool", keep_state=True)
    state = kept.start(kept.task(0))
    assert kept.run_call(state, ToolCall(name="python", arguments={"code": "x = 41\nprint('set')"})) == ("set\n", False)
    # The earlier cell runs again first, its output discarded: only this cell's output comes back.
    assert kept.run_call(state, ToolCall(name="python", arguments={"code": "print(x + 1)"})) == ("42\n", False)
    text, _ = kept.run_call(state, ToolCall(name="python", arguments={"code": "while True: pass"}))
    assert "limit]" in text


def test_tools_reach_the_model_through_the_template_or_a_system_message():
    tokenizer = chatml_tokenizer()
    schemas = [tool(add).schema]
    described = TOOLS_SYSTEM_PROMPT.format(tools=json.dumps(schemas[0]))
    user = [Message(role="user", content="2+40?")]
    # CHATML ignores tools=: a system message describes them.
    expected = f"<|im_start|>system\n{described}<|im_end|>\n<|im_start|>user\n2+40?<|im_end|>\n<|im_start|>assistant\n"
    assert prompt_ids(tokenizer, user, schemas) == tokenizer.encode(expected, add_special_tokens=False)
    # A template that renders tools gets them as tools=.
    tokenizer.chat_template = "{% if tools %}[tools:{{ tools | length }}]{% endif %}" + CHATML
    expected = "[tools:1]<|im_start|>user\n2+40?<|im_end|>\n<|im_start|>assistant\n"
    assert prompt_ids(tokenizer, user, schemas) == tokenizer.encode(expected, add_special_tokens=False)
    # A plain-text prompt gets the description first.
    assert prompt_ids(tokenizer, "2+40=", schemas) == tokenizer.encode(
        f"{described}\n\n2+40=", add_special_tokens=False
    )


def test_a_math_tool_episode_calls_the_calculator_then_answers():
    tokenizer = chatml_tokenizer()
    env = make_env("math_tool", system_prompt="Solve.")
    task = env.task(0)
    arguments = json.dumps({"expression": task.answer})
    call = f'<tool_call>{{"name": "calculator", "arguments": {arguments}}}</tool_call><|im_end|>'
    engine = ScriptedEngine(tokenizer, [call, f"The answer is \\boxed{{{task.answer}}}<|im_end|>"])
    results = rollout(engine, [task], {"math_tool": env}, SamplingParams(max_new_tokens=200), n=1)
    (episode,) = results[0]
    assert [m.role for m in episode.messages] == ["assistant", "tool", "assistant"]
    assert episode.messages[1].content == task.answer
    assert (episode.episode.turns, episode.episode.tool_calls, episode.episode.tool_errors) == (2, 1, 0)
    (group,) = score_groups([task], results, {"math_tool": env}, LengthLimits(max_length=200, cache_length=0))
    assert group.samples[0].reward.status == "correct"
    env_text = tokenizer.decode([t for t, m in zip(episode.token_ids, episode.model_mask, strict=True) if not m])
    assert env_text == f"\n<|im_start|>tool\n{task.answer}<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("name", ["guess", "math_tool", "code_feedback"])
def test_built_in_multi_turn_environments_pass_their_contract_check(name):
    report = check_env(make_env(name), num_tasks=4, content_tasks=40)
    assert report.ok, [(r.name, r.detail) for r in report.results if not r.passed]
    names = [r.name for r in report.results]
    assert "gold episodes score correct" in names and "wrong episodes do not score correct" in names


@pytest.mark.parametrize("name", ["guess", "math_tool", "code_feedback"])
def test_built_in_multi_turn_environments_train_and_evaluate_end_to_end(name, tmp_path):
    """`grpopp train` (2 steps) and `grpopp eval` of the trained run on a random tiny model: the
    episodes run through the same trainer, verifiers and evaluation as single turns; the eval table
    has the episode rows and samples.jsonl the transcripts, which `eval reverify` judges again."""
    from random_model import save_random_model
    from typer.testing import CliRunner

    from grpopp.cli.main import app

    model = save_random_model(tmp_path / "model")
    config = tmp_path / "run.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {"name_or_path": str(model)},
                "rollout": {"completions_per_prompt": 2, "max_new_tokens": 6},
                "algorithm": {"preset": "dapo", "dynamic_sampling": {"enabled": False}},
                "envs": [{"name": name, "config": {"max_turns": 2, "max_total_tokens": 40}}],
                "batch": {"prompts_per_step": 2, "micro_batch_size": 16},
                "steps": 2,
                "eval": {"tasks_per_env": 0},
                "logging": {"run_dir": str(tmp_path / "run"), "progress": False},
            }
        )
    )
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "--config", str(config)])
    assert trained.exit_code == 0, trained.output
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(1.0 <= m[f"{name}/turns"] <= 2.0 for m in metrics)
    evaluated = runner.invoke(app, ["eval", str(tmp_path / "run"), "--tasks", "2", "--out", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    assert "turns (mean)" in evaluated.output and "ended by turn limit" in evaluated.output
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    episodes = results["checkpoints"][0]["envs"][name]["episodes"]
    assert 1.0 <= episodes["turns_mean"] <= 2.0
    records = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert all(r["messages"][0]["role"] == "assistant" and r["trained_spans"] for r in records)
    reverified = runner.invoke(app, ["eval", "reverify", str(tmp_path / "eval" / "samples.jsonl")])
    assert reverified.exit_code == 0, reverified.output


def test_a_mixture_of_single_turn_and_multi_turn_environments_trains_in_one_step(tmp_path):
    """One rollout call serves both kinds: arithmetic's completions come from `generate` unchanged
    (no model mask, no transcript), guess's episodes from `generate_ids`; the mixture's quotas hold."""
    from random_model import save_random_model

    from grpopp.jobs.run import train
    from grpopp.training.config import TrainConfig

    model = save_random_model(tmp_path / "model")
    config = TrainConfig.model_validate(
        {
            "model": {"name_or_path": str(model)},
            "rollout": {"completions_per_prompt": 2, "max_new_tokens": 4},
            "algorithm": {"dynamic_sampling": {"enabled": False}},  # a random model: groups without signal
            "envs": [
                {"name": "arithmetic", "weight": 0.5},
                {"name": "guess", "weight": 0.5, "config": {"max_turns": 3, "max_total_tokens": 40}},
            ],
            "batch": {"prompts_per_step": 4, "micro_batch_size": 16},
            "steps": 1,
            "eval": {"tasks_per_env": 0},
            "logging": {"run_dir": str(tmp_path / "run"), "progress": False, "samples_per_step": 4},
        }
    )
    train(config)
    (metrics,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 1.0 <= metrics["guess/turns"] <= 3.0 and "arithmetic/turns" not in metrics
    assert metrics["completions_generated"] == 8  # 2 prompts of each environment x 2
    records = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    by_env = {r["task_id"].split("/")[0]: r for r in records}
    assert "messages" in by_env["guess"] and "messages" not in by_env["arithmetic"]
