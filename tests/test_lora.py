"""LoRA through peft (``grpopp.learner.lora``): exact against second computations, and end to end.

- The adapters' gradient equals that of a second computation in which each adapted layer's weight is
  W + (alpha / r) B A built in the autograd graph (merged in the graph, not peft's unmerged layers),
  in float64; the base weights get no gradient.
- With adapters off, the policy's log-probs (the KL reference) are the base model's, from a fresh copy.
- ``merged_weights`` loaded into a plain base model give the adapted model's outputs.
- ``grpopp train`` with ``model.lora`` saves adapters in peft's format (peft reads them back to the same
  outputs) and the merged model; ``--resume`` continues as an uninterrupted run; ``grpopp eval`` of the
  run equals the evaluation of the merged model folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from random_model import save_random_model
from test_trainer import PLUGIN, comparable, config_for, metrics

from grpopp.config_tools import ConfigError
from grpopp.envs.registry import load_plugin, registered_envs
from grpopp.jobs.run import load_model, train
from grpopp.learner import lora
from grpopp.learner.policy import completion_logprobs, make_token_batch
from grpopp.recipes.tiny import TinyModelConfig, build_model, build_tokenizer
from grpopp.training.config import load_train_config

GRPOPP = str(Path(sys.executable).with_name("grpopp"))
SETTINGS = lora.LoraSettings(r=4, alpha=8)  # scaling alpha / r = 2
FLAGS = ("--max-new-tokens", "3", "--out")  # the run's generation limit
PROMPTS = [[5, 6, 7], [5, 6, 7], [8, 9]]
COMPLETIONS = [[10, 11, 12, 13], [14, 15], [16, 17, 18]]


@pytest.fixture(scope="module", autouse=True)
def coin_env():
    if "coin" not in registered_envs():
        load_plugin(PLUGIN)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_random_model(tmp_path_factory.mktemp("random-model"))


def small_model(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    config = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    return build_model(build_tokenizer(), config).to(dtype)


def randomise_adapters(model: torch.nn.Module, seed: int = 1) -> None:
    """peft starts B at 0 (the adapted model equals the base); a trained adapter has B != 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * 0.2)


def batch_logprobs(model: torch.nn.Module) -> torch.Tensor:
    batch = make_token_batch(PROMPTS, COMPLETIONS, pad_token_id=0, device=torch.device("cpu"))
    logprobs, _ = completion_logprobs(model, batch, temperature=0.7, share_prompts=False)
    return logprobs * batch.completion_mask


def test_adapter_gradient_equals_the_gradient_through_merged_weights_built_in_the_graph():
    model = small_model(torch.float64)
    base_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    lora.add_lora(model, SETTINGS)
    randomise_adapters(model)
    coefficients = torch.linspace(-1.0, 2.0, 12, dtype=torch.float64).reshape(3, 4)
    (batch_logprobs(model) * coefficients).sum().backward()
    adapters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert adapters and all(".lora_" in name for name in adapters)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)  # the base is frozen

    # Second computation: a plain model whose adapted weights are W + 2 B A, with A and B leaves.
    plain = small_model(torch.float64)
    plain.load_state_dict(base_state)
    leaves = {name: p.detach().clone().requires_grad_(True) for name, p in adapters.items()}
    weights = dict(plain.named_parameters())
    for name in adapters:
        if ".lora_A." in name:
            layer = name.split(".lora_A.")[0]
            a, b = leaves[name], leaves[name.replace(".lora_A.", ".lora_B.")]
            weights[f"{layer}.weight"] = base_state[f"{layer}.weight"] + 2.0 * b @ a
    batch = make_token_batch(PROMPTS, COMPLETIONS, pad_token_id=0, device=torch.device("cpu"))
    position_ids = (batch.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = torch.func.functional_call(
        plain,
        weights,
        args=(),
        kwargs={"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": position_ids},
    ).logits[:, batch.prompt_length - 1 : -1]  # [B, T, V] predicting the completion tokens
    targets = batch.input_ids[:, batch.prompt_length :]
    second = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, targets[..., None])[..., 0]
    (second * batch.completion_mask * coefficients).sum().backward()
    for name, parameter in adapters.items():
        torch.testing.assert_close(parameter.grad, leaves[name].grad, rtol=1e-9, atol=1e-12)
    assert sum(float(p.grad.abs().sum()) for p in adapters.values()) > 1.0  # a real gradient on A and B


def test_adapters_off_give_the_base_model_and_merged_weights_the_adapted_one():
    base = small_model()
    adapted = small_model()
    lora.add_lora(adapted, SETTINGS)
    randomise_adapters(adapted)
    with torch.no_grad():
        base_logprobs, adapted_logprobs = batch_logprobs(base), batch_logprobs(adapted)
        with lora.adapters_disabled(adapted):
            reference = batch_logprobs(adapted)
        assert torch.equal(batch_logprobs(adapted), adapted_logprobs)  # adapters back on after the block
    torch.testing.assert_close(reference, base_logprobs, rtol=0, atol=0)
    assert float((adapted_logprobs - base_logprobs).abs().max()) > 0.1  # the adapters do change the model

    merged = dict(lora.merged_weights(adapted))
    assert all(".lora_" not in name and ".base_layer" not in name for name in merged)
    plain = small_model()
    missing, unexpected = plain.load_state_dict(merged, strict=False)
    assert (missing, unexpected) == (["lm_head.weight"], [])  # tied to the embeddings
    with torch.no_grad():
        torch.testing.assert_close(batch_logprobs(plain), adapted_logprobs, rtol=0, atol=2e-6)


