"""Per-token log-probs and entropy of chosen tokens without a float32 copy of the whole [B, T, V] logits.

The plain computation, ``log_softmax(logits.float() / tau).gather(targets)``, holds three tensors of
the logits' full size: the float32 copy, the log-softmax (kept for the backward pass) and, for the
entropy, its exponential. With Qwen2.5's 151,936-token vocabulary a batch of 64 x 512 tokens makes
each of them 20 GB in float32. ``selected_logprobs`` computes the same values a chunk of positions
at a time, and its backward pass recomputes each chunk's softmax instead of keeping it, so beyond
the logits themselves (in the model's dtype) and their gradient it holds one chunk in float32.
(TRL's ``selective_log_softmax`` avoids the log-softmax copy only; Liger's fused linear cross-entropy
goes further and never forms the logits, which needs the model's last layer inside the kernel.)

For one position with logits z, temperature tau, chosen token y and p = softmax(z / tau):

    log p_y = z_y / tau - logsumexp(z / tau)
    d log p_y / d z = (onehot(y) - p) / tau
    entropy = -sum_v p_v log p_v
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK_ELEMENTS = 2**25
"""Float32 values of one chunk (128 MiB): its positions are CHUNK_ELEMENTS // V, at least one
(220 for Qwen2.5's vocabulary; every position at once for a small vocabulary)."""


def chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(vocab, 1))


def _chunk_values(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log p of ``targets``, entropy or None) for a chunk: logits [N, V], targets [N]."""
    scaled = logits.to(torch.float32, copy=True).div_(temperature)  # [N, V]: one float32 copy, scaled in place
    normaliser = torch.logsumexp(scaled, dim=-1)  # [N]
    chosen = scaled.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - normaliser  # [N]
    entropy = None
    if with_entropy:
        log_probs = scaled - normaliser.unsqueeze(-1)  # [N, V], this chunk only
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1)  # [N]; no cancellation when peaked
    return chosen, entropy


class _SelectedLogprobs(torch.autograd.Function):
    """log p(targets) from logits, chunk by chunk; backward recomputes each chunk's softmax."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor, temperature: float, chunk: int) -> torch.Tensor:
        flat, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)  # [N, V], [N]
        out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)  # [N]
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
        flat_grad = grad_out.reshape(-1).float()  # [N]
        grad = torch.empty_like(flat)  # [N, V] in the logits' dtype
        for start in range(0, flat.shape[0], chunk):
            part = slice(start, start + chunk)
            probs = flat[part].to(torch.float32, copy=True).div_(temperature)  # [n, V]; in place: softmax,
            probs.sub_(torch.logsumexp(probs, dim=-1, keepdim=True)).exp_().neg_()  # then onehot(y) - p
            ones = torch.ones_like(flat_targets[part], dtype=probs.dtype).unsqueeze(-1)  # [n, 1]
            probs.scatter_add_(-1, flat_targets[part].unsqueeze(-1), ones)
            grad[part] = probs.mul_((flat_grad[part] / temperature).unsqueeze(-1))
        return grad.reshape(logits.shape), None, None, None


def selected_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs [B, T] of ``targets`` [B, T] under softmax(``logits`` [B, T, V] / temperature), in
    float32 and differentiable; the entropy [B, T], detached, when ``with_entropy``). Equal to the
    plain computation (module docstring) up to float rounding, gradient included. ``chunk``:
    positions per chunk (default ``chunk_rows(V)``)."""
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
