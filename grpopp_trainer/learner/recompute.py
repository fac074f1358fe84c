"""Activation checkpointing of the decoder layers: full (under LoRA its MLP recomputed in sequence
tiles), or selective (PyTorch's op-level policy).

``full`` keeps each decoder layer's input only and reruns the whole layer in the backward pass
(transformers' activation checkpointing, non-reentrant ``torch.utils.checkpoint``). In the layers of
Llama, Mistral, Qwen2 and Qwen3 whose MLP weights are frozen (LoRA; ``tiles_of``) the rerun MLP goes
a tile of tokens at a time (``TiledLayer``, after ALST's tiled MLP, Bekman et al. 2025, arXiv
2506.13996, section 3.2): a layer's backward pass
then holds the MLP's [tokens, intermediate] activations and their gradients for one tile, not the
whole micro-batch, with the matrix products of untiled checkpointing: neither computes the MLP's
output product in the rerun, whose values nothing in the layer's backward pass reads (torch's
checkpoint stops before it; the tiles backpropagate through it without computing it,
``OutputFreeLinear``). The gradient is the same (tested in float64).

``selective`` is the same checkpoint with a policy (``torch.utils.checkpoint``'s
``create_selective_checkpoint_contexts``, as torchtitan's op-level selective AC): the outputs of the
matrix products and of the attention kernel are kept from the forward pass, and only the cheap
element-wise work between them (the RMS norms, rotary embeddings, SiLU x up, residual adds) is redone
in the backward pass. What a layer holds is then its input and those outputs, without the norms' and
the MLP's element-wise intermediates, and no matrix product is rerun (full checkpointing reruns
nearly every one). Measured against full checkpointing and TRL on a Qwen2.5-0.5B-shaped model
(``benchmarks/bench_learner.py``): the README's "Activation memory".
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import transformers
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
    get_device_states,
    set_device_states,
)
from transformers import PreTrainedModel

Checkpointing = Literal["full", "selective"]

_aten = torch.ops.aten
SAVED_OPS = frozenset(
    op
    for op in (
        _aten.mm.default,
        _aten.addmm.default,
        _aten.bmm.default,
        _aten.baddbmm.default,
        _aten._scaled_dot_product_flash_attention_for_cpu.default,
        _aten._scaled_dot_product_flash_attention.default,
        _aten._scaled_dot_product_efficient_attention.default,
        _aten._scaled_dot_product_cudnn_attention.default,
        _aten._flash_attention_forward.default,
    )
)
"""Ops whose outputs the selective policy keeps: matrix products and attention kernels (those the
attention implementations of transformers call: sdpa's per-device kernels, the math path's bmm)."""


PRODUCTS = frozenset((_aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default))
MIN_INNER = 128
"""A matrix product's output is kept only if each of its values took at least this many multiply-adds:
the model's own projections (inner dimension = its hidden or MLP size), not LoRA's B products (inner
dimension = the rank), whose outputs are as large as the layer's own and cheap to redo."""


def _policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    if op in PRODUCTS and args[-1].shape[-2] < MIN_INNER:  # (add)mm's last operand is [K, M]: K is inner
        return CheckpointPolicy.PREFER_RECOMPUTE
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def enable_checkpointing(model: PreTrainedModel, mode: Checkpointing) -> None:
    """Turn on activation checkpointing of ``model``'s decoder layers, ``full`` or ``selective``."""
    kwargs: dict[str, Any] = {"use_reentrant": False}
    if mode == "selective":
        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _policy)
    # transformers 5 renamed it activation checkpointing; older releases only have the old name.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if mode == "full" and _LAYERS_RETURN_TENSORS:
        for layer in model.modules():
            if type(layer).__name__ in TILED_LAYERS and getattr(layer, "gradient_checkpointing", False):
                # What transformers' GradientCheckpointingLayer calls as func(partial(forward, **kwargs), *args).
                layer._gradient_checkpointing_func = functools.partial(checkpoint_tiled, layer)  # type: ignore[assignment]


TILED_LAYERS = frozenset(("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer"))
"""Decoder layers that end in ``h + mlp(post_attention_layernorm(h))`` with a token-wise MLP from hidden
size to hidden size: the MLP's output goes into the residual sum alone, whose backward pass reads no
values, so the rerun leaves the MLP's values out (``TiledMLP``). Other layers are checkpointed untiled
(a Gemma 2 layer, say, normalises the MLP's output before the sum: its backward pass reads it)."""

_LAYERS_RETURN_TENSORS = int(transformers.__version__.split(".")[0]) >= 5
"""transformers 5's decoder layers return the hidden states alone (4's return a tuple)."""