def test_lora_only_on_linear_layers_with_a_clear_error():
    with pytest.raises(ValueError, match=r"not linear \(model.embed_tokens\).*model.lora.target_modules"):
        lora.add_lora(small_model(), lora.LoraSettings(target_modules=["embed_tokens", "q_proj"]))


def test_lora_is_set_by_overrides_and_its_errors_name_the_key():
    """``--set model.lora.r=8`` turns LoRA on from its defaults; ``model.lora=null`` off again."""
    config = load_train_config(None, overrides=["model.lora.r=8", 'model.lora.target_modules=["q_proj"]'])
    assert config.model.lora == lora.LoraSettings(r=8, alpha=32, target_modules=["q_proj"])
    assert load_train_config(None, overrides=["model.lora.r=8", "model.lora=null"]).model.lora is None
    with pytest.raises(ConfigError, match=r"model\.lora\.r: Input should be greater than or equal to 1"):
        load_train_config(None, overrides=["model.lora.r=0"])
    with pytest.raises(
        ConfigError, match=r"'model\.lora\.rank': model\.lora has no field 'rank'.*Known fields there: r,"
    ):
        load_train_config(None, overrides=["model.lora.rank=8"])


def lora_config(tmp_path, model_dir, name, **sections):
    return config_for(
        tmp_path,
        model_dir,
        name=name,
        model={"name_or_path": str(model_dir), "lora": {"r": 4, "alpha": 8, "save_merged": True}},
        algorithm={"preset": "grpopp", "loss": {"kl_coef": 0.05}},
        optim={"lr": 0.05},
        **sections,
    )


def test_a_lora_run_saves_adapters_and_the_merged_model_and_resumes_exactly(tmp_path, model_dir):
    base_files = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    straight = train(lora_config(tmp_path, model_dir, "straight", steps=3))
    checkpoint = straight.run_dir / "checkpoints" / "step-000003"
    assert {p.name for p in checkpoint.iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
        "merged",
        "trainer_state.pt",
        "manifest.json",
    }
    assert not (checkpoint / "model.safetensors").exists()  # the adapters only, not a copy of the base
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == base_files
    rows = [m for m in metrics(straight.run_dir) if "reward" in m]
    assert all(m["kl_mean"] >= 0 for m in rows) and rows[-1]["kl_mean"] > 0  # the adapters moved off the base

    # peft reads the adapters back; the merged folder (plain transformers) gives the same outputs.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), checkpoint)
        merged = AutoModelForCausalLM.from_pretrained(checkpoint / "merged")
        ours, _ = load_model(lora_config(tmp_path, model_dir, "x").model, str(checkpoint))
        expected = batch_logprobs(adapted)
        torch.testing.assert_close(batch_logprobs(merged), expected, rtol=0, atol=2e-6)
        torch.testing.assert_close(batch_logprobs(ours), expected, rtol=0, atol=0)
        assert float((expected - batch_logprobs(AutoModelForCausalLM.from_pretrained(model_dir))).abs().max()) > 1e-3

    stopped = train(lora_config(tmp_path, model_dir, "resumed", steps=3), stop_after=2)
    assert stopped.steps == 2
    resumed = train(None, resume=stopped.run_dir)
    assert resumed.steps == 3
    assert comparable(metrics(resumed.run_dir)) == comparable(metrics(straight.run_dir))
    again = resumed.run_dir / "checkpoints" / "step-000003" / "adapter_model.safetensors"
    assert again.read_bytes() == (checkpoint / "adapter_model.safetensors").read_bytes()


def test_eval_of_a_lora_run_equals_eval_of_its_merged_model(tmp_path, model_dir):
    run = train(lora_config(tmp_path, model_dir, "run", steps=2)).run_dir
    merged = run / "checkpoints" / "step-000002" / "merged"
    accuracy = {}
    for target in (run, merged):
        out = tmp_path / f"eval-{target.name}"
        done = subprocess.run(
            [GRPOPP, "eval", str(target), "--plugin", PLUGIN, "--env", "coin:24", "--greedy", *FLAGS, str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        results = json.loads((out / "results.json").read_text())
        accuracy[target.name] = results["checkpoints"][0]["overall"]["metrics"]["avg@1"]["value"]
        samples = (out / "samples.jsonl").read_text().splitlines()
        accuracy[target.name + "/completions"] = [json.loads(line)["completion"] for line in samples]
    assert accuracy["run"] == accuracy["merged"]
    assert accuracy["run/completions"] == accuracy["merged/completions"]
