"""Episodes: the one rollout loop of training and evaluation, token-in/token-out.

``rollout(engine, tasks, envs, params, n)`` returns ``n`` completions per task. A single-turn
environment's episode is its first turn: its tasks go to ``engine.generate`` in one call (the ``n``
copies of a prompt share its prefill), and each completion is exactly what the engine sampled. The
episodes of a multi-turn environment (``grpopp.envs.multiturn``) start from their prompt's ids (with
the environment's tools, ``grpopp.rollout.chat.prompt_ids``); every turn of every live episode is
generated in one ``engine.generate_ids`` call from its token ids (the engines share a prompt's
prefill across its copies), then:

1. ``respond`` runs for every live episode at once (a thread each, at most ``step_timeout``
   seconds); a raise or a timeout ends the episode with an environment error (masked later).
2. The environment's messages become tokens appended to the episode (``grpopp.rollout.chat``:
   the template's text for them, or ``render_plain``), never re-tokenising earlier turns.
3. Finished episodes leave the batch; the next turn of the others is generated.

An episode ends when the environment says done, at ``max_turns`` assistant turns, or at
``max_total_tokens`` tokens after the prompt (finish reason "length", as a turn cut at its own
limit). Its ``Completion`` holds every token after the prompt with ``model_mask`` (True where
sampled; the loss and the sampler log-probs cover those only), the transcript, and ``EpisodeStats``.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from typing import Any

from grpopp.envs.base import Environment, Message, Task
from grpopp.envs.multiturn import MultiTurnEnv, Reply
from grpopp.rollout.base import Completion, EpisodeEnd, EpisodeStats, FinishReason, RolloutEngine, SamplingParams
from grpopp.rollout.chat import message_ids, prompt_ids


@dataclass
class _Episode:
    """One episode under way."""

    task: Task
    env: MultiTurnEnv[Any]
    state: Any
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    mask: list[bool] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    transcript: list[Message] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    env_seconds: float = 0.0
    finish: FinishReason = "stop"
    ended: EpisodeEnd | None = None
    error: str | None = None
    reply: Reply | None = None
    """The environment's answer to the newest turn, until it is appended."""

    def add_turn(self, completion: Completion) -> None:
        self.token_ids += completion.token_ids
        self.mask += [True] * len(completion.token_ids)
        self.logprobs += completion.logprobs
        self.transcript.append(Message(role="assistant", content=completion.text))
        self.turns += 1
        self.finish = completion.finish_reason

    def add_messages(self, messages: list[Message], ids: list[int]) -> None:
        self.token_ids += ids
        self.mask += [False] * len(ids)
        self.logprobs += [0.0] * len(ids)
        self.transcript += messages

    def completion(self) -> Completion:
        assistant = [m.content for m in self.transcript if m.role == "assistant"]
        return Completion(
            prompt_ids=self.prompt_ids,
            token_ids=self.token_ids,
            text=assistant[-1] if assistant else "",
            logprobs=self.logprobs,
            finish_reason=self.finish,
            model_mask=self.mask,
            messages=self.transcript,
            episode=EpisodeStats(
                turns=self.turns,
                ended=self.ended or "done",
                tool_calls=self.tool_calls,
                tool_errors=self.tool_errors,
                env_seconds=self.env_seconds,
                error=self.error,
            ),
        )


def turn_params(params: SamplingParams, env: Environment[Any], used: int = 0) -> SamplingParams:
    """Sampling parameters of one assistant turn of ``env``: at most its ``max_tokens_per_turn`` and
    what is left of its ``max_total_tokens`` after ``used`` tokens, stopping also on its stop strings."""
    if not isinstance(env, MultiTurnEnv):
        return params
    config = env.config
    most = min(config.max_tokens_per_turn or params.max_new_tokens, config.max_total_tokens - used)
    stop = tuple(dict.fromkeys((*params.stop, *env.stop)))
    return params.model_copy(update={"max_new_tokens": max(most, 1), "stop": stop})


def rollout(
    engine: RolloutEngine,
    tasks: Sequence[Task],
    envs: dict[str, Environment[Any]],
    params: SamplingParams,
    n: int = 1,
) -> list[list[Completion]]:
    """``n`` completions (episodes) per task: result[i][j] is episode j of tasks[i]."""
    results: list[list[Completion]] = [[] for _ in tasks]
    single = [i for i, task in enumerate(tasks) if not isinstance(envs[task.env], MultiTurnEnv)]
    if single or not tasks:  # one call even without prompts (see vllm_engine)
        out = engine.generate([tasks[i].prompt for i in single], params, n=n)
        for i, completions in zip(single, out, strict=True):
            results[i] = completions
    episodes: list[tuple[int, _Episode]] = []
    for i, task in enumerate(tasks):
        env = envs[task.env]
        if isinstance(env, MultiTurnEnv):
            ids = prompt_ids(engine.tokenizer, task.prompt, env.tool_schemas)
            episodes += [(i, _start(env, task, ids)) for _ in range(n)]
    if episodes:
        _play(engine, [e for _, e in episodes if e.ended is None], params)
    for i, episode in episodes:
        results[i].append(episode.completion())
    return results


