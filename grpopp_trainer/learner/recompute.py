"""Activation checkpointing of the decoder layers: full, or selective (PyTorch's op-level policy).

``full`` keeps each decoder layer's input only and reruns the whole layer in the backward pass
(transformers' activation checkpointing, non-reentrant ``torch.utils.checkpoint``).

``selective`` is the same checkpoint with a policy (``torch.utils.checkpoint``'s
``create_selective_checkpoint_contexts``, as torchtitan's op-level selective AC): the outputs of the
matrix products and of the attention kernel are kept from the forward pass, and only the cheap
element-wise work between them (the RMS norms, rotary embeddings, SiLU x up, residual adds) is redone
in the backward pass. What a layer holds is then its input and those outputs, without the norms' and
the MLP's element-wise intermediates, and no matrix product is rerun (full checkpointing reruns every
one). Measured on a Qwen2.5-0.5B-shaped model on CPU (``benchmarks/bench_learner.py``): it takes 37%
(LoRA) and 45% (full training) of what full checkpointing takes off the peak memory, for 1.09x and
1.14x the update's time against full checkpointing's 1.31x and 1.20x.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts
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
