"""Multi-turn environments: an episode of assistant turns, each answered by the environment.

The contract (``MultiTurnEnv``), in the order the rollout uses it:

1. ``start(task)`` makes the episode's state (any object; a pydantic model keeps it typed). The
   task's prompt holds the initial messages.
2. After each assistant turn, ``respond(task, state, transcript)`` answers with a ``Reply``: new
   messages (role ``user`` or ``tool``) for the model to continue from, or ``done=True``. The
   transcript holds every message after the prompt, the newest assistant turn last; ``respond`` may
   change ``state``.
3. ``verify_episode(task, transcript)`` judges the finished episode into the same ``VerifyResult``
   as a single-turn verifier, from the transcript alone, so a stored transcript can be judged again
   (``grpopp verify``). Shaping and statuses are those of single-turn environments, and
   ``episode_components`` may add components of its own (a cost per turn, say); an environment
   fault (``respond`` raised or overran ``step_timeout``) makes the episode's status ``error``, so
   it is masked, never a silent 0.

Limits (``MultiTurnConfig``): assistant turns, total tokens after the prompt (the model's and the
environment's), tokens per assistant turn, and seconds per ``respond``. A single-turn environment is
the one-turn case of the same loop: its episode ends after the first turn (``grpopp.rollout.episodes``).

Without a chat template (a plain-text prompt) the environment's messages are appended as the text
``render_plain`` makes of them; with a template, as the tokens the template adds for them.

``gold_turn`` / ``wrong_turn`` play an episode without a model (``grpopp envs check``): each gives
the next assistant turn from the transcript so far, or None where the environment has none.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from grpopp.envs.base import EnvConfig, Environment, Message, Split, Task
from grpopp.rewards.shaping import LengthLimits, compose_reward, finite_or_error
from grpopp.rewards.types import Reward, RewardComponent, VerifyResult


class MultiTurnConfig(EnvConfig):
    """``EnvConfig`` plus the limits of an episode."""

    max_turns: int = Field(4, ge=1)
    """Assistant turns at most; an episode still running after them ends and is judged as it stands."""

    max_total_tokens: int = Field(1024, ge=1)
    """Tokens after the prompt at most, the model's and the environment's together; an episode that
    reaches it ends as truncated (finish reason "length")."""

    max_tokens_per_turn: int | None = Field(None, ge=1)
    """Tokens one assistant turn may sample; None: the rollout's ``max_new_tokens``."""

    step_timeout: float = Field(30.0, gt=0)
    """Seconds one ``respond`` may take; beyond it the episode ends with status error (masked)."""


ConfigT = TypeVar("ConfigT", bound=MultiTurnConfig)


