"""Per-token log-probs and entropy of chosen tokens without a float32 copy of the whole [B, T, V] logits.

The plain computation, ``log_softmax(logits.float() / tau).gather(targets)``, holds three tensors of
the logits' full size: the float32 copy, the log-softmax (kept for the backward pass) and, for the
entropy, its exponential. With Qwen2.5's 151,936-token vocabulary a batch of 64 x 512 tokens makes
each of them 20 GB in float32. ``selected_logprobs`` computes the same values a chunk of positions
at a time, and its backward pass recomputes each chunk's softmax instead of keeping it, so beyond
the logits themselves (in the model's dtype) and their gradient it holds one chunk in float32.
(TRL's ``selective_log_softmax`` avoids the log-softmax copy only.)

``linear_selected_logprobs`` goes further, as Liger's fused linear cross-entropy does: it takes the
model's final hidden states [N, H] and its output layer W [V, H] and forms the logits one chunk of
positions at a time, in the forward pass and again in the backward pass, so no [N, V] tensor (nor its
gradient) exists beyond one chunk. Its backward pass gives dL/dh = g W and dL/dW = g^T h per chunk,
with g = (onehot(y) - p) / tau x upstream, the logits' gradient of the plain computation.

For one position with logits z, temperature tau, chosen token y and p = softmax(z / tau):

    log p_y = z_y / tau - logsumexp(z / tau)
    d log p_y / d z = (onehot(y) - p) / tau
    entropy = -sum_v p_v log p_v
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK_ELEMENTS = 2**23
"""Float32 values of one chunk (32 MiB): its positions are CHUNK_ELEMENTS // V, at least one
(55 for Qwen2.5's vocabulary; every position at once for a small vocabulary). A chunk and its few
temporaries are on top of the micro-batch's activations at their peak (the end of the forward pass,
the start of the backward pass); 55 positions still keep the output layer's matrix products
efficient."""


def chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(vocab, 1))


def compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """float32, or float64 for float64 logits (never below float32)."""
    return torch.promote_types(logits.dtype, torch.float32)


def _chunk_values(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log p of ``targets``, entropy or None) for a chunk: logits [N, V], targets [N]."""
    scaled = logits.to(compute_dtype(logits), copy=True).div_(temperature)  # [N, V]: one copy, scaled in place
    normaliser = torch.logsumexp(scaled, dim=-1)  # [N]
    chosen = scaled.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - normaliser  # [N]
    entropy = None
    if with_entropy:
        log_probs = scaled.sub_(normaliser.unsqueeze(-1))  # [N, V], in place of the copy
        entropy = -log_probs.exp().mul_(log_probs).sum(dim=-1)  # [N]; no cancellation when peaked
    return chosen, entropy


def _logits_gradient(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, upstream: torch.Tensor
) -> torch.Tensor:
    """(onehot(y) - softmax(z / tau)) / tau x upstream [n, V], computed in place in ``logits`` (a chunk's
    logits z in the compute dtype, owned by the caller), which it returns."""
    probs = logits.div_(temperature)
    probs.sub_(torch.logsumexp(probs, dim=-1, keepdim=True)).exp_().neg_()  # -p
    ones = torch.ones_like(targets, dtype=probs.dtype).unsqueeze(-1)  # [n, 1]
    probs.scatter_add_(-1, targets.unsqueeze(-1), ones)  # onehot(y) - p
    return probs.mul_((upstream / temperature).unsqueeze(-1))


