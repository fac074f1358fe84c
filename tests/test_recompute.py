"""Activation checkpointing (``grpopp.learner.recompute``): full checkpointing with the MLP rerun in
tiles, and selective checkpointing, give the same gradient as no checkpointing; selective keeps the
matrix products of the decoder layers and redoes their element-wise work; the tiles bound the MLP's
activations.

Expected values by hand: a Qwen2 decoder layer runs seven linear layers (q, k, v with bias: ``addmm``;
o, gate, up, down: ``mm``; LoRA adds A and B to those it adapts) and one SiLU. Its backward pass runs
two matrix products per linear layer whose weight trains (input and weight gradients), one per frozen
one (LoRA's base layers: the input gradient). Full checkpointing reruns the attention's products and
the MLP, in tiles under LoRA (intermediate / hidden size = 256 / 128 = 2 here; whole where the MLP's
own weights train): each tile runs the MLP's forward products and its own backward products. The
selective policy reruns the SiLU but no product of inner dimension at least ``MIN_INNER``. Without
checkpointing nothing is rerun.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode

from grpopp.jobs.run import load_model
from grpopp.learner.lora import LoraSettings, add_lora
from grpopp.learner.policy import completion_logprobs, make_token_batch
from grpopp.learner.recompute import checkpoint_tiled, enable_checkpointing
from grpopp.recipes.tiny import build_tokenizer
from grpopp.training.config import ModelConfig

LAYERS = 2
TILES = 2  # intermediate_size / hidden_size, under LoRA (the MLP's own weights frozen)
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


def with_lora(model: transformers.PreTrainedModel, settings: LoraSettings) -> None:
    """Adapters on ``model``, the same in every model: A seeded, B random (nonzero, so that the adapters
    change the function)."""
    torch.manual_seed(2)
    add_lora(model, settings)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


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
            with_lora(model, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
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
    # The selective policy reruns no product of the model's own; with LoRA it reruns the B products (inner
    # dimension r=4 < MIN_INNER) of q_proj and v_proj (down_proj's is its layer's last, and torch's
    # non-reentrant checkpoint stops the recomputation once it has every tensor the backward pass needs).
    assert decoder_products(counters["selective"]) == base + (2 * LAYERS if lora else 0)
    # Full checkpointing reruns the attention's products (q, k, v, o; LoRA's A and B of q and v), then the
    # MLP's forward products in each tile but down's own, whose output nothing reads (gate, up; LoRA's A
    # and B of down), and splits the MLP's backward products among the tiles: one more tile's worth (gate,
    # up and down: 2 each, or 1 each frozen, plus 2 for each of down's A and B).
    # Without LoRA the MLP's weights train: one tile, and the products of untiled checkpointing (every
    # forward product but the layer's last).
    tiles = TILES if lora else 1
    attention, mlp_forward, mlp_backward = (8, 4, 3 + 4) if lora else (4, 2, 6)
    per_layer = attention + tiles * mlp_forward + (tiles - 1) * mlp_backward
    assert decoder_products(counters["full"]) == base + LAYERS * per_layer
    assert counters["none"].counts.get("silu", 0) == 0
    assert counters["selective"].counts.get("silu", 0) == LAYERS  # the element-wise work is redone
    assert counters["full"].counts.get("silu", 0) == LAYERS * tiles


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


class WidestIntermediate(TorchDispatchMode):
    """The most values in one op output of the MLP's intermediate size (last dimension ``width``; the
    [hidden, intermediate] weights of down_proj and their gradients left out)."""

    def __init__(self, width: int, hidden: int = 128) -> None:
        super().__init__()
        self.width, self.hidden, self.most = width, hidden, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if not isinstance(tensor, torch.Tensor) or tensor.dim() < 2 or tensor.shape[-1] != self.width:
                continue
            if tensor.shape[:-1].numel() != self.hidden:
                self.most = max(self.most, tensor.numel())
        return out


@pytest.mark.parametrize("lora", [False, True])
def test_full_checkpointing_holds_the_mlp_activations_of_one_tile(lora):
    """Under LoRA every [tokens, intermediate] tensor of the checkpointed layers, forward and backward,
    is one tile's: half the micro-batch's tokens (rounded up) here, against all of them without
    checkpointing; where the MLP's own weights train, it runs whole."""
    batch = make_token_batch(PROMPTS, COMPLETIONS, pad_token_id=0, device=torch.device("cpu"))
    tokens = batch.input_ids.numel()  # B x T, padding included: the MLP runs on every position
    most = {}
    for mode in ("none", "full"):
        model = qwen2()
        if lora:
            with_lora(model, LoraSettings(r=4, alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"]))
        if mode == "full":
            enable_checkpointing(model, "full")
        elif lora:
            model.enable_input_require_grads()
        forward, backward = WidestIntermediate(256), WidestIntermediate(256)
        with forward:
            logprobs, _ = completion_logprobs(model, batch, temperature=1.0, share_prompts=False)
        with backward:
            (logprobs * batch.completion_mask).sum().backward()
        most[mode] = (forward.most, backward.most)
    assert most["none"] == (tokens * 256, tokens * 256)
    assert most["full"] == ((math.ceil(tokens / TILES) if lora else tokens) * 256,) * 2


def test_tiled_checkpointing_replays_the_dropout_of_the_forward_pass():
    """With LoRA dropout, the rerun tiles draw the masks the forward pass drew: the gradient equals
    that of the same model unchekpointed with its MLP run in the same two tiles (the second method:
    plain autograd through the tiled forward pass, masks drawn in the same order), and differs from
    that of an untiled pass (other masks: the check has teeth)."""
    settings = LoraSettings(r=4, alpha=8, dropout=0.3, target_modules=["q_proj", "up_proj", "down_proj"])
    gradients = {}
    for mode in ("untiled", "tiled", "checkpointed"):
        model = qwen2()
        with_lora(model, settings)
        if mode == "checkpointed":
            enable_checkpointing(model, "full")
        else:
            model.enable_input_require_grads()
        if mode == "tiled":
            for layer in model.model.layers:
                layer.mlp.forward = functools.partial(in_two_tiles, layer.mlp.forward)
        torch.manual_seed(3)  # the same dropout masks, drawn in the same order
        loss_and_backward(model)
        gradients[mode] = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert gradients["checkpointed"].keys() == gradients["tiled"].keys()
    for name, grad in gradients["checkpointed"].items():
        torch.testing.assert_close(grad, gradients["tiled"][name], rtol=1e-12, atol=1e-14, msg=name)
    assert not torch.allclose(
        gradients["untiled"]["model.layers.0.mlp.up_proj.lora_A.default.weight"],
        gradients["tiled"]["model.layers.0.mlp.up_proj.lora_A.default.weight"],
    )


def in_two_tiles(forward, x):  # type: ignore[no-untyped-def]
    """An MLP's forward pass over the [B, T, 128] hidden states ``x``, the first and second half of the
    tokens in turn."""
    return torch.cat([forward(part) for part in x.reshape(-1, 128).chunk(TILES)]).reshape(x.shape)


@pytest.mark.parametrize(
    ("model_type", "extra", "tiled"),
    [
        ("llama", {}, True),
        ("llama", {"mlp_bias": True}, True),
        ("mistral", {}, True),
        ("qwen3", {}, True),
        ("olmo2", {}, False),
    ],
)
def test_full_checkpointing_of_each_family_keeps_the_gradient(model_type, extra, tiled):
    """The layers named in ``TILED_LAYERS`` take the tiled path (here in full training: one tile, the
    MLP's output product backpropagated without being computed, biased too with Llama's ``mlp_bias``);
    OLMo 2's, which normalises the MLP's output before the residual sum (its backward pass reads those
    values), is checkpointed by torch's checkpoint. Either way every parameter's gradient is that of no
    checkpointing."""
    models = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        config = transformers.AutoConfig.for_model(
            model_type,
            vocab_size=40,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=64,
            initializer_range=0.3,
            attn_implementation="sdpa",
            **extra,
        )
        model = transformers.AutoModelForCausalLM.from_config(config).to(torch.float64).train()
        if checkpointed:
            enable_checkpointing(model, "full")
        loss_and_backward(model)
        models.append(model)
    for (name, reference), (_, parameter) in zip(
        models[0].named_parameters(), models[1].named_parameters(), strict=True
    ):
        torch.testing.assert_close(parameter.grad, reference.grad, rtol=1e-12, atol=1e-14, msg=name)
    function = models[1].model.layers[0]._gradient_checkpointing_func
    assert (isinstance(function, functools.partial) and function.func is checkpoint_tiled) == tiled