class Reply(BaseModel):
    """The environment's answer to one assistant turn."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    messages: list[Message] = []
    """Messages for the model to continue from (role user or tool); empty when ``done``."""

    done: bool = False
    """The episode is over: no more assistant turns."""

    tool_calls: int = Field(0, ge=0)
    """Tool calls this turn made (counted in the metrics)."""

    tool_errors: int = Field(0, ge=0)
    """Of them, calls that failed: unknown tool, invalid arguments, a raising tool, a timeout."""


class MultiTurnEnv(Environment[ConfigT], Generic[ConfigT]):
    """Base class of multi-turn environments. Subclasses set ``config_class`` (a ``MultiTurnConfig``)
    and implement ``num_tasks``, ``task``, ``respond`` and ``verify_episode``; ``start``,
    ``render_plain``, ``gold_turn`` and ``wrong_turn`` have defaults."""

    config_class: ClassVar[type[EnvConfig]] = MultiTurnConfig

    def start(self, task: Task) -> Any:
        """The state of a new episode of ``task`` (default: None, for environments without one)."""
        return None

    @abstractmethod
    def respond(self, task: Task, state: Any, transcript: list[Message]) -> Reply:
        """Answer the newest assistant turn (``transcript[-1]``)."""

    @abstractmethod
    def verify_episode(self, task: Task, transcript: list[Message]) -> VerifyResult:
        """Judge a finished episode from its transcript (every message after the prompt)."""

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop strings that end an assistant turn (e.g. the end of a tool call), besides EOS."""
        return ()

    @property
    def tool_schemas(self) -> list[dict[str, Any]]:
        """JSON schemas of the tools the model may call (``grpopp.envs.tools``); none by default."""
        return []

    def render_plain(self, messages: Sequence[Message]) -> str:
        """The text appended for ``messages`` when the prompt is plain text (no chat template): their
        contents, each followed by a newline."""
        return "".join(message.content + "\n" for message in messages)

    def gold_turn(self, task: Task, transcript: list[Message]) -> str | None:
        """A next assistant turn that plays the episode to success (None: the environment has none)."""
        return None

    def wrong_turn(self, task: Task, transcript: list[Message]) -> str | None:
        """A next assistant turn that plays the episode to failure (None: the environment has none)."""
        return None

    # -- the single-turn interface, in terms of episodes ----------------------------------------

    def verify(self, task: Task, completion: str) -> VerifyResult:
        """A one-turn episode whose only assistant message is ``completion``."""
        return self.verify_episode(task, [Message(role="assistant", content=completion)])

    def gold_completion(self, task: Task) -> str:
        turn = self.gold_turn(task, [])
        if turn is None:
            raise NotImplementedError(f"{self.name} has no gold episode")
        return turn

    def wrong_completion(self, task: Task) -> str:
        turn = self.wrong_turn(task, [])
        if turn is None:
            raise NotImplementedError(f"{self.name} has no wrong episode")
        return turn

    def judge_episodes(self, tasks: Sequence[Task], transcripts: Sequence[list[Message]]) -> list[VerifyResult]:
        """``verify_episode`` for each, never raising: an exception becomes that episode's status error."""
        results = []
        for task, transcript in zip(tasks, transcripts, strict=True):
            try:
                result = self.verify_episode(task, transcript)
                if not isinstance(result, VerifyResult):
                    raise TypeError(f"returned a {type(result).__name__}, not a VerifyResult")
            except Exception as exc:
                result = VerifyResult.error(f"{self.name}.verify_episode raised {type(exc).__name__}: {exc}"[:2000])
            results.append(result)
        return results

    def score_episodes(
        self,
        tasks: Sequence[Task],
        transcripts: Sequence[list[Message]],
        num_tokens: Sequence[int],
        limits: LengthLimits,
    ) -> list[Reward]:
        """Verify and shape finished episodes: the multi-turn counterpart of ``score_batch``. The
        shaping components read the last assistant message; ``num_tokens`` counts the model's tokens,
        and the length terms measure them against the episode's budget (``episode_limits``)."""
        results = self.judge_episodes(tasks, transcripts)
        limits = self.episode_limits(limits)
        return [
            self._with_episode_components(
                task, transcript, compose_reward(result, last_assistant(transcript), length, self.config.reward, limits)
            )
            for task, result, transcript, length in zip(tasks, results, transcripts, num_tokens, strict=True)
        ]

    def episode_components(self, task: Task, transcript: list[Message]) -> dict[str, RewardComponent]:
        """Reward components of an episode beyond the verdict and the shaping terms, e.g. a cost per
        turn or per tool call: name -> ``RewardComponent(value, weight)``, added to the total like
        the others. None by default."""
        return {}

    def _with_episode_components(self, task: Task, transcript: list[Message], reward: Reward) -> Reward:
        """``reward`` with ``episode_components`` added; one that raises, is not finite or reuses a
        component's name makes the sample an error (masked), as any broken component does."""
        if not reward.valid:
            return reward
        try:
            extra = self.episode_components(task, transcript)
            clash = sorted(set(extra) & set(reward.components))
            if clash:
                raise ValueError(f"component names {clash} are already taken by the reward's own components")
            extra = {name: RewardComponent.model_validate(component) for name, component in extra.items()}
        except Exception as exc:
            problem = f"{self.name}.episode_components: {type(exc).__name__}: {exc}"
            return reward.model_copy(update={"status": "error", "valid": False, "total": 0.0, "errors": [problem]})
        total = reward.total + sum(component.weighted for component in extra.values())
        return finite_or_error(reward.model_copy(update={"components": reward.components | extra, "total": total}))

    def episode_limits(self, limits: LengthLimits) -> LengthLimits:
        """The run's length limits for a whole episode: L_max is ``max_total_tokens`` (the rollout's
        ``max_new_tokens`` bounds one turn), and L_cache keeps its share of L_max."""
        total = self.config.max_total_tokens
        cache = round(limits.cache_length * total / limits.max_length)
        return limits.model_copy(update={"max_length": total, "cache_length": min(cache, total)})


class OverEnvironment(MultiTurnEnv[ConfigT]):
    """A multi-turn environment over another environment's problems (``inner``, set by ``__init__``
    before calling the base's): its tasks relabelled as this environment's (id, env name, a plain
    prompt wrapped by this environment's ``system_prompt``), held out by the inner environment's
    splits and problem keys (``as_inner`` turns a task back into the inner environment's)."""

    inner: Environment[Any]

    def num_tasks(self, split: Split = "train") -> int | None:
        return self.inner.num_tasks(split)

    def task(self, index: int, split: Split = "train") -> Task:
        inner = self.inner.task(index, split)
        prompt = self.make_prompt(inner.prompt) if isinstance(inner.prompt, str) else inner.prompt
        return inner.model_copy(update={"id": self.task_id(index, split), "env": self.name, "prompt": prompt})

    def as_inner(self, task: Task, **update: Any) -> Task:
        """``task`` as the inner environment's (with ``update``'s fields changed)."""
        return task.model_copy(update={"env": self.inner.name, **update})

    def instance_key(self, task: Task) -> str | None:
        return self.inner.instance_key(self.as_inner(task))

    def split_violation(self, task: Task, split: Split) -> str | None:
        return self.inner.split_violation(self.as_inner(task), split)


def last_assistant(transcript: Sequence[Message]) -> str:
    """The content of the last assistant message ("" when there is none)."""
    return next((m.content for m in reversed(transcript) if m.role == "assistant"), "")


def stored_transcript(record: Mapping[str, Any]) -> list[Message] | None:
    """The messages of a stored episode (the "messages" of a samples.jsonl record), validated; None
    for a record of one turn, which has none."""
    messages = record.get("messages")
    if messages is None:
        return None
    if not isinstance(messages, list):
        raise ValueError('"messages" must be a list of {role, content} objects')
    return [Message.model_validate(message) for message in messages]


def play_episode(
    env: MultiTurnEnv[Any], task: Task, policy: Callable[[Task, list[Message]], str | None]
) -> list[Message] | None:
    """An episode played without a model: ``policy`` gives each assistant turn (e.g. ``gold_turn``),
    within ``max_turns``. None when the policy has no turn to give at the start."""
    state, transcript = env.start(task), list[Message]()
    for turn_index in range(env.config.max_turns):
        turn = policy(task, transcript)
        if turn is None:
            return transcript or None
        transcript.append(Message(role="assistant", content=turn))
        reply = env.respond(task, state, transcript)
        if reply.done or turn_index == env.config.max_turns - 1:
            break
        transcript.extend(reply.messages)
    return transcript