class _SelectedLogprobs(torch.autograd.Function):
    """log p(targets) from logits, chunk by chunk; backward recomputes each chunk's softmax."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor, temperature: float, chunk: int) -> torch.Tensor:
        flat, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)  # [N, V], [N]
        out = torch.empty(flat.shape[0], dtype=compute_dtype(logits), device=logits.device)  # [N]
        for start in range(0, flat.shape[0], chunk):
            out[start : start + chunk], _ = _chunk_values(
                flat[start : start + chunk], flat_targets[start : start + chunk], temperature, False
            )
        ctx.save_for_backward(logits, targets)
        ctx.temperature, ctx.chunk = temperature, chunk
        return out.reshape(targets.shape)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        logits, targets = ctx.saved_tensors
        temperature, chunk = ctx.temperature, ctx.chunk
        flat, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)  # [N, V], [N]
        flat_grad = grad_out.reshape(-1).to(compute_dtype(logits))  # [N]
        grad = torch.empty_like(flat)  # [N, V] in the logits' dtype
        for start in range(0, flat.shape[0], chunk):
            part = slice(start, start + chunk)
            chunk_logits = flat[part].to(compute_dtype(logits), copy=True)  # [n, V]: a copy, changed in place
            grad[part] = _logits_gradient(chunk_logits, flat_targets[part], temperature, flat_grad[part])
        return grad.reshape(logits.shape), None, None, None


def selected_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs [B, T] of ``targets`` [B, T] under softmax(``logits`` [B, T, V] / temperature), in
    float32 (float64 for float64 logits) and differentiable; the entropy [B, T], detached, when
    ``with_entropy``). Equal to the plain computation (module docstring) up to float rounding, gradient
    included. ``chunk``: positions per chunk (default ``chunk_rows(V)``)."""
    chunk = chunk or chunk_rows(logits.shape[-1])
    logprobs: torch.Tensor = _SelectedLogprobs.apply(logits, targets, temperature, chunk)  # type: ignore[no-untyped-call]
    entropy = None
    if with_entropy:
        with torch.no_grad():
            flat, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
            parts = [
                _chunk_values(flat[s : s + chunk], flat_targets[s : s + chunk], temperature, True)[1]
                for s in range(0, flat.shape[0], chunk)
            ]
            entropy = torch.cat([p for p in parts if p is not None]).reshape(targets.shape)
    return logprobs, entropy


class _LinearSelectedLogprobs(torch.autograd.Function):
    """log p(targets) and the entropy from hidden states and the output layer, a chunk of positions at a
    time; the logits exist one chunk at a time, in the forward pass and again in the backward pass."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        temperature: float,
        chunk: int,
        with_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = compute_dtype(weight)
        logprobs = torch.empty(hidden.shape[0], dtype=dtype, device=hidden.device)  # [N]
        entropy = torch.empty(hidden.shape[0] if with_entropy else 0, dtype=dtype, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            part = slice(start, start + chunk)
            logits = torch.nn.functional.linear(hidden[part], weight)  # [n, V] in the model's dtype, as lm_head
            logprobs[part], chunk_entropy = _chunk_values(logits, targets[part], temperature, with_entropy)
            if chunk_entropy is not None:
                entropy[part] = chunk_entropy
        ctx.save_for_backward(hidden, weight, targets)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(
        ctx: Any, grad_out: torch.Tensor, _grad_entropy: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None, None]:
        hidden, weight, targets = ctx.saved_tensors
        temperature, chunk = ctx.temperature, ctx.chunk
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype = compute_dtype(weight)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None  # [N, H]
        grad_weight = torch.zeros_like(weight, dtype=dtype) if need_weight else None  # [V, H]
        upstream = grad_out.to(dtype)  # [N]
        for start in range(0, hidden.shape[0], chunk):
            part = slice(start, start + chunk)
            chunk_logits = torch.nn.functional.linear(hidden[part], weight).to(dtype)  # [n, V], fresh
            grad_logits = _logits_gradient(chunk_logits, targets[part], temperature, upstream[part])  # [n, V]
            if grad_hidden is not None:
                grad_hidden[part] = grad_logits.to(weight.dtype) @ weight  # [n, H]
            if grad_weight is not None:  # accumulated in place: no [V, H] temporary per chunk
                grad_weight.addmm_(grad_logits.t(), hidden[part].to(dtype))
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None, None


def linear_selected_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``selected_logprobs`` of the logits ``hidden`` [B, T, H] @ ``weight`` [V, H]^T (a bias-free output
    layer), without forming them beyond one chunk of positions (module docstring). Log-probs [B, T]
    differentiable in ``hidden`` and ``weight``; entropy [B, T] (detached) when ``with_entropy``."""
    chunk = chunk or chunk_rows(weight.shape[0])
    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    logprobs, entropy = _LinearSelectedLogprobs.apply(  # type: ignore[no-untyped-call]
        flat_hidden, weight, flat_targets, temperature, chunk, with_entropy
    )
    return logprobs.reshape(targets.shape), entropy.reshape(targets.shape) if with_entropy else None
