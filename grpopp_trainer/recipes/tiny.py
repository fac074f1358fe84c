"""The tiny model of the default run: a character-level Llama built here and warm-started on ``arithmetic``.

``grpopp train`` with no arguments must show RL working on a 2-core CPU in minutes, with nothing to
download. So the project makes its own model:

1. ``build_tokenizer``: one token per printable ASCII character, plus <pad>, <eos> and <unk>.
2. ``build_model``: a 0.54M-parameter ``LlamaForCausalLM`` (RoPE, so left padding is harmless).
3. ``warm_start``: a short supervised stage on gold answers of train-split tasks (prompt "37 + 18=",
   completion "55" + EOS), stopped once greedy accuracy on held-out tasks reaches
   ``target_accuracy``, so RL starts from a policy that is right sometimes but far from always:
   groups of samples then have mixed rewards, and GRPO has both signal and headroom.
4. ``load_or_create_tiny_model``: the three steps above, saved as a Hugging Face checkpoint in a cache
   folder named by a hash of the recipe, written atomically; later runs load it at once. The warm
   start shows its progress (``progress.Ticker``): a bar with the loss, the last held-out accuracy
   and the most time left in a terminal, a plain line every 30 s otherwise (a loaded 2-core machine
   can take minutes).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import socket
import string
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from grpopp.envs.base import Environment, Message, Task
from grpopp.envs.guess import read_guess
from grpopp.envs.multiturn import MultiTurnEnv, play_episode
from grpopp.progress import Ticker, quiet_transformers_bars
from grpopp.rewards.shaping import LengthLimits

if TYPE_CHECKING:
    from rich.console import Console

TINY_ARITHMETIC_ENV: dict[str, Any] = {
    "num_operands": 2,
    "max_operand": 49,
    "operators": ["+", "-"],
    "prompt_template": "{expression}=",
    "extraction": ["last_number"],
}
"""Options of the ``arithmetic`` env in the default run: sums and differences of two numbers up to 49,
bare prompt "37 + 18=" and bare answer "55" (read as the last number of the completion). Operands up
to 99 take the tiny model about four times as many warm-start steps to reach the same accuracy, and
RL on them would move as slowly."""

TINY_GUESS_ENV: dict[str, Any] = {
    "min_n": 8,
    "max_n": 24,
    "prompt_template": "guess 1-{n}:",
    "higher": ">",
    "lower": "<",
    "invalid": "?",
    "max_tokens_per_turn": 3,
    "max_total_tokens": 48,
    "test_fraction": 0.25,
}
"""Options of the ``guess`` env in the ``tiny-guess`` recipe: a number from 1 to n (8..24) told ">"
(higher) or "<" (lower) after each guess, as short plain text as the character model reads."""

GUESS_DEMO_FEASIBLE = 0.5
"""The warm start's demonstrations of ``guess``: each guess is drawn uniformly from the numbers the
feedback so far leaves with this probability, else from the whole range 1..n. Such play wins about
half the games within bisection's k guesses, so RL has both signal and room to find bisection."""

Recipe = Literal["arithmetic", "guess"]
"""The tiny model's warm starts: ``arithmetic`` (``grpopp train``'s default, ``name_or_path: tiny``)
and ``guess`` (the multi-turn ``tiny-guess`` recipe, ``name_or_path: tiny-guess``)."""

RECIPE_ENVS: dict[str, tuple[str, dict[str, Any]]] = {
    "arithmetic": ("arithmetic", TINY_ARITHMETIC_ENV),
    "guess": ("guess", TINY_GUESS_ENV),
}

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
"""Token ids 0, 1, 2; the printable ASCII characters follow (``string.printable``, 100 of them)."""

RECIPE_VERSION = 2
"""Part of the cache key: bump it when ``build_model`` or ``warm_start`` change what they produce.
2: arithmetic's splits became disjoint by content, so the warm start reads other train tasks and is
probed on problems it never trained on."""

_EVAL_MAX_NEW_TOKENS = 8
"""Decoding budget of the accuracy checks; answers are at most 3 characters + EOS."""

