"""The tiny model of the default run: character tokenizer, supervised warm start, atomic cache."""

import math
import os
import re
import socket
import string
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

import grpopp.recipes.tiny as tiny
from grpopp.envs.registry import make_env
from grpopp.recipes.tiny import (
    TINY_ARITHMETIC_ENV,
    TinyModelConfig,
    build_model,
    build_tokenizer,
    load_or_create_tiny_model,
    recipe_key,
    sft_batch,
    warm_start,
)

TOKENIZER = build_tokenizer()
# A build that takes a second or two: no accuracy probe, a handful of SFT steps.
QUICK = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, sft_steps=3, eval_tasks=4)


def env():
    return make_env("arithmetic", **TINY_ARITHMETIC_ENV)


def silent(_: str) -> None:
    pass


# -- tokenizer -----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.printable, max_size=80))
def test_tokenizer_round_trips_printable_ascii_one_token_per_character(text):
    ids = TOKENIZER(text)["input_ids"]
    assert TOKENIZER.convert_ids_to_tokens(ids) == list(text)
    assert TOKENIZER.decode(ids) == text


@pytest.mark.parametrize("text", ["37 + 58=95", "  two  spaces ", "a\tb\nc\r", "<eos> <pad>", ""])
def test_tokenizer_edge_cases(text):
    ids = TOKENIZER(text)["input_ids"]  # no BOS is added, literal "<eos>" stays characters
    assert len(ids) == len(text)
    assert TOKENIZER.decode([*ids, TOKENIZER.eos_token_id], skip_special_tokens=True) == text


def test_tokenizer_vocabulary():
    # 3 special tokens, then string.printable (100 characters: digits, letters, punctuation, whitespace).
    assert len(TOKENIZER) == 103
    assert (TOKENIZER.pad_token_id, TOKENIZER.eos_token_id, TOKENIZER.unk_token_id) == (0, 1, 2)
    assert TOKENIZER.convert_tokens_to_ids(list("0a ")) == [3, 13, 3 + string.printable.index(" ")]


# -- environment and SFT data --------------------------------------------------------------------


def test_tiny_env_prompts_and_bare_answers_verify():
    arithmetic = env()
    for index in range(50):
        task = arithmetic.task(index, "test")
        assert re.fullmatch(r"\d{1,2} [+-] \d{1,2}=", task.prompt)
        assert arithmetic.verify(task, task.answer).status == "correct"
        assert arithmetic.verify(task, str(int(task.answer) + 1)).status == "incorrect"


def test_sft_batch_masks_the_prompt_and_targets_answer_then_eos():
    arithmetic = env()
    tasks = [arithmetic.task(index, "train") for index in range(4)]
    input_ids, labels, attention_mask = sft_batch(TOKENIZER, arithmetic, tasks)
    for row, task in enumerate(tasks):
        length = len(task.prompt) + len(task.answer) + 1
        assert TOKENIZER.decode(input_ids[row, :length]) == task.prompt + task.answer + "<eos>"
        assert labels[row, : len(task.prompt)].eq(-100).all()
        target = labels[row][labels[row] != -100].tolist()
        assert target == [*TOKENIZER(task.answer)["input_ids"], TOKENIZER.eos_token_id]
        assert attention_mask[row].sum() == length
        assert input_ids[row, length:].eq(TOKENIZER.pad_token_id).all()


# -- warm start ----------------------------------------------------------------------------------


def test_warm_start_lowers_the_loss_well_below_uniform():
    # A fresh model (weights ~ N(0, 0.02)) predicts nearly uniformly over the 103 tokens: loss ~ ln(103) = 4.63.
    uniform_loss = math.log(3 + len(string.printable))
    config = TinyModelConfig(sft_steps=150, eval_every=10_000, eval_tasks=20, target_accuracy=1.0)
    model = build_model(TOKENIZER, config)
    metrics = warm_start(model, TOKENIZER, config, env())
    assert metrics["steps"] == 150
    assert metrics["initial_loss"] == pytest.approx(uniform_loss, abs=0.2)
    assert metrics["final_loss"] < 0.5 * uniform_loss
    assert 0.0 <= metrics["greedy_accuracy"] <= 1.0
    assert 0.0 <= metrics["sampled_accuracy"] <= metrics["pass_at_8"] <= 1.0


