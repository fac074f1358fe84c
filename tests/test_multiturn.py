"""Multi-turn episodes: token-exact rollouts, masks, the learner's pass over an episode, limits, faults.

Expected token ids come from text written out by hand from the test's own ChatML template; the
learner's log-probs are compared with a plain forward pass of the whole episode and with the
sampler's own log-probs, turn by turn."""

from __future__ import annotations

import time

import pytest
import torch

from grpopp.envs.base import Message, Task
from grpopp.envs.multiturn import MultiTurnConfig, MultiTurnEnv, Reply, play_episode
from grpopp.envs.registry import make_env
from grpopp.learner.policy import completion_logprobs, make_token_batch
from grpopp.objective.losses import LossConfig, policy_loss
from grpopp.recipes.tiny import TinyModelConfig, build_model, build_tokenizer
from grpopp.rewards.shaping import LengthLimits
from grpopp.rewards.types import VerifyResult
from grpopp.rollout.base import Completion, SamplingParams
from grpopp.rollout.episodes import rollout
from grpopp.rollout.groups import score_groups
from grpopp.rollout.hf import HFEngine

# A ChatML template written for these tests. Like the templates of reasoning models (Qwen3, DeepSeek-R1), it
# drops the <think> part of every assistant turn but the last, so rendering a conversation again changes the
# tokens the model sampled in earlier turns.
CHATML = (
    "{% for m in messages %}"
    "{% if m.role == 'assistant' and not loop.last %}"
    "{{ '<|im_start|>assistant\\n' + m.content.split('</think>')[-1] + '<|im_end|>\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def chatml_tokenizer():
    """The tiny character tokenizer with ChatML's two special tokens and the template above."""
    tokenizer = build_tokenizer()
    tokenizer.split_special_tokens = False
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = CHATML
    return tokenizer


class EchoConfig(MultiTurnConfig):
    turns: int = 3


class EchoEnv(MultiTurnEnv[EchoConfig]):
    """Answers every turn with "ok <turn>" until ``turns`` assistant turns; correct if the last turn says 7."""

    name = "echo"
    config_class = EchoConfig

    def num_tasks(self, split="train"):
        return None

    def task(self, index, split="train"):
        prompt = [Message(role="user", content=f"q{index}")] if self.config.system_prompt is None else f"q{index}:"
        return Task(id=f"echo/{split}/{index}", env="echo", split=split, index=index, prompt=prompt)

    def respond(self, task, state, transcript):
        turns = sum(m.role == "assistant" for m in transcript)
        if turns >= self.config.turns:
            return Reply(done=True)
        return Reply(messages=[Message(role="user", content=f"ok {turns}")])

    def verify_episode(self, task, transcript):
        correct = transcript[-1].content.endswith("7")
        return VerifyResult(status="correct" if correct else "incorrect", score=float(correct))


class ScriptedEngine:
    """Returns the given token ids turn after turn (isolates the rollout loop from sampling)."""

    samples_from_policy = True

    def __init__(self, tokenizer, turns: list[str]) -> None:
        self.tokenizer = tokenizer
        self.turns = [tokenizer.encode(text, add_special_tokens=False) for text in turns]
        self.seen: list[list[int]] = []
        self.calls = 0

    def _completion(self, prompt_ids, index):
        ids = self.turns[index]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Completion(prompt_ids, ids, text, [-0.5] * len(ids), "stop")

    def generate(self, prompts, params, n=1):
        from grpopp.rollout.base import encode_prompt

        out = []
        for prompt in prompts:
            ids = encode_prompt(self.tokenizer, prompt)
            self.seen.append(ids)
            out.append([self._completion(ids, 0) for _ in range(n)])
        return out

    def generate_ids(self, rows, params):
        """Every row of call k gets turn k (all episodes of these tests are at the same turn)."""
        self.seen += rows
        turn, self.calls = min(self.calls, len(self.turns) - 1), self.calls + 1
        return [self._completion(row, turn) for row in rows]


def test_episode_tokens_are_the_sampled_ids_and_the_template_text_of_each_message():
    tokenizer = chatml_tokenizer()
    turns = ["<think>a</think>5<|im_end|>", "<think>b</think>6<|im_end|>", "7<|im_end|>"]
    engine = ScriptedEngine(tokenizer, turns)
    env = EchoEnv(EchoConfig(turns=3))
    task = env.task(0)
    (episode,) = rollout(engine, [task], {"echo": env}, SamplingParams(max_new_tokens=32), n=1)[0]

    # By hand from CHATML: what the template adds after an assistant turn that ended with <|im_end|>.
    def env_text(k):
        return f"\n<|im_start|>user\nok {k}<|im_end|>\n<|im_start|>assistant\n"

    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    expected = encode(turns[0]) + encode(env_text(1)) + encode(turns[1]) + encode(env_text(2)) + encode(turns[2])
    assert episode.token_ids == expected
    mask = [True] * len(encode(turns[0])) + [False] * len(encode(env_text(1))) + [True] * len(encode(turns[1]))
    mask += [False] * len(encode(env_text(2))) + [True] * len(encode(turns[2]))
    assert episode.model_mask == mask
    assert episode.logprobs == [-0.5 if m else 0.0 for m in mask]
    assert episode.prompt_ids == encode("<|im_start|>user\nq0<|im_end|>\n<|im_start|>assistant\n")
    assert [m.role for m in episode.messages] == ["assistant", "user", "assistant", "user", "assistant"]
    assert episode.episode.turns == 3 and episode.episode.ended == "done"
    # Each turn continued exactly the ids so far.
    assert engine.seen[1] == episode.prompt_ids + expected[: len(encode(turns[0]) + encode(env_text(1)))]
    # Rendering the whole conversation again would have changed the sampled tokens (the <think> parts go).
    messages = [m.template_dict() for m in task.prompt] + [m.template_dict() for m in episode.messages]
    rerendered = encode(tokenizer.apply_chat_template(messages, tokenize=False))
    assert rerendered[len(episode.prompt_ids) :] != expected
    assert episode.text == "7"


def test_plain_text_episodes_append_render_plain():
    tokenizer = build_tokenizer()
    engine = ScriptedEngine(tokenizer, ["5<eos>"])
    engine.turns = [[*tokenizer.encode("5"), tokenizer.eos_token_id]] * 3
    env = EchoEnv(EchoConfig(turns=2, system_prompt="plain"))
    (episode,) = rollout(engine, [env.task(0)], {"echo": env}, SamplingParams(max_new_tokens=4), n=1)[0]
    turn = [*tokenizer.encode("5"), tokenizer.eos_token_id]
    assert episode.token_ids == turn + tokenizer.encode("ok 1\n") + turn
    assert episode.model_mask == [True, True] + [False] * 5 + [True, True]


@pytest.fixture(scope="module")
def chat_model():
    tokenizer = chatml_tokenizer()
    model = build_model(tokenizer, TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))
    model.eval()
    return model, tokenizer