_EARLY_STOP_OFFSET = 1_000_000
"""The early-stop probe reads test tasks from this index on, so the accuracy it selects on is not the
accuracy reported on test tasks 0..eval_tasks-1 (which the default run's evaluation also uses)."""

_BUILDING = ".building-"
"""Marks a cache folder that is still being written: ``<name>.building-<host>-<pid>-<random>``."""

_RECIPE_FILE = "tiny_recipe.json"
"""Written last into a built model folder: the recipe and the warm-start metrics."""


class TinyModelConfig(BaseModel):
    """Size of the tiny model and budget of its supervised warm start."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    hidden_size: int = Field(128, ge=8)
    """Width of the residual stream."""

    num_layers: int = Field(2, ge=1)
    """Number of transformer blocks."""

    num_heads: int = Field(4, ge=1)
    """Attention heads per block; must divide hidden_size."""

    intermediate_size: int = Field(512, ge=8)
    """Width of the SwiGLU feed-forward layer."""

    sft_steps: int = Field(1500, ge=0)
    """Most optimizer steps of the warm start (it stops earlier once target_accuracy is reached)."""

    sft_batch_size: int = Field(64, ge=1)
    """Train tasks per optimizer step; each step reads new tasks."""

    sft_lr: float = Field(1e-3, gt=0.0)
    """Peak AdamW learning rate (linear warmup, then constant, so stopping early loses nothing)."""

    sft_warmup_steps: int = Field(50, ge=0)
    """Steps of linear learning-rate warmup."""

    target_accuracy: float = Field(0.35, gt=0.0, le=1.0)
    """Stop the warm start once greedy accuracy on held-out tasks reaches this."""

    eval_every: int = Field(50, ge=1)
    """Check held-out greedy accuracy every this many steps."""

    eval_tasks: int = Field(200, ge=1)
    """Held-out (test-split) tasks per accuracy check."""

    seed: int = 0
    """Seed of the weights' initialisation and of the sampled-accuracy check."""

    @model_validator(mode="after")
    def _check(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} does not divide hidden_size={self.hidden_size}; pick a divisor"
            )
        return self


TINY_GUESS_MODEL = TinyModelConfig(sft_steps=400, target_accuracy=1.0, eval_every=100)
"""The ``guess`` warm start: 400 steps of demonstrated episodes (``guess_demo``), never stopped early."""


