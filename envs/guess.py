"""``guess``: guess a secret number from 1 to n over several turns, told "higher" or "lower" after each.

A multi-turn game small enough for the tiny model to learn on a CPU (``tiny-guess`` recipe), and a
plain test of the episode loop. Task: n (from ``min_n`` to ``max_n``) and the secret; the game allows
k guesses, the worst case of bisection (floor(log2 n) + 1) plus ``extra_guesses``, so a policy that
halves the range always wins and one that ignores the feedback mostly loses.

Each assistant turn is read as its last integer. The environment answers ``higher`` or ``lower``
(a turn without a number gets ``invalid``), and ends the episode at the right guess or after k.
Reward (``verify_episode``, from the guesses of the transcript alone): a win at guess t scores
1 - bonus x (t - 1) / (k - 1), so winning in fewer guesses is worth a little more; a loss 0
("incorrect"), no number in any turn "unparseable".

Splits: the problem is (n, secret); held out by its hash, as every procedural environment. The prompt
shows only n, so games of both splits share prompts (``prompt_poses_problem = False``): a held-out
game is one whose secret, for its n, no training game had.
"""

from __future__ import annotations

import math
import random
import re

from pydantic import Field, model_validator

from grpopp.envs.base import Message, ProceduralConfig, Split, Task
from grpopp.envs.multiturn import MultiTurnConfig, MultiTurnEnv, Reply
from grpopp.envs.registry import register_env
from grpopp.rewards.types import VerifyResult

_INTEGER = re.compile(r"-?\d+")


class GuessConfig(ProceduralConfig, MultiTurnConfig):
    """Options of the ``guess`` environment."""

    min_n: int = Field(8, ge=2)
    """Smallest upper end of the range 1..n."""

    max_n: int = Field(32, ge=2)
    """Largest upper end of the range 1..n."""

    extra_guesses: int = Field(0, ge=0)
    """Guesses allowed beyond bisection's worst case, floor(log2 n) + 1."""

    bonus: float = Field(0.2, ge=0.0, lt=1.0)
    """A win at the last allowed guess scores 1 - bonus; at the first, 1."""

    prompt_template: str = "I am thinking of a number from 1 to {n}. Guess it; after each guess I say higher or lower."
    """The prompt; ``{n}`` is the top of the range."""

    higher: str = "higher"
    """The answer to a guess below the secret."""

    lower: str = "lower"
    """The answer to a guess above the secret."""

    invalid: str = "invalid: answer with one number"
    """The answer to a turn without a number."""

    max_turns: int = Field(8, ge=1)
    max_total_tokens: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _check(self) -> GuessConfig:
        if self.min_n > self.max_n:
            raise ValueError(f"min_n ({self.min_n}) must be at most max_n ({self.max_n})")
        if "{n}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {n}, the top of the range")
        return self


def allowed_guesses(n: int, extra: int) -> int:
    """Bisection's worst case over 1..n, floor(log2 n) + 1, plus ``extra``."""
    return math.floor(math.log2(n)) + 1 + extra


def read_guess(text: str) -> int | None:
    """The last integer of an assistant turn, or None."""
    found = _INTEGER.findall(text)
    return int(found[-1]) if found else None


@register_env("guess")
class GuessEnv(MultiTurnEnv[GuessConfig]):
    """Number guessing with higher/lower feedback (module docstring)."""

    config_class = GuessConfig
    prompt_poses_problem = False  # the secret is hidden: games of both splits share "1 to n" prompts

    def num_tasks(self, split: Split = "train") -> int | None:
        return None

    def task(self, index: int, split: Split = "train") -> Task:
        config = self.config

        def draw(rng: random.Random) -> tuple[int, int]:
            n = rng.randint(config.min_n, config.max_n)
            return n, rng.randint(1, n)

        n, secret = self.draw_in_split(index, split, draw, key=lambda game: f"{game[0]}:{game[1]}")
        return Task(
            id=self.task_id(index, split),
            env=self.name,
            split=split,
            index=index,
            prompt=self.make_prompt(config.prompt_template.format(n=n)),
            answer=str(secret),
            metadata={"n": n, "guesses": allowed_guesses(n, config.extra_guesses)},
        )

    def instance_key(self, task: Task) -> str:
        return f"{task.metadata['n']}:{task.answer}"

    def respond(self, task: Task, state: object, transcript: list[Message]) -> Reply:
        secret, allowed = int(task.answer or 0), int(task.metadata["guesses"])  # type: ignore[arg-type]
        guess = read_guess(transcript[-1].content)
        turns = sum(1 for m in transcript if m.role == "assistant")
        if guess == secret or turns >= allowed:
            return Reply(done=True)
        answer = self.config.invalid if guess is None else self.config.higher if guess < secret else self.config.lower
        return Reply(messages=[Message(role="user", content=answer)])

    def verify_episode(self, task: Task, transcript: list[Message]) -> VerifyResult:
        secret, allowed = int(task.answer or 0), int(task.metadata["guesses"])  # type: ignore[arg-type]
        guesses = [read_guess(m.content) for m in transcript if m.role == "assistant"][:allowed]
        if all(g is None for g in guesses):
            return VerifyResult(status="unparseable", score=0.0, reason="no number in any turn", decided_by="guess")
        if secret not in guesses:
            return VerifyResult(
                status="incorrect", score=0.0, reason=f"{secret} not found in {allowed} guesses", decided_by="guess"
            )
        t = guesses.index(secret) + 1
        score = 1.0 - self.config.bonus * (t - 1) / max(allowed - 1, 1)
        reason = f"found {secret} at guess {t} of {allowed}"
        return VerifyResult(status="correct", score=score, reason=reason, extracted=str(secret), decided_by="guess")

    def gold_turn(self, task: Task, transcript: list[Message]) -> str | None:
        """Bisection: the middle of the range the feedback so far leaves."""
        low, high = 1, int(task.metadata["n"])  # type: ignore[arg-type]
        secret = int(task.answer or 0)
        for message in transcript:
            guess = read_guess(message.content) if message.role == "assistant" else None
            if guess is not None:
                low, high = (guess + 1, high) if guess < secret else (low, guess - 1)
        return str((low + high) // 2)

    def wrong_turn(self, task: Task, transcript: list[Message]) -> str | None:
        """Always the same wrong number."""
        return str(int(task.answer or 0) % int(task.metadata["n"]) + 1)  # type: ignore[arg-type]