def _guess_episodes(model, tokenizer, seed=0):
    env = make_env("guess", system_prompt="Guess.", min_n=4, max_n=9, max_tokens_per_turn=3, max_total_tokens=120)
    engine = HFEngine(model, tokenizer, batch_size=16, eos_token_ids=[tokenizer.eos_token_id])
    tasks = [env.task(i) for i in range(3)]
    params = SamplingParams(max_new_tokens=3, temperature=1.0, seed=seed)
    return env, tasks, rollout(engine, tasks, {"guess": env}, params, n=2)


def _token_batch(episodes, tokenizer):
    """The learner's layout of episodes: prompt, then every token after it, model tokens in the mask."""
    return make_token_batch(
        [c.prompt_ids for c in episodes],
        [c.token_ids for c in episodes],
        tokenizer.pad_token_id,
        torch.device("cpu"),
        [c.model_mask for c in episodes],
    )


def test_learner_logprobs_over_an_episode_equal_one_full_forward_and_the_sampler(chat_model):
    model, tokenizer = chat_model
    _, _, results = _guess_episodes(model, tokenizer)
    episodes = [c for group in results for c in group]
    assert any(c.episode.turns > 1 for c in episodes)  # the random model plays several turns
    batch = _token_batch(episodes, tokenizer)
    with torch.no_grad():
        shared, _ = completion_logprobs(model, batch, temperature=1.0, share_prompts=True, force_shared=True)
        flat, _ = completion_logprobs(model, batch, temperature=1.0, share_prompts=False)
        for row, c in enumerate(episodes):
            full = torch.tensor([c.prompt_ids + c.token_ids])
            reference = torch.log_softmax(model(full).logits[0].float(), dim=-1)  # one plain pass, no padding
            positions = torch.arange(len(c.prompt_ids) - 1, len(c.prompt_ids) + len(c.token_ids) - 1)
            expected = reference[positions, torch.tensor(c.token_ids)]
            torch.testing.assert_close(shared[row, : len(c.token_ids)], expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(flat[row, : len(c.token_ids)], expected, atol=1e-5, rtol=0)
            sampled = torch.tensor(c.model_mask)
            # The sampler decoded turn by turn with a KV cache from the same ids: the same log-probs.
            torch.testing.assert_close(torch.tensor(c.logprobs)[sampled], expected[sampled], atol=1e-4, rtol=0)
            assert torch.all(torch.tensor(c.logprobs)[~sampled] == 0)
            assert batch.completion_mask[row, : len(c.token_ids)].bool().tolist() == c.model_mask


def test_environment_tokens_get_exactly_zero_gradient(chat_model):
    model, tokenizer = chat_model
    _, _, results = _guess_episodes(model, tokenizer, seed=1)
    episodes = [c for group in results for c in group if c.episode.turns > 1]
    batch = _token_batch(episodes, tokenizer)
    logprobs, _ = completion_logprobs(model, batch, temperature=1.0, share_prompts=False)
    logprobs.retain_grad()
    advantages = torch.linspace(-1.0, 1.0, len(episodes))
    out = policy_loss(logprobs, logprobs.detach(), advantages, batch.completion_mask, LossConfig(), num_items=None)
    out.loss.backward()
    grad = logprobs.grad
    env_tokens = torch.zeros_like(grad, dtype=torch.bool)
    for row, c in enumerate(episodes):
        env_tokens[row, : len(c.token_ids)] = ~torch.tensor(c.model_mask)
    assert env_tokens.any()
    assert torch.all(grad[env_tokens] == 0.0)
    assert torch.all(grad[batch.completion_mask.bool()] != 0.0)


def test_guess_game_episodes_are_scored_from_their_transcripts(chat_model):
    model, tokenizer = chat_model
    env, tasks, results = _guess_episodes(model, tokenizer, seed=2)
    groups = score_groups(tasks, results, {"guess": env}, LengthLimits(max_length=120, cache_length=0))
    for task, group in zip(tasks, groups, strict=True):
        for sample in group.samples:
            guesses = [m.content for m in sample.completion.messages if m.role == "assistant"]
            assert sample.completion.episode.turns == len(guesses) <= task.metadata["guesses"]
            assert sample.reward.verification == env.verify_episode(task, sample.completion.messages)


def test_gold_and_wrong_episodes_of_the_guess_game():
    env = make_env("guess")
    for index in range(20):
        task = env.task(index)
        gold = play_episode(env, task, env.gold_turn)
        allowed = task.metadata["guesses"]
        result = env.verify_episode(task, gold)
        assert result.status == "correct"
        turns = sum(m.role == "assistant" for m in gold)
        assert result.score == pytest.approx(1 - 0.2 * (turns - 1) / (allowed - 1))
        assert env.verify_episode(task, play_episode(env, task, env.wrong_turn)).status == "incorrect"


class FaultyEnv(EchoEnv):
    name = "faulty"

    def task(self, index, split="train"):
        return super().task(index, split).model_copy(update={"env": "faulty"})

    def respond(self, task, state, transcript):
        if task.index == 0:
            raise RuntimeError("boom")
        if task.index == 1:
            time.sleep(5)
        return Reply(done=True)


def test_an_environment_fault_masks_only_its_episode_and_a_slow_step_times_out():
    tokenizer = chatml_tokenizer()
    engine = ScriptedEngine(tokenizer, ["7<|im_end|>"])
    env = FaultyEnv(EchoConfig(step_timeout=0.5))
    tasks = [env.task(i) for i in range(3)]
    started = time.perf_counter()
    results = rollout(engine, tasks, {"faulty": env}, SamplingParams(max_new_tokens=4), n=1)
    assert time.perf_counter() - started < 3.0
    ends = [group[0].episode for group in results]
    assert [e.ended for e in ends] == ["env_error", "env_error", "done"]
    assert "RuntimeError: boom" in ends[0].error and "step_timeout=0.5" in ends[1].error
    groups = score_groups(tasks, results, {"faulty": env}, LengthLimits(max_length=32, cache_length=0))
    assert [g.samples[0].reward.status for g in groups] == ["error", "error", "correct"]


def test_turn_and_token_limits_end_episodes():
    tokenizer = chatml_tokenizer()
    engine = ScriptedEngine(tokenizer, ["5<|im_end|>"] * 8)
    env = EchoEnv(EchoConfig(turns=10, max_turns=2))
    (episode,) = rollout(engine, [env.task(0)], {"echo": env}, SamplingParams(max_new_tokens=8), n=1)[0]
    assert episode.episode.turns == 2 and episode.episode.ended == "max_turns" and episode.finish_reason == "stop"
    env = EchoEnv(EchoConfig(turns=10, max_turns=10, max_total_tokens=30))
    (episode,) = rollout(engine, [env.task(0)], {"echo": env}, SamplingParams(max_new_tokens=8), n=1)[0]
    assert episode.episode.ended == "max_tokens" and episode.finish_reason == "length"
    assert len(episode.token_ids) < 30


def test_the_guess_warm_start_lays_out_episodes_as_the_rollout_does():
    """The tiny-guess warm start trains on demonstrated episodes; its rows must be the very ids (and
    trained mask) the rollout produces for the same turns, or RL would start from another layout."""
    from grpopp.recipes.tiny import TINY_GUESS_ENV, episode_row, guess_demo

    tokenizer = build_tokenizer()
    env = make_env("guess", **TINY_GUESS_ENV)
    for index in range(5):
        task = env.task(index)
        ids, trained = episode_row(tokenizer, env, task)
        transcript = play_episode(env, task, guess_demo)
        turns = [m.content for m in transcript if m.role == "assistant"]
        engine = ScriptedEngine(tokenizer, [])
        engine.turns = [[*tokenizer.encode(turn), tokenizer.eos_token_id] for turn in turns]
        (episode,) = rollout(engine, [task], {"guess": env}, SamplingParams(max_new_tokens=3), n=1)[0]
        assert episode.prompt_ids + episode.token_ids == ids
        assert [False] * len(episode.prompt_ids) + episode.model_mask == trained
        assert [m.content for m in episode.messages] == [m.content for m in transcript]


class CostlyEchoEnv(EchoEnv):
    """EchoEnv whose reward also costs 0.1 per assistant turn (an episode component)."""

    def episode_components(self, task, transcript):
        from grpopp.rewards.types import RewardComponent

        turns = sum(m.role == "assistant" for m in transcript)
        return {"turn_cost": RewardComponent(value=-float(turns), weight=0.1)}


def test_episode_components_add_to_the_reward_and_a_broken_one_masks_the_sample():
    tokenizer = chatml_tokenizer()
    engine = ScriptedEngine(tokenizer, ["5<|im_end|>", "6<|im_end|>", "7<|im_end|>"])
    env = CostlyEchoEnv(EchoConfig(turns=3))
    task = env.task(0)
    results = rollout(engine, [task], {"echo": env}, SamplingParams(max_new_tokens=8), n=1)
    (group,) = score_groups([task], results, {"echo": env}, LengthLimits(max_length=32, cache_length=0))
    reward = group.samples[0].reward
    # By hand: correctness 1 x 1 (the last turn says 7) + turn cost 0.1 x -3 turns.
    assert reward.status == "correct" and reward.total == pytest.approx(0.7, abs=1e-12)
    assert reward.components["turn_cost"].value == -3.0

    class Broken(EchoEnv):
        def episode_components(self, task, transcript):
            raise ZeroDivisionError("oops")

    broken = Broken(EchoConfig(turns=1))
    limits = LengthLimits(max_length=32, cache_length=0)
    (reward,) = broken.score_episodes([task], [results[0][0].messages], [3], limits)
    assert (reward.status, reward.valid) == ("error", False)
    assert "episode_components: ZeroDivisionError: oops" in reward.errors[0]