# -- tokenizer and model -------------------------------------------------------------------------


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per printable ASCII character, nothing added on encode.

    Decoding concatenates (``decoders.Fuse``), so ``decode(encode(text)) == text`` for any printable
    ASCII text. ``split_special_tokens`` keeps a literal "<eos>" in text as five characters. No BOS is
    added, so ``tokenizer(text)`` gives the same ids with or without ``add_special_tokens``.
    """
    vocab = {token: index for index, token in enumerate((*SPECIAL_TOKENS, *string.printable))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        split_special_tokens=True,
        padding_side="left",
    )


def build_model(tokenizer: PreTrainedTokenizerFast, config: TinyModelConfig) -> PreTrainedModel:
    """A freshly initialised ``LlamaForCausalLM`` sized by ``config``, seeded by ``config.seed``."""
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(model_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


# -- warm start ----------------------------------------------------------------------------------


def warm_start(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    config: TinyModelConfig,
    env: Environment[Any],
    progress: Callable[[int, str], None] | None = None,
) -> dict[str, float]:
    """Supervised warm start on gold answers of train tasks, until held-out greedy accuracy reaches
    ``config.target_accuracy`` or ``config.sft_steps`` steps are done. ``progress(steps done, note)``
    is called after every step (the note gives the loss and the last held-out accuracy).

    Step i trains on train tasks [i * B, (i + 1) * B): prompt tokens are masked out of the loss, the
    target is the answer followed by EOS. Returns: steps, initial_loss (first batch, before any
    update), final_loss (mean of the last 10 steps), greedy_accuracy (on test tasks
    0..eval_tasks-1), the ``sampling_report`` on the same tasks, and seconds.
    """
    started = time.perf_counter()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.sft_lr, weight_decay=0.0)
    warmup = max(config.sft_warmup_steps, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    probe = [env.task(_EARLY_STOP_OFFSET + i, "test") for i in range(config.eval_tasks)]
    losses: list[float] = []
    probed = ""
    model.train()
    for step in range(config.sft_steps):
        if step > 0 and step % config.eval_every == 0:
            probe_accuracy = accuracy(model, tokenizer, env, probe)
            if probe_accuracy >= config.target_accuracy:
                break
            probed = f", held-out acc {probe_accuracy:.2f} (stops at {config.target_accuracy:.2f})"
        tasks = [env.task(step * config.sft_batch_size + i, "train") for i in range(config.sft_batch_size)]
        input_ids, labels, attention_mask = sft_batch(tokenizer, env, tasks)  # [B, T] each
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, f"loss {losses[-1]:.3f}{probed}")
    model.eval()
    held_out = [env.task(i, "test") for i in range(config.eval_tasks)]
    return {
        "steps": float(len(losses)),
        "initial_loss": losses[0] if losses else math.nan,
        "final_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else math.nan,
        "greedy_accuracy": accuracy(model, tokenizer, env, held_out),
        **sampling_report(model, tokenizer, env, held_out, seed=config.seed),
        "seconds": time.perf_counter() - started,
    }


def sft_batch(
    tokenizer: PreTrainedTokenizerFast, env: Environment[Any], tasks: Sequence[Task]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, labels, attention_mask), each [B, T], right-padded; labels are -100 on the prompt,
    the environment's messages and padding, so the loss covers only what the model says (the answer
    and its EOS, or each turn of a demonstrated episode and its EOS)."""
    rows = [
        episode_row(tokenizer, env, task) if isinstance(env, MultiTurnEnv) else answer_row(tokenizer, env, task)
        for task in tasks
    ]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)  # [B, T]
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, T]
    for row, (ids, trained) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor([t if keep else -100 for t, keep in zip(ids, trained, strict=True)])
        attention_mask[row, : len(ids)] = 1
    return input_ids, labels, attention_mask


