"""What a run shows: one plain line per step in a file, a bar plus kept lines in a terminal, progress
of the tiny model's warm start and of evaluations, and transformers' own bars kept quiet."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from transformers.utils import logging as hf_logging

from grpopp.envs.registry import make_env
from grpopp.progress import StepDisplay, Ticker, format_duration, quiet_transformers_bars, step_line
from grpopp.recipes.tiny import TINY_ARITHMETIC_ENV, TinyModelConfig, build_model, build_tokenizer, warm_start

METRICS = {"reward": 0.5, "accuracy": 0.25, "length/mean": 12.34, "entropy": 1.23456}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0:00"), (59.4, "0:59"), (61, "1:01"), (3599.6, "1:00:00"), (3 * 3600 + 62, "3:01:02"), (float("nan"), "?")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_step_line():
    assert step_line(3, 10, METRICS, 1.5, 75) == (
        "step 3/10  reward 0.500  acc 0.250  len 12.3  entropy 1.235  1.50 s/step  ETA 1:15"
    )
    masked = {**METRICS, "masked/error": 0.125, "masked/timeout": 0.0625}
    assert "entropy 1.235  masked 0.188  1.50 s/step" in step_line(3, 10, masked, 1.5, 75)
    assert (
        step_line(1, 2, {}, 0.0, float("nan"))
        == "step 1/2  reward nan  acc nan  len nan  entropy nan  0.00 s/step  ETA ?"
    )


def lines_of(console: Console) -> list[str]:
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "\n").splitlines()


def test_without_a_terminal_every_step_is_a_line():
    console = Console(file=io.StringIO(), force_terminal=False, width=40)  # narrow: lines must not wrap
    with StepDisplay(console, total_steps=5, first_step=2, print_every=10, bar=True) as display:
        for step in (3, 4, 5):
            display.step(step, METRICS, 0.5)
        display.print("held-out accuracy at step 5: 0.500")
    lines = lines_of(console)
    assert [line[:9] for line in lines] == ["step 3/5 ", "step 4/5 ", "step 5/5 ", "held-out "]
    assert lines[0].startswith("step 3/5  reward 0.500  acc 0.250  len 12.3  entropy 1.235  0.50 s/step  ETA ")
    assert lines[2].endswith("ETA 0:00")  # nothing left after the last step


def test_in_a_terminal_a_bar_and_a_kept_line_every_print_every_steps():
    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    with StepDisplay(console, total_steps=5, first_step=0, print_every=2, bar=True) as display:
        for step in range(1, 6):
            display.step(step, METRICS, 0.5)
    kept = [line for line in lines_of(console) if re.match(r"^step \d/5  reward", line)]
    assert [line[:8] for line in kept] == ["step 2/5", "step 4/5"]
    assert any("━" in line for line in lines_of(console))  # the bar was drawn


def test_print_every_zero_keeps_no_line_in_a_terminal():
    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    with StepDisplay(console, total_steps=3, first_step=0, print_every=0, bar=False) as display:
        for step in range(1, 4):
            display.step(step, METRICS, 0.5)
    assert console.file.getvalue() == ""  # type: ignore[attr-defined]


def test_ticker_writes_plain_lines_without_a_terminal():
    written: list[str] = []
    with Ticker("evaluating", 8, log=written.append, every_seconds=0.0) as ticker:
        ticker.update(2)
        ticker.advance(2, note="loss 0.5")
        ticker.update(6, total=6)
    assert [line.split(",")[0] for line in written] == [
        "evaluating: 2/8",
        "evaluating: 4/8 (loss 0.5)",
        "evaluating: 6/6 (loss 0.5)",
    ]
    assert written[-1].endswith("ETA 0:00")
    bounded: list[str] = []
    with Ticker("warm start", 10, log=bounded.append, every_seconds=0.0, bound=True) as ticker:
        ticker.advance()
    assert re.fullmatch(r"warm start: 1/10, \d+:\d\d elapsed, at most \d+:\d\d left", bounded[0])


def test_ticker_lines_are_spaced_by_every_seconds():
    written: list[str] = []
    with Ticker("evaluating", 100, log=written.append, every_seconds=3600.0) as ticker:
        for _ in range(100):
            ticker.advance()
    assert written == []  # an hour has not passed


def test_quiet_transformers_bars_restores_the_setting():
    assert hf_logging.is_progress_bar_enabled()
    with quiet_transformers_bars():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()


def test_warm_start_reports_every_step_with_loss_and_probe():
    # target_accuracy 1.0: a few steps from random weights cannot answer all 4 probe tasks, so all 5 run.
    config = TinyModelConfig(
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        sft_steps=5,
        eval_every=3,
        eval_tasks=4,
        target_accuracy=1.0,
    )
    tokenizer = build_tokenizer()
    seen: list[tuple[int, str]] = []
    env = make_env("arithmetic", **TINY_ARITHMETIC_ENV)
    metrics = warm_start(build_model(tokenizer, config), tokenizer, config, env, lambda *args: seen.append(args))
    assert metrics["steps"] == 5
    assert [done for done, _ in seen] == [1, 2, 3, 4, 5]
    assert all(re.fullmatch(r"loss \d+\.\d{3}", note) for _, note in seen[:3])  # before the first probe
    assert all(re.fullmatch(r"loss \d+\.\d{3}, held-out acc 0\.\d\d \(stops at 1\.00\)", note) for _, note in seen[3:])
