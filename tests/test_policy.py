"""The learner's log-probs (``completion_logprobs``), flat and with shared prompts, against a second method.

The second method: each (prompt, completion) pair alone, one full forward pass without padding or
cache, log-softmax of logits / temperature at the positions that predict the completion tokens
(float64 from there on). Two model families: Llama (rotary positions) and GPT-2 (learned absolute
positions, where wrong position ids under left padding change the result). Dropout is off, as the
trainer sets it, so the flat and shared passes compute the same function.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from grpopp.learner.policy import completion_logprobs, make_token_batch
from grpopp.rollout.base import distinct_rows

VOCAB = 40
TEMPERATURE = 0.7
# Three groups with prompts of lengths 3, 2 and 4 (left padding differs), completions of 1..4 tokens.
PROMPTS = [[5, 6, 7]] * 3 + [[8, 9]] * 2 + [[10, 11, 12, 13]]
COMPLETIONS = [[1, 2, 3, 4], [5], [6, 7], [8, 9, 10], [11], [12, 13]]


def llama() -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.3,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(config)


def gpt2() -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        initializer_range=0.3,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config)


@pytest.fixture(params=["llama", "gpt2"])
def model(request) -> transformers.PreTrainedModel:
    return {"llama": llama, "gpt2": gpt2}[request.param]().train()


def one_at_a_time(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Log-probs [T] of ``completion`` after ``prompt``: one unpadded pass, no cache."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0].double() / TEMPERATURE  # [P + T, V]
    predicting = logits[len(prompt) - 1 : len(prompt) + len(completion) - 1]  # [T, V]
    return torch.log_softmax(predicting, dim=-1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def embedding_inputs(model) -> list[tuple[int, ...]]:
    """Record the shape of every input_ids the model embeds (one entry per forward pass)."""
    shapes: list[tuple[int, ...]] = []
    model.get_input_embeddings().register_forward_hook(lambda _m, args, _out: shapes.append(tuple(args[0].shape)))
    return shapes


def test_distinct_rows_maps_every_row_to_its_first_copy():
    first, index = distinct_rows([[1, 2], [1, 2], [3], [1, 2], [3], [4]])
    assert (first, index) == ([0, 2, 5], [0, 0, 1, 0, 1, 2])
    assert distinct_rows([]) == ([], [])


@pytest.mark.parametrize("share", [False, True])
def test_learner_logprobs_equal_one_pass_per_sequence(model, share):
    batch = make_token_batch(PROMPTS, COMPLETIONS, pad_token_id=0, device=torch.device("cpu"))
    with torch.no_grad():
        logprobs, entropy = completion_logprobs(model, batch, TEMPERATURE, with_entropy=True, share_prompts=share)
    assert logprobs.shape == (6, 4) and entropy is not None
    for row, (prompt, completion) in enumerate(zip(PROMPTS, COMPLETIONS, strict=True)):
        expected = one_at_a_time(model, prompt, completion)
        torch.testing.assert_close(logprobs[row, : len(completion)].double(), expected, rtol=0, atol=2e-5)
        assert batch.completion_mask[row].tolist() == [1.0] * len(completion) + [0.0] * (4 - len(completion))


def test_shared_prompt_gradient_equals_the_flat_one(model):
    batch = make_token_batch(PROMPTS, COMPLETIONS, pad_token_id=0, device=torch.device("cpu"))
    weights = torch.linspace(-1.0, 1.0, 24).reshape(6, 4)  # a loss that weighs every token differently
    grads = {}
    for share in (False, True):
        model.zero_grad()
        logprobs, _ = completion_logprobs(model, batch, TEMPERATURE, share_prompts=share)
        (logprobs * weights * batch.completion_mask).sum().backward()
        grads[share] = [p.grad.clone() for p in model.parameters()]
    for flat, shared in zip(grads[False], grads[True], strict=True):
        torch.testing.assert_close(shared, flat, rtol=1e-4, atol=1e-5)
    assert max(float(g.abs().max()) for g in grads[False]) > 0.1  # the comparison is not between zeros


def test_shared_pass_runs_each_distinct_prompt_once(model):
    batch = make_token_batch(PROMPTS, COMPLETIONS, pad_token_id=0, device=torch.device("cpu"))
    shapes = embedding_inputs(model)
    completion_logprobs(model, batch, TEMPERATURE, share_prompts=True)
    assert shapes == [(3, 4), (6, 3)]  # 3 distinct prompts x P=4, then 6 rows x T-1=3 completion tokens
    shapes.clear()
    completion_logprobs(model, batch, TEMPERATURE, share_prompts=False)
    assert shapes == [(6, 8)]


def test_flat_pass_under_gradient_checkpointing_and_without_repeats(model):
    batch = make_token_batch(PROMPTS, COMPLETIONS, pad_token_id=0, device=torch.device("cpu"))
    shapes = embedding_inputs(model)
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    completion_logprobs(model, batch, TEMPERATURE, share_prompts=True)
    assert shapes == [(6, 8)]  # checkpointing turns the KV cache off: no sharing
    getattr(model, "activation_checkpointing_disable", model.gradient_checkpointing_disable)()
    shapes.clear()
    unique = make_token_batch([[5, 6], [7]], [[1], [2, 3]], pad_token_id=0, device=torch.device("cpu"))
    completion_logprobs(model, unique, TEMPERATURE, share_prompts=True)
    assert shapes == [(2, 4)]  # no prompt repeats: nothing to share, one flat pass


def test_single_token_completions_need_no_second_pass(model):
    prompts, completions = [[5, 6]] * 3 + [[7]], [[1], [2], [3], [4]]
    batch = make_token_batch(prompts, completions, pad_token_id=0, device=torch.device("cpu"))
    shapes = embedding_inputs(model)
    with torch.no_grad():
        logprobs, _ = completion_logprobs(model, batch, TEMPERATURE, share_prompts=True)
    assert shapes == [(2, 2)]
    for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        torch.testing.assert_close(logprobs[row].double(), one_at_a_time(model, prompt, completion), rtol=0, atol=2e-5)