def test_warm_start_stops_at_the_first_probe_that_reaches_the_target(monkeypatch):
    monkeypatch.setattr(tiny, "accuracy", lambda *args: 1.0)
    config = QUICK.model_copy(update={"sft_steps": 100, "eval_every": 7})
    metrics = warm_start(build_model(TOKENIZER, config), TOKENIZER, config, env())
    assert metrics["steps"] == 7


def test_build_is_deterministic():
    first, second = build_model(TOKENIZER, QUICK), build_model(TOKENIZER, QUICK)
    warm_start(first, TOKENIZER, QUICK, env())
    warm_start(second, TOKENIZER, QUICK, env())
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# -- cache ---------------------------------------------------------------------------------------


def count_builds(monkeypatch):
    """Wrap warm_start to count builds and keep each built model."""
    built = []
    original = tiny.warm_start

    def counting(model, *args):
        built.append(model)
        return original(model, *args)

    monkeypatch.setattr(tiny, "warm_start", counting)
    return built


def test_cache_builds_once_and_saves_a_loadable_identical_model(tmp_path, monkeypatch):
    built = count_builds(monkeypatch)
    path = load_or_create_tiny_model(tmp_path, QUICK, log=silent)
    assert path.parent == tmp_path and path.name == f"tiny-arithmetic-{recipe_key(QUICK)}"
    assert len(built) == 1
    stamp = path.stat().st_mtime_ns

    assert load_or_create_tiny_model(tmp_path, QUICK, log=silent) == path
    assert len(built) == 1 and path.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary folder left behind

    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    text = "12 + 34=46"
    assert tokenizer(text)["input_ids"] == TOKENIZER(text)["input_ids"]
    input_ids = torch.tensor([TOKENIZER(text)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids).logits, built[0](input_ids).logits, rtol=0, atol=0)


def test_cache_dir_defaults_to_grpopp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRPOPP_CACHE", str(tmp_path))
    assert load_or_create_tiny_model(config=QUICK, log=silent).parent == tmp_path


def test_changed_recipe_changes_the_folder(tmp_path, monkeypatch):
    first = load_or_create_tiny_model(tmp_path, QUICK, log=silent)
    second = load_or_create_tiny_model(tmp_path, QUICK.model_copy(update={"seed": 1}), log=silent)
    assert first != second and first.is_dir() and second.is_dir()
    key = recipe_key(QUICK)
    monkeypatch.setitem(tiny.TINY_ARITHMETIC_ENV, "max_operand", 20)
    assert recipe_key(QUICK) != key


def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_build_folders_are_never_returned_and_dead_ones_removed(tmp_path, monkeypatch):
    name = f"tiny-arithmetic-{recipe_key(QUICK)}"
    dead = tmp_path / f"{name}.building-{socket.gethostname()}-{dead_pid()}-0000"
    elsewhere = tmp_path / f"{name}.building-another-host-{os.getpid()}-0000"
    for stale in (dead, elsewhere):
        stale.mkdir()
        (stale / "config.json").write_text("{half written")
    path = load_or_create_tiny_model(tmp_path, QUICK, log=silent)
    assert path == tmp_path / name
    assert not dead.exists()  # its builder is gone
    assert elsewhere.exists()  # may still be building on another host: left alone
    AutoModelForCausalLM.from_pretrained(path)


def test_failed_build_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny, "warm_start", killed)
    with pytest.raises(KeyboardInterrupt):
        load_or_create_tiny_model(tmp_path, QUICK, log=silent)
    assert list(tmp_path.iterdir()) == []


def test_unfinished_folder_under_the_final_name_is_refused(tmp_path):
    (tmp_path / f"tiny-arithmetic-{recipe_key(QUICK)}").mkdir()
    with pytest.raises(RuntimeError, match="delete it"):
        load_or_create_tiny_model(tmp_path, QUICK, log=silent)