def checkpoint_tiled(layer: torch.nn.Module, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``, ``layer``'s forward pass, checkpointed with its MLP rerun in tiles
    (``TiledLayer``); untiled (torch's non-reentrant checkpoint) where the rerun's backward pass would
    reach past the layer: a second positional input, or a keyword input that carries a gradient."""
    keywords = getattr(function, "keywords", {})
    if len(args) != 1 or any(map(_carries_gradient, keywords.values())):
        return checkpoint(function, *args, use_reentrant=False)
    trainable = [parameter for parameter in layer.parameters() if parameter.requires_grad]
    return TiledLayer.apply(layer, function, args[0], *trainable)  # type: ignore[no-untyped-call]


def _carries_gradient(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return any(map(_carries_gradient, value))
    return isinstance(value, torch.Tensor) and value.requires_grad


class TiledLayer(torch.autograd.Function):
    """A decoder layer checkpointed as reentrant checkpointing does it, with its MLP in tiles.

    Forward: the layer under no_grad, its MLP a tile of tokens at a time (``tiled_values``); only the
    input is kept (and the random number generators' states, for dropout). Backward: the layer is rerun
    from its input with the MLP replaced by ``TiledMLP`` (values left out, the gradient taken a tile at a
    time), then backpropagated from ``grad_output``; the parameters' gradients accumulate in their
    ``.grad`` inside that inner backward pass (as under reentrant checkpointing, so the outer pass must be
    ``.backward()``, not ``torch.autograd.grad``). The trainable parameters are inputs of the function
    only so that its output carries a gradient when the hidden states do not (LoRA's frozen embeddings).

    Under FSDP2 the layer's parameters are gathered around this function in both passes: transformers
    checkpoints the layer's ``forward``, inside the module hooks that gather them.
    """

    @staticmethod
    def forward(
        ctx: Any, layer: torch.nn.Module, function: Callable[..., Any], hidden: torch.Tensor, *trainable: Any
    ) -> Any:
        ctx.layer, ctx.function, ctx.trainable = layer, function, len(trainable)
        ctx.rng = RngState.capture(hidden)
        ctx.save_for_backward(hidden)
        with _forward_replaced(layer.get_submodule("mlp"), tiled_values):
            return function(hidden)  # [B, T, H]

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # [B, T, H]
        (hidden,) = ctx.saved_tensors
        leaf = hidden.detach().requires_grad_(hidden.requires_grad)
        with ctx.rng.restored(), torch.enable_grad():
            with _forward_replaced(ctx.layer.get_submodule("mlp"), TiledMLP.wrap):
                output = ctx.function(leaf)  # its values are wrong (the MLP's left out), its graph is right
            # Still under the restored generators: the tiles draw their dropout masks where the forward
            # pass's tiles did, after the attention's (TiledMLP's forward pass draws none).
            torch.autograd.backward(output, grad_output)
        return (None, None, leaf.grad, *(None,) * ctx.trainable)


class TiledMLP(torch.autograd.Function):
    """``mlp(x)`` for the rerun: the forward pass computes nothing (the output's values are never read:
    see ``TILED_LAYERS``); the backward pass reruns the MLP a tile of tokens at a time, backpropagating
    each tile's share of the incoming gradient before the next tile starts."""

    @staticmethod
    def wrap(mlp: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Any:
        trainable = [parameter for parameter in mlp.parameters() if parameter.requires_grad]
        return TiledMLP.apply(mlp, forward, x, *trainable)  # type: ignore[no-untyped-call]

    @staticmethod
    def forward(
        ctx: Any,
        mlp: torch.nn.Module,
        forward: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        *trainable: Any,
    ) -> Any:
        ctx.mlp, ctx.forward, ctx.trainable = mlp, forward, len(trainable)
        ctx.save_for_backward(x)
        return x.new_zeros(()).expand(x.shape)  # [B, T, H], one stored value

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # [B, T, H]
        (x,) = ctx.saved_tensors
        flat, flat_grad = x.detach().reshape(-1, x.shape[-1]), grad.reshape(-1, x.shape[-1])  # [B*T, H]
        grad_x = torch.empty_like(flat) if x.requires_grad else None
        start = 0
        tiles = tiles_of(ctx.mlp)
        with torch.enable_grad(), _output_product_skipped(ctx.mlp):
            for part, part_grad in zip(flat.chunk(tiles), flat_grad.chunk(tiles), strict=True):
                part = part.detach().requires_grad_(x.requires_grad)  # [tile, H]
                torch.autograd.backward(ctx.forward(part), part_grad)
                if grad_x is not None:
                    grad_x[start : start + len(part)] = part.grad
                start += len(part)
        return (None, None, None if grad_x is None else grad_x.reshape(x.shape), *(None,) * ctx.trainable)


class OutputFreeLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` whose output nobody reads (the MLP's output product in the tiles, only
    backpropagated from): the forward pass computes nothing, the backward pass is the linear layer's,
    dL/dx = g W, dL/dW = gᵀ x, dL/db = Σ g. Untiled checkpointing skips that product the same way (torch's
    non-reentrant checkpoint stops before it: nothing the backward pass needs comes after it)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x if weight.requires_grad else None, weight)
        return x.new_zeros(()).expand(*x.shape[:-1], weight.shape[0])  # [tile, H], one stored value

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # [tile, H]
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        grad_x = grad @ weight if needs_x else None  # [tile, I]
        grad_weight = grad.reshape(-1, grad.shape[-1]).T @ x.reshape(-1, x.shape[-1]) if needs_weight else None
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if needs_bias else None  # [H]
        return grad_x, grad_weight, grad_bias


@contextlib.contextmanager
def _output_product_skipped(mlp: torch.nn.Module) -> Iterator[None]:
    """Inside: the MLP's output product (``down_proj``, or its base layer under LoRA: a plain
    ``nn.Linear``) is an ``OutputFreeLinear``; any other kind of layer runs as it is."""
    down = mlp.get_submodule("down_proj")
    linear = getattr(down, "base_layer", down)  # peft's LoRA layer adds its adapters to its base layer's output
    if type(linear) is not torch.nn.Linear:
        yield
        return
    with _forward_replaced(linear, _output_free):
        yield


def _output_free(linear: torch.nn.Module, forward: Callable[..., Any], x: torch.Tensor) -> torch.Tensor:
    return OutputFreeLinear.apply(x, linear.weight, linear.bias)  # type: ignore[no-untyped-call,no-any-return]


def tiles_of(mlp: torch.nn.Module) -> int:
    """How many tiles a layer's MLP goes in: intermediate / hidden size, rounded up (ALST's rule), so a
    tile's [tile, intermediate] activations are about the size of the layer's [tokens, hidden] ones.

    One (the MLP rerun whole) where the MLP's own [intermediate, hidden] weights train: each tile would
    then form and add up a gradient of each whole weight. Measured (``benchmarks/bench_learner.py``,
    Qwen2.5-0.5B shape, against untiled checkpointing): in full fine-tuning six tiles took 1.04x the
    update's time (medians; 1.10x in one round) and 6 MiB off its peak, which lies elsewhere (the output
    layer's gradient); under LoRA, whose base weights are frozen, 60 MiB off it at 0.95x the time."""
    intermediate: int = mlp.intermediate_size  # type: ignore[assignment]  # attributes of TILED_LAYERS' MLPs
    hidden: int = mlp.hidden_size  # type: ignore[assignment]
    if any(p.requires_grad and p.numel() == intermediate * hidden for p in mlp.parameters()):
        return 1
    return math.ceil(intermediate / hidden)


def tiled_values(
    mlp: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """``mlp(x)`` computed a tile of tokens at a time (under no_grad: the checkpointed forward pass)."""
    flat = x.reshape(-1, x.shape[-1])  # [B*T, H]
    return torch.cat([forward(part) for part in flat.chunk(tiles_of(mlp))]).reshape(x.shape)


@contextlib.contextmanager
def _forward_replaced(module: torch.nn.Module, replacement: Callable[..., Any]) -> Iterator[None]:
    """Inside: ``module(x)`` is ``replacement(module, forward, x)``, ``forward`` being what
    ``module.forward`` was."""
    forward, patched = module.forward, module.__dict__.get("forward")  # an instance's own (accelerate's hooks)
    module.forward = functools.partial(replacement, module, forward)
    try:
        yield
    finally:
        if patched is None:
            del module.forward
        else:
            module.forward = patched


@dataclasses.dataclass(frozen=True)
class RngState:
    """The random number generators' states (CPU and the tensor's device), to replay dropout in a rerun
    as torch's checkpoint does (``preserve_rng_state``)."""

    cpu: torch.Tensor
    devices: list[int]
    device_states: list[torch.Tensor]
    device_type: str | None

    @classmethod
    def capture(cls, tensor: torch.Tensor) -> RngState:
        devices, states = get_device_states(tensor)
        device_type = tensor.device.type if devices else None
        return cls(torch.get_rng_state(), devices, states, device_type)

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=self.devices, device_type=self.device_type or "cuda"):
            torch.set_rng_state(self.cpu)
            set_device_states(self.devices, self.device_states, device_type=self.device_type)
            yield
