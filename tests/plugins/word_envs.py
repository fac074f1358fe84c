"""Small-space environments for the content-disjoint split tests (loaded as a plugin, as users load theirs).

- ``words_shared``: the old way to split: each task picks one of ``words`` from its own (seed, split,
  index) generator, so train and test ids differ, but with 15 words every test prompt is a train
  prompt too. ``grpopp envs check`` must fail it and name the shared prompts.
- ``words``: the same task drawn with ``Environment.draw_in_split`` (one line), so a word is a test
  word or a train word by its hash; refused at construction when the list is too small to split.
"""

from grpopp.envs.base import EnvConfig, Environment, ProceduralConfig, Split, Task
from grpopp.envs.registry import register_env
from grpopp.rewards.types import VerifyResult

WORDS = (
    "apple", "brick", "cloud", "delta", "ember", "flint", "grape", "heron",
    "ivory", "jolly", "karma", "lemon", "mango", "noble", "ocean",
)  # fmt: skip
"""15 words: the small space of the issue."""


class WordsSharedConfig(EnvConfig):
    """Options of ``words_shared``."""

    words: tuple[str, ...] = WORDS
    """The words the tasks spell backwards."""


class WordsConfig(ProceduralConfig):
    """Options of ``words``."""

    words: tuple[str, ...] = WORDS
    """The words the tasks spell backwards."""


def spell_task(env: Environment, index: int, split: Split, word: str) -> Task:
    return Task(
        id=env.task_id(index, split),
        env=env.name,
        split=split,
        index=index,
        prompt=f"Spell '{word}' backwards.",
        answer=word[::-1],
        metadata={"word": word},
    )


class _Spell(Environment):
    def num_tasks(self, split: Split = "train") -> int | None:
        return None

    def verify(self, task: Task, completion: str) -> VerifyResult:
        correct = completion.strip() == task.answer
        return VerifyResult(status="correct" if correct else "incorrect", score=float(correct), decided_by="words")

    def gold_completion(self, task: Task) -> str:
        return task.answer or ""

    def wrong_completion(self, task: Task) -> str:
        return f"{task.answer}x"


@register_env("words_shared")
class WordsShared(_Spell):
    """Spell a word backwards; train and test pick from the same words (overlapping splits)."""

    config_class = WordsSharedConfig

    def task(self, index: int, split: Split = "train") -> Task:
        return spell_task(self, index, split, self.rng(index, split).choice(self.config.words))


@register_env("words")
class Words(_Spell):
    """Spell a word backwards; each word belongs to train or test by its hash."""

    config_class = WordsConfig

    def task(self, index: int, split: Split = "train") -> Task:
        word = self.draw_in_split(index, split, lambda rng: rng.choice(self.config.words), key=str)
        return spell_task(self, index, split, word)
