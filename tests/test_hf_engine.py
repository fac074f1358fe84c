"""The ``hf`` rollout engine against independent computations on a tiny random Llama (and GPT-2).

The second method behind every expected value: full forward passes over prompt + completion, one
sequence at a time, no KV cache and no padding; log-softmax at each generated position; top-k and
top-p sets recomputed here with plain Python loops (float64). Greedy decoding is replayed step by
step with argmax over such full passes. The tokenizer is character-level, so a stop string's cut
is found with ``str.index`` on the uncut text.

Two model families: Llama (rotary positions) and GPT-2 (learned absolute positions). Rotary attention
only sees relative positions, so wrong position ids under left padding go unnoticed on Llama; on
GPT-2 they change the logits, which the padding and log-prob tests then catch.
"""

from __future__ import annotations

import copy
import math
import string

import pytest
import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from grpopp.envs.base import Message
from grpopp.rollout.base import Completion, SamplingParams
from grpopp.rollout.hf import HFEngine

PAD, EOS, BOS = 0, 1, 2
CHARS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
VOCAB = {"<pad>": PAD, "<eos>": EOS, "<bos>": BOS, "<unk>": 3} | {c: 4 + i for i, c in enumerate(CHARS)}
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)
PROMPTS = ["a", "hello world", "xyz 12", "The quick brown fox:"]
TOL = {"rtol": 0, "atol": 1e-5}


def make_tokenizer(chat: bool) -> transformers.PreTrainedTokenizerFast:
    """Character-level tokenizer; the chat one adds <bos> to plain text and has a chat template."""
    tok = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if chat:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    wrapped = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )
    if chat:
        wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def with_eos_bias(model: transformers.LlamaForCausalLM, bias: float) -> transformers.LlamaForCausalLM:
    """A copy of the model whose lm_head adds ``bias`` to the EOS logit."""
    biased = copy.deepcopy(model)
    old = biased.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[EOS] = bias
    biased.lm_head = head
    return biased


@pytest.fixture(scope="module")
def tokenizer() -> transformers.PreTrainedTokenizerFast:
    return make_tokenizer(chat=False)


@pytest.fixture(scope="module")
def model() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.3,  # peaked logits: clear argmaxes, small top-p nuclei
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def gpt2_model() -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=len(VOCAB),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=128,
        initializer_range=0.3,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(params=["llama", "gpt2"])
def any_model(request, model, gpt2_model) -> transformers.PreTrainedModel:
    return {"llama": model, "gpt2": gpt2_model}[request.param]


@pytest.fixture(scope="module")
def no_eos_model(model: transformers.LlamaForCausalLM) -> transformers.LlamaForCausalLM:
    return with_eos_bias(model, -100.0)


# ----------------------------------------------------------------------------- the second method