def answer_row(tokenizer: PreTrainedTokenizerFast, env: Environment[Any], task: Task) -> tuple[list[int], list[bool]]:
    """(token ids, trained) of the prompt followed by the gold answer and EOS."""
    prompt_ids = tokenizer(_prompt_text(task), add_special_tokens=False)["input_ids"]
    answer_ids = [*tokenizer(gold_answer(env, task), add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    return prompt_ids + answer_ids, [False] * len(prompt_ids) + [True] * len(answer_ids)


def episode_row(tokenizer: PreTrainedTokenizerFast, env: MultiTurnEnv[Any], task: Task) -> tuple[list[int], list[bool]]:
    """(token ids, trained) of a demonstrated episode (``guess_demo``) laid out as the rollout lays out a
    plain-text episode: the prompt, then each turn and EOS (trained), each reply as ``render_plain``."""
    transcript = play_episode(env, task, guess_demo) or []
    ids = list(tokenizer(_prompt_text(task), add_special_tokens=False)["input_ids"])
    trained = [False] * len(ids)
    for index, message in enumerate(transcript):
        if message.role == "assistant":
            turn = [*tokenizer(message.content, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
            ids, trained = ids + turn, trained + [True] * len(turn)
        elif index == 0 or transcript[index - 1].role == "assistant":  # a reply: its messages together
            following = list(itertools.takewhile(lambda m: m.role != "assistant", transcript[index:]))
            reply = tokenizer(env.render_plain(following), add_special_tokens=False)["input_ids"]
            ids, trained = ids + reply, trained + [False] * len(reply)
    return ids, trained


def guess_demo(task: Task, transcript: list[Message]) -> str:
    """A demonstration turn of ``guess`` (``GUESS_DEMO_FEASIBLE``), drawn from the task's and turn's own
    generator: a number the feedback so far leaves, or any number of 1..n."""
    n, secret = int(task.metadata["n"]), int(task.answer or 0)  # type: ignore[arg-type]
    low, high = 1, n
    for message in transcript:
        guess = read_guess(message.content) if message.role == "assistant" else None
        if guess is not None:
            low, high = (max(low, guess + 1), high) if guess < secret else (low, min(high, guess - 1))
    rng = random.Random(f"guess-demo|{task.id}|{len(transcript)}")
    feasible = rng.random() < GUESS_DEMO_FEASIBLE and low <= high
    return str(rng.randint(low, high) if feasible else rng.randint(1, n))


def gold_answer(env: Environment[Any], task: Task) -> str:
    """The completion the tiny model learns: the bare answer, checked to verify as correct."""
    answer = task.answer or ""
    verdict = env.verify(task, answer)
    if verdict.status != "correct":
        raise ValueError(
            f"the bare answer {answer!r} of {task.id} does not verify as correct ({verdict.reason}); "
            "configure the env with extraction=['last_number'] as TINY_ARITHMETIC_ENV does"
        )
    return answer


# -- accuracy checks -----------------------------------------------------------------------------


def correct_counts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    env: Environment[Any],
    tasks: Sequence[Task],
    *,
    temperature: float = 0.0,
    samples: int = 1,
    seed: int = 0,
) -> list[int]:
    """How many of ``samples`` completions of each task verify as correct, [len(tasks)]: greedy at
    temperature 0, else plain softmax sampling; decoded by the same engine that training uses."""
    from grpopp.rollout.base import SamplingParams
    from grpopp.rollout.episodes import rollout
    from grpopp.rollout.groups import score_groups
    from grpopp.rollout.hf import HFEngine

    engine = HFEngine(model, tokenizer, batch_size=256)
    params = SamplingParams(max_new_tokens=_EVAL_MAX_NEW_TOKENS, temperature=temperature, seed=seed)
    for task in tasks:
        _prompt_text(task)  # plain text only
    completions = rollout(engine, list(tasks), {env.name: env}, params, n=samples)
    limits = LengthLimits(max_length=_EVAL_MAX_NEW_TOKENS, cache_length=0)
    return [
        sum(s.correct for s in group.samples) for group in score_groups(tasks, completions, {env.name: env}, limits)
    ]


def accuracy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, env: Environment[Any], tasks: Sequence[Task]
) -> float:
    """Greedy accuracy on ``tasks``."""
    return sum(correct_counts(model, tokenizer, env, tasks)) / len(tasks)


def sampling_report(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    env: Environment[Any],
    tasks: Sequence[Task],
    *,
    samples: int = 8,
    seed: int = 0,
) -> dict[str, float]:
    """What GRPO will see at temperature 1 with groups of ``samples``: mean accuracy of one sample
    (pass@1), pass@``samples``, and the fraction of groups with mixed rewards (the only ones that
    give a gradient)."""
    counts = correct_counts(model, tokenizer, env, tasks, temperature=1.0, samples=samples, seed=seed)
    return {
        "sampled_accuracy": sum(counts) / (samples * len(tasks)),
        f"pass_at_{samples}": sum(count > 0 for count in counts) / len(tasks),
        "mixed_groups": sum(0 < count < samples for count in counts) / len(tasks),
    }


def _prompt_text(task: Task) -> str:
    if not isinstance(task.prompt, str):
        raise ValueError(f"{task.id} has a chat prompt; the tiny model reads plain text (set no system_prompt)")
    return task.prompt


# -- cache ---------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """$GRPOPP_CACHE, else ~/.cache/grpopp."""
    return Path(os.environ.get("GRPOPP_CACHE") or Path.home() / ".cache" / "grpopp")


def recipe_key(config: TinyModelConfig, recipe: Recipe = "arithmetic") -> str:
    """A short hash of everything that decides the model: config, env options, vocabulary, recipe version
    (and, for another recipe than arithmetic, its name and demonstrations)."""
    data: dict[str, Any] = {
        "version": RECIPE_VERSION,
        "config": config.model_dump(mode="json"),
        "env": RECIPE_ENVS[recipe][1],
        "vocab": [*SPECIAL_TOKENS, string.printable],
    }
    if recipe != "arithmetic":
        data |= {"recipe": recipe, "demo_feasible": GUESS_DEMO_FEASIBLE}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def load_or_create_tiny_model(
    cache_dir: Path | None = None,
    config: TinyModelConfig | None = None,
    *,
    recipe: Recipe = "arithmetic",
    log: Callable[[str], None] = print,
    console: Console | None = None,
) -> Path:
    """The folder of the warm-started tiny model (a Hugging Face checkpoint: ``from_pretrained`` loads
    model and tokenizer), built on the first call for a recipe and reused afterwards. A build says so
    through ``log`` and shows the warm start's progress: a bar on ``console`` when it is a terminal,
    else a line through ``log`` every 30 s.

    ``recipe``: the warm start, "arithmetic" (gold answers) or "guess" (demonstrated episodes of the
    ``guess`` game, ``guess_demo``; ``target_accuracy`` is then the held-out greedy win rate, and the
    config default ``TINY_GUESS_MODEL``). The folder is ``<cache_dir>/tiny-<recipe>-<recipe hash>``.
    It is written into a temporary sibling and renamed into place at the end, so a killed build leaves
    no half-written model under the final name; the temporary folders of dead builds on this host are
    removed on the next call.
    """
    config = config or (TINY_GUESS_MODEL if recipe == "guess" else TinyModelConfig())
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    final = cache_dir / f"tiny-{recipe}-{recipe_key(config, recipe)}"
    if final.is_dir():
        if not (final / _RECIPE_FILE).is_file():
            raise RuntimeError(f"{final} exists but holds no {_RECIPE_FILE}, so it is not a finished build; delete it")
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_dead_builds(cache_dir, final.name)
    building = cache_dir / f"{final.name}{_BUILDING}{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"
    log(f"building the tiny model (once; cached as {final}) ...")
    try:
        ticker = Ticker("tiny model warm start (SFT steps)", config.sft_steps, console=console, log=log, bound=True)
        with ticker:
            metrics = _build(building, config, recipe, lambda done, note: ticker.update(done, note=note))
        if final.is_dir():  # another process finished the same recipe first: keep its folder
            shutil.rmtree(building)
        else:
            os.rename(building, final)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    log(
        f"tiny model ready in {metrics['seconds']:.0f}s: {metrics['steps']:.0f} SFT steps, "
        f"held-out accuracy greedy {metrics['greedy_accuracy']:.2f}, sampled {metrics['sampled_accuracy']:.2f}, "
        f"pass@8 {metrics['pass_at_8']:.2f}"
    )
    return final


def _build(
    folder: Path, config: TinyModelConfig, recipe: Recipe, progress: Callable[[int, str], None] | None = None
) -> dict[str, float]:
    """Build, warm-start and save the model into ``folder``; the recipe file is written last."""
    from grpopp.envs.registry import make_env  # the registry imports grpopp; import it only when building

    started = time.perf_counter()
    folder.mkdir(parents=True)
    env_name, env_options = RECIPE_ENVS[recipe]
    env = make_env(env_name, **env_options)
    with _torch_threads(2):
        tokenizer = build_tokenizer()
        model = build_model(tokenizer, config)
        metrics = warm_start(model, tokenizer, config, env, progress)
    with quiet_transformers_bars():
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    metrics["seconds"] = time.perf_counter() - started
    record = {"recipe": recipe, "config": config.model_dump(mode="json"), "env": env_options, "metrics": metrics}
    (folder / _RECIPE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return metrics


def _remove_dead_builds(cache_dir: Path, name: str) -> None:
    """Remove temporary folders of builds of ``name`` whose process, on this host, is gone."""
    for path in cache_dir.glob(f"{name}{_BUILDING}*"):
        host, _, pid = path.name.removeprefix(f"{name}{_BUILDING}").rpartition("-")[0].rpartition("-")
        if host == socket.gethostname() and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run torch on ``count`` threads (a tiny model gains nothing from more), then restore the setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(min(count, os.cpu_count() or count))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
