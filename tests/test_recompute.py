"""Selective activation checkpointing (``grpopp.learner.recompute``): the same gradient as no
checkpointing, with the matrix products of the decoder layers kept and their element-wise work redone.

Expected values by hand: a Qwen2 decoder layer runs seven linear layers (q, k, v with bias: ``addmm``;
o, gate, up, down: ``mm``; LoRA adds A and B to those it adapts) and one SiLU. Its backward pass runs
two matrix products per linear layer (input and weight gradients). Full checkpointing reruns the
forward pass too (one more product per linear layer but the last); the selective policy reruns the
SiLU but no product of inner dimension at least ``MIN_INNER``. Without checkpointing nothing is rerun.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode

from grpopp.jobs.run import load_model
from grpopp.learner.lora import LoraSettings, add_lora
from grpopp.learner.policy import completion_logprobs, make_token_batch
from grpopp.learner.recompute import enable_checkpointing
from grpopp.recipes.tiny import build_tokenizer
from grpopp.training.config import ModelConfig

LAYERS = 2
PROMPTS = [[5, 6, 7]] * 2 + [[8, 9]] * 2
COMPLETIONS = [[1, 2, 3, 4], [5], [6, 7, 8], [9, 10]]


def qwen2() -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=40,
        hidden_size=128,  # products of inner dimension 128 and 256: kept by the selective policy (MIN_INNER)
        intermediate_size=256,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.3,
        attn_implementation="sdpa",
    )
    return transformers.Qwen2ForCausalLM(config).to(torch.float64).train()


class OpCounter(TorchDispatchMode):
    """Counts the aten ops run under it, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def loss_and_backward(model: transformers.PreTrainedModel) -> OpCounter:
    """A token-level loss of the completion log-probs; the ops of its backward pass, counted."""
    batch = make_token_batch(PROMPTS, COMPLETIONS, pad_token_id=0, device=torch.device("cpu"))
    logprobs, _ = completion_logprobs(model, batch, temperature=0.7, share_prompts=False)  # as under checkpointing
    weights = torch.linspace(-1.0, 1.0, logprobs.numel(), dtype=logprobs.dtype).reshape(logprobs.shape)
    loss = (logprobs * weights * batch.completion_mask).sum()
    counter = OpCounter()
    with counter:
        loss.backward()
    return counter


def decoder_products(counter: OpCounter) -> int:
    """Matrix products of the decoder layers in a backward pass (the output layer's, fused into the
    log-probs outside the layers, are left out: they run the same in every mode)."""
    return counter.counts.get("mm", 0) + counter.counts.get("addmm", 0)


@pytest.mark.parametrize("lora", [False, True])
def test_selective_checkpointing_keeps_the_gradient_and_reruns_no_matrix_product(lora):
    models = {mode: qwen2() for mode in ("none", "full", "selective")}
    counters = {}
    for mode, model in models.items():
        if lora:
            torch.manual_seed(2)  # the same A in every model
            add_lora(model, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
            generator = torch.Generator().manual_seed(1)
            with torch.no_grad():  # B nonzero, so that the adapters change the function
                for name, parameter in model.named_parameters():
                    if "lora_B" in name:
                        parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
        if mode != "none":
            enable_checkpointing(model, mode)
        elif lora:  # as transformers' checkpointing does, so the backward passes run down to the same layer
            model.enable_input_require_grads()
        counters[mode] = loss_and_backward(model)
    gradients = {
        mode: {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
        for mode, model in models.items()
    }
    for mode in ("full", "selective"):
        assert gradients[mode].keys() == gradients["none"].keys()
        for name, grad in gradients[mode].items():
            torch.testing.assert_close(grad, gradients["none"][name], rtol=1e-12, atol=1e-14, msg=f"{mode}: {name}")
    assert max(float(g.abs().max()) for g in gradients["none"].values()) > 1e-3  # not a comparison of zeros

    base = decoder_products(counters["none"])  # the backward pass's own products, the same in every mode
    linear_layers = LAYERS * 7 + (LAYERS * 3 * 2 if lora else 0)  # LoRA adds A and B to three layers
    # The selective policy reruns no product of the model's own; with LoRA it reruns the B products (inner
    # dimension r=4 < MIN_INNER) of q_proj and v_proj (down_proj's is its layer's last: see below).
    assert decoder_products(counters["selective"]) == base + (2 * LAYERS if lora else 0)
    # Full checkpointing reruns each forward product of a layer but its last (down_proj's, or with LoRA on
    # it that of down_proj's B): nothing in the layer's backward pass needs that output, and torch's
    # non-reentrant checkpoint stops the recomputation once it has every tensor the backward pass needs.
    assert decoder_products(counters["full"]) == base + linear_layers - LAYERS
    assert counters["none"].counts.get("silu", 0) == 0
    assert counters["selective"].counts.get("silu", 0) == LAYERS  # the element-wise work is redone
    assert counters["full"].counts.get("silu", 0) == LAYERS


def test_selective_checkpointing_from_the_config(tmp_path):
    """``model.gradient_checkpointing: selective`` turns it on as load_model builds the policy."""
    folder = tmp_path / "model"
    qwen2().save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    model, _ = load_model(ModelConfig(name_or_path=str(folder), gradient_checkpointing="selective"))
    model.train()
    counter = loss_and_backward(model)
    assert counter.counts.get("silu", 0) == LAYERS
    plain = copy.deepcopy(model)
    getattr(plain, "activation_checkpointing_disable", plain.gradient_checkpointing_disable)()
    assert decoder_products(loss_and_backward(plain)) == decoder_products(counter)