def full_logits(model: transformers.PreTrainedModel, ids: list[int]) -> torch.Tensor:
    """Logits of one unpadded sequence, one forward pass, no cache: [T, V] float64."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].double()


def reference_kept(scaled: list[float], top_k: int, top_p: float) -> list[int]:
    """Token ids kept by top-k then top-p, recomputed with a sort and a running sum."""
    order = sorted(range(len(scaled)), key=lambda i: -scaled[i])
    kept = order if top_k == 0 else [i for i in order if scaled[i] >= scaled[order[top_k - 1]]]
    if top_p < 1.0:
        top = scaled[kept[0]]
        weights = [math.exp(scaled[i] - top) for i in kept]
        nucleus, mass = [], 0.0
        for i, w in zip(kept, weights, strict=True):
            nucleus.append(i)
            mass += w / sum(weights)
            if mass >= top_p:
                break
        kept = nucleus
    return kept


def reference_logprobs(model: transformers.PreTrainedModel, c: Completion, params: SamplingParams) -> list[float]:
    """Log-prob of each generated token under the (scaled, filtered) distribution, from a full forward pass."""
    logits = full_logits(model, c.prompt_ids + c.token_ids)  # [P + T, V]
    out = []
    for k, token in enumerate(c.token_ids):
        row = logits[len(c.prompt_ids) + k - 1]  # [V], predicts generated token k
        if params.temperature == 0.0:
            out.append(float(torch.log_softmax(row, dim=-1)[token]))
            continue
        scaled = (row / params.temperature).tolist()
        kept = reference_kept(scaled, params.top_k, params.top_p)
        assert token in kept, f"sampled token {token} lies outside the filtered set"
        out.append(scaled[token] - math.log(sum(math.exp(scaled[i]) for i in kept)))
    return out


def reference_greedy(model: transformers.PreTrainedModel, prompt_ids: list[int], max_new: int) -> list[int]:
    """Step-by-step argmax of full forward passes, stopping after EOS."""
    ids = list(prompt_ids)
    for _ in range(max_new):
        ids.append(int(full_logits(model, ids)[-1].argmax()))
        if ids[-1] == EOS:
            break
    return ids[len(prompt_ids) :]


def flat(result: list[list[Completion]]) -> list[Completion]:
    return [c for group in result for c in group]


# ----------------------------------------------------------------------------- 1. log-probs


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=12, temperature=1.0, seed=0),
        SamplingParams(max_new_tokens=12, temperature=0.7, top_k=5, seed=1),
        SamplingParams(max_new_tokens=12, temperature=1.3, top_p=0.6, seed=2),
        SamplingParams(max_new_tokens=12, temperature=0.8, top_k=20, top_p=0.8, seed=3),
        SamplingParams(max_new_tokens=12, temperature=0.0),
    ],
    ids=["plain", "top_k", "top_p", "top_k_top_p", "greedy"],
)
def test_logprobs_match_full_forward(any_model, tokenizer, params):
    model = any_model
    engine = HFEngine(model, tokenizer, batch_size=8)
    completions = flat(engine.generate(PROMPTS, params, n=3))  # 12 rows, chunks of 8 and 4
    for c in completions:
        assert len(c.logprobs) == len(c.token_ids) > 0
        torch.testing.assert_close(c.logprobs, reference_logprobs(model, c, params), **TOL, check_dtype=False)


def test_filtered_sampling_stays_in_the_filtered_set(model, tokenizer):
    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_k=3, seed=4)
    for c in flat(HFEngine(model, tokenizer).generate(PROMPTS, params, n=4)):
        logits = full_logits(model, c.prompt_ids + c.token_ids)
        for k, token in enumerate(c.token_ids):
            top3 = logits[len(c.prompt_ids) + k - 1].topk(3).indices.tolist()
            assert token in top3


# ----------------------------------------------------------------------------- 2. greedy and padding


def test_greedy_equals_stepwise_argmax_and_batching_changes_nothing(any_model, tokenizer):
    model = any_model
    params = SamplingParams(max_new_tokens=16, temperature=0.0)
    engine = HFEngine(model, tokenizer)
    batched = flat(engine.generate(PROMPTS, params))
    assert len({len(c.prompt_ids) for c in batched}) == len(PROMPTS)  # really left-padded
    for prompt, c in zip(PROMPTS, batched, strict=True):
        assert c.prompt_ids == tokenizer.encode(prompt)
        assert c.token_ids == reference_greedy(model, c.prompt_ids, 16)
        alone = engine.generate([prompt], params)[0][0]
        assert alone.token_ids == c.token_ids
        torch.testing.assert_close(alone.logprobs, c.logprobs, **TOL)


# ----------------------------------------------------------------------------- 3. seeds


def test_same_seed_same_samples_different_seed_different_samples(model, tokenizer):
    engine = HFEngine(model, tokenizer)

    def sample(seed):
        params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=seed)
        return [c.token_ids for c in flat(engine.generate(PROMPTS[:2], params, n=4))]

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first
    assert len({tuple(ids) for ids in first}) > 1  # copies of one prompt differ too


def test_unseeded_calls_advance_the_generator(model, tokenizer):
    engine = HFEngine(model, tokenizer)
    params = SamplingParams(max_new_tokens=10, temperature=1.0)
    assert engine.generate(PROMPTS, params) != engine.generate(PROMPTS, params)


# ----------------------------------------------------------------------------- 4. stop, length, EOS


def test_stop_strings_cut_after_the_token_that_completes_them(no_eos_model, tokenizer):
    engine = HFEngine(no_eos_model, tokenizer)
    free = SamplingParams(max_new_tokens=30, temperature=1.0, seed=5)
    full = engine.generate(["hello"], free)[0][0]
    assert full.finish_reason == "length"
    early, late = full.text[8:10], full.text[20:23]
    cut = full.text.index(early) + len(early)  # char-level: one token per character
    assert cut >= 3

    stopped = engine.generate(["hello"], free.model_copy(update={"stop": (late, early)}))[0][0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[:cut]
    assert stopped.token_ids == full.token_ids[:cut]
    assert stopped.logprobs == full.logprobs[:cut]

    never = engine.generate(["hello"], free.model_copy(update={"stop": ("~~~~~~",)}))[0][0]
    assert never.finish_reason == "length" and never.token_ids == full.token_ids


def test_max_new_tokens_gives_length(no_eos_model, tokenizer):
    params = SamplingParams(max_new_tokens=7, temperature=1.0, seed=6)
    for c in flat(HFEngine(no_eos_model, tokenizer).generate(PROMPTS, params, n=2)):
        assert c.finish_reason == "length"
        assert len(c.token_ids) == len(c.logprobs) == 7
        assert EOS not in c.token_ids


def test_forced_eos_stops_the_row_and_is_kept(model, tokenizer):
    engine = HFEngine(with_eos_bias(model, 100.0), tokenizer)
    for c in flat(engine.generate(PROMPTS, SamplingParams(max_new_tokens=5, temperature=0.0))):
        assert (c.token_ids, c.text, c.finish_reason) == ([EOS], "", "stop")
        assert c.logprobs == pytest.approx([0.0], abs=1e-6)


def test_rows_stop_at_eos_at_different_steps(model, tokenizer):
    likely_eos = with_eos_bias(model, 5.0)
    params = SamplingParams(max_new_tokens=25, temperature=1.0, seed=9)
    decoded_rows: list[int] = []
    likely_eos.get_input_embeddings().register_forward_hook(lambda _m, a, _o: decoded_rows.append(a[0].shape[0]))
    completions = flat(HFEngine(likely_eos, tokenizer, batch_size=16).generate(PROMPTS, params, n=4))
    # Finished rows left the decoding batch: after the prefill of 4 distinct prompts, fewer than 16 rows.
    assert decoded_rows[0] == 4 and 0 < min(decoded_rows[1:]) < max(decoded_rows[1:]) <= 16
    assert decoded_rows[1:] == sorted(decoded_rows[1:], reverse=True)
    lengths = set()
    for c in completions:
        assert c.token_ids.count(EOS) == (c.finish_reason == "stop")
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == EOS
            lengths.add(len(c.token_ids))
        else:
            assert len(c.token_ids) == 25
        # rows finished and left the batch while the others went on: their log-probs are still exact
        torch.testing.assert_close(c.logprobs, reference_logprobs(likely_eos, c, params), **TOL, check_dtype=False)
    assert len(lengths) >= 3


# ----------------------------------------------------------------------------- 5. degenerate filters


@pytest.mark.parametrize(
    "filters", [{"top_k": 1}, {"top_p": 1e-6}, {"top_k": 1, "top_p": 0.5}], ids=["top_k_1", "top_p_tiny", "both"]
)
def test_degenerate_filters_equal_greedy(model, tokenizer, filters):
    engine = HFEngine(model, tokenizer)
    greedy = flat(engine.generate(PROMPTS, SamplingParams(max_new_tokens=12, temperature=0.0)))
    sampled = flat(engine.generate(PROMPTS, SamplingParams(max_new_tokens=12, temperature=1.0, seed=3, **filters)))
    for g, s in zip(greedy, sampled, strict=True):
        assert s.token_ids == g.token_ids
        assert s.logprobs == [0.0] * len(s.token_ids)  # a single kept token has probability 1


# ----------------------------------------------------------------------------- 6. n and chunking


def test_n_completions_per_prompt_in_prompt_order_across_chunks(model, tokenizer):
    engine = HFEngine(model, tokenizer, batch_size=4)  # 4 prompts x 3 = 12 rows: three chunks
    greedy = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=0.0), n=3)
    sampled = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=1.0, seed=0), n=3)
    assert [len(group) for group in greedy] == [len(group) for group in sampled] == [3] * len(PROMPTS)
    for prompt, g_group, s_group in zip(PROMPTS, greedy, sampled, strict=True):
        expected = reference_greedy(model, tokenizer.encode(prompt), 8)
        assert [c.token_ids for c in g_group] == [expected] * 3
        assert all(c.prompt_ids == tokenizer.encode(prompt) for c in g_group + s_group)


# ----------------------------------------------------------------------------- 7. chat messages


def test_messages_use_the_chat_template(model):
    chat_tokenizer = make_tokenizer(chat=True)
    engine = HFEngine(model, chat_tokenizer)
    messages = [Message(role="system", content="be brief"), Message(role="user", content="hi")]
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    chat, plain = flat(engine.generate([messages, "hi"], params))
    rendered = "[system]be brief\n[user]hi\n[assistant]"
    assert chat.prompt_ids == [BOS] + [VOCAB[ch] for ch in rendered]  # one BOS, from the template
    assert plain.prompt_ids == [BOS, VOCAB["h"], VOCAB["i"]]  # the tokenizer's own BOS
    assert chat.token_ids == reference_greedy(model, chat.prompt_ids, 6)


def test_messages_without_a_chat_template_raise(model, tokenizer):
    engine = HFEngine(model, tokenizer)
    with pytest.raises(ValueError, match="no chat template.*plain-text prompts"):
        engine.generate([[Message(role="user", content="hi")]], SamplingParams())


def test_bad_arguments_raise(model, tokenizer):
    with pytest.raises(ValueError, match="batch_size"):
        HFEngine(model, tokenizer, batch_size=0)
    with pytest.raises(ValueError, match="n must be"):
        HFEngine(model, tokenizer).generate(PROMPTS, SamplingParams(), n=0)


# ----------------------------------------------------------------------------- 8. train/eval mode


@pytest.mark.parametrize("training", [True, False])
def test_mode_is_eval_during_generation_and_restored_after(model, tokenizer, training):
    seen = []
    hook = model.model.layers[0].register_forward_hook(lambda module, args, out: seen.append(module.training))
    model.train(training)
    try:
        HFEngine(model, tokenizer).generate(PROMPTS[:1], SamplingParams(max_new_tokens=3, temperature=0.0))
        assert model.training is training
        assert all(m.training is training for m in model.modules())
    finally:
        hook.remove()
        model.eval()
    assert seen and not any(seen)


def test_prefill_runs_each_distinct_prompt_once(model, tokenizer):
    """The n copies of a prompt share one prefill row; decoding then runs all rows (shapes of the
    input_ids the model embeds: prefill [U, P], then [B, 1] per step)."""
    shapes: list[tuple[int, ...]] = []
    hook = model.get_input_embeddings().register_forward_hook(lambda _m, a, _o: shapes.append(tuple(a[0].shape)))
    try:
        HFEngine(model, tokenizer, batch_size=8).generate(PROMPTS, SamplingParams(max_new_tokens=2, seed=0), n=3)
    finally:
        hook.remove()
    lengths = [len(tokenizer.encode(p)) for p in PROMPTS]
    # 12 rows in chunks of 8 (prompts 0, 1, 2 -> 3 distinct) and 4 (prompts 2, 3 -> 2 distinct).
    assert shapes == [(3, max(lengths[:3])), (8, 1), (2, max(lengths[2:])), (4, 1)]