def _start(env: MultiTurnEnv[Any], task: Task, ids: list[int]) -> _Episode:
    episode = _Episode(task, env, None, ids)
    try:
        episode.state = env.start(task)
    except Exception as exc:
        episode.ended, episode.error = "env_error", f"{env.name}.start raised {type(exc).__name__}: {exc}"[:2000]
    return episode


def _play(engine: RolloutEngine, live: list[_Episode], params: SamplingParams) -> None:
    """Turns until every episode has ended: the next turn of every live episode (one engine call per
    distinct turn limit), then steps 1-2 of the module docstring."""
    turn = 0
    # Not a `with` block: its exit would wait for a respond that overran its timeout and still runs.
    pool = ThreadPoolExecutor(max_workers=max(1, min(32, len(live))), thread_name_prefix="grpopp-env")
    tokenizer = engine.tokenizer
    special = set(getattr(tokenizer, "all_special_ids", []))
    try:
        while live:
            seed = params.seed
            if seed is not None and turn > 0:  # the first turn takes the call's seed; later ones their own
                seed = random.Random(f"{seed}|turn|{turn}").getrandbits(31)
            by_params: dict[SamplingParams, list[_Episode]] = defaultdict(list)
            for episode in live:
                step = turn_params(params, episode.env, len(episode.token_ids)).model_copy(update={"seed": seed})
                by_params[step].append(episode)
            for step, group in by_params.items():
                completions = engine.generate_ids([e.prompt_ids + e.token_ids for e in group], step)
                for episode, completion in zip(group, completions, strict=True):
                    episode.add_turn(completion)
            turn += 1
            _respond(pool, live)
            for episode in live:
                if episode.ended is None:
                    _append_reply(episode, tokenizer, special)
            live = [e for e in live if e.ended is None]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _respond(pool: ThreadPoolExecutor, live: list[_Episode]) -> None:
    """1.: every live episode's ``respond`` at once; the reply is kept on the episode."""

    def timed(episode: _Episode) -> tuple[Reply, float]:
        started = time.perf_counter()
        reply = episode.env.respond(episode.task, episode.state, list(episode.transcript))
        return reply, time.perf_counter() - started

    futures = [(episode, pool.submit(timed, episode)) for episode in live]
    deadline_base = time.perf_counter()
    for episode, future in futures:
        timeout = episode.env.config.step_timeout
        try:
            reply, seconds = future.result(timeout=max(0.0, deadline_base + timeout - time.perf_counter()))
            if not isinstance(reply, Reply):
                raise TypeError(f"returned a {type(reply).__name__}, not a Reply")
        except FutureTimeout:
            episode.ended, episode.env_seconds = "env_error", episode.env_seconds + timeout
            episode.error = f"{episode.env.name}.respond took more than step_timeout={timeout:g} s"
            continue
        except Exception as exc:
            episode.ended = "env_error"
            episode.error = f"{episode.env.name}.respond raised {type(exc).__name__}: {exc}"[:2000]
            continue
        episode.env_seconds += seconds
        episode.tool_calls += reply.tool_calls
        episode.tool_errors += reply.tool_errors
        episode.reply = reply


def _append_reply(episode: _Episode, tokenizer: Any, special: set[int]) -> None:
    """2.: end the episode, or append the environment's messages as tokens. ``special``: the
    tokenizer's special token ids; a turn ending on one (an end-of-turn token) stands for the
    template's own text of it."""
    reply, episode.reply = episode.reply, None
    assert reply is not None
    config = episode.env.config
    if reply.done:
        episode.ended = "done"
    elif episode.turns >= config.max_turns:
        episode.ended = "max_turns"
    elif episode.finish == "length" and len(episode.token_ids) >= config.max_total_tokens:
        episode.ended = "max_tokens"
    else:
        plain = None if not isinstance(episode.task.prompt, str) else episode.env.render_plain(reply.messages)
        last = episode.token_ids[-1] if episode.token_ids and episode.token_ids[-1] in special else None
        ids = message_ids(tokenizer, reply.messages, plain, last)
        if len(episode.token_ids) + len(ids) >= config.max_total_tokens:  # no room left for a turn
            episode.ended, episode.finish = "max_tokens", "length"
        else:
            episode.add_messages(list(reply.messages), ids)


def episode_record(completion: Completion) -> dict[str, Any]:
    """An episode's part of a sample record: its transcript, how it went, and which of its tokens
    were trained (``trained_spans``: [start, end) token ranges after the prompt that the model sampled)."""
    if completion.messages is None or completion.episode is None:
        return {}
    spans: list[list[int]] = []
    for index, sampled in enumerate(completion.model_mask or []):
        if sampled and spans and spans[-1][1] == index:
            spans[-1][1] = index + 1
        elif sampled:
            spans.append([index, index + 1])
    return {
        "messages": [m.model_dump(mode="json", exclude_none=True) for m in completion.messages],
        "episode": asdict(completion.episode),
        "trained_spans": spans,
    }
