"""``selected_logprobs`` against the formulas in float64, computed here from scratch:
log p_y = z_y / tau - logsumexp(z / tau); d log p_y / d z = (onehot(y) - p) / tau;
entropy = logsumexp(z / tau) - sum_v p_v z_v / tau (in float64 the two entropy formulas agree)."""

from __future__ import annotations

import pytest
import torch

from grpopp.learner.logprobs import selected_logprobs


def reference(logits: torch.Tensor, targets: torch.Tensor, tau: float, upstream: torch.Tensor):
    """(log-probs, entropy, gradient of sum(upstream * log-probs) w.r.t. the logits), in float64."""
    z = logits.double() / tau  # [B, T, V]
    lse = torch.logsumexp(z, dim=-1)  # [B, T]
    p = torch.exp(z - lse.unsqueeze(-1))
    chosen = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    entropy = lse - (p * z).sum(-1)
    onehot = torch.nn.functional.one_hot(targets, logits.shape[-1]).double()
    grad = (onehot - p) / tau * upstream.double().unsqueeze(-1)
    return chosen, entropy, grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tau", [1.0, 0.6])
@pytest.mark.parametrize("chunk", [1, 4, 1000])  # one position per chunk, uneven chunks, one chunk
def test_values_entropy_and_gradient_equal_the_formulas(dtype, tau, chunk):
    generator = torch.Generator().manual_seed(7)
    logits = (torch.randn(3, 5, 50, generator=generator) * 4).to(dtype).requires_grad_(True)
    targets = torch.randint(0, 50, (3, 5), generator=generator)
    upstream = torch.randn(3, 5, generator=generator)
    logprobs, entropy = selected_logprobs(logits, targets, tau, with_entropy=True, chunk=chunk)
    (logprobs * upstream).sum().backward()
    chosen, expected_entropy, expected_grad = reference(logits.detach(), targets, tau, upstream)
    assert logprobs.dtype == torch.float32 and logits.grad.dtype == dtype
    torch.testing.assert_close(logprobs.double(), chosen, atol=2e-6, rtol=0)
    torch.testing.assert_close(entropy.double(), expected_entropy, atol=1e-5, rtol=0)
    if dtype == torch.float32:
        torch.testing.assert_close(logits.grad.double(), expected_grad, atol=1e-6, rtol=1e-6)
    else:  # the gradient is stored in bfloat16: within one unit in its last place (2^-7 relative)
        torch.testing.assert_close(logits.grad.double(), expected_grad, atol=1e-6, rtol=2**-7)


def test_equal_to_the_plain_autograd_computation():
    """The same values and gradient as log_softmax + gather through autograd (what it replaces)."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 9, 31, generator=generator, requires_grad=True)
    targets = torch.randint(0, 31, (2, 9), generator=generator)
    upstream = torch.randn(2, 9, generator=generator)
    chunked, _ = selected_logprobs(logits, targets, 0.8, chunk=5)
    (chunked * upstream).sum().backward()
    grad, logits.grad = logits.grad, None
    plain = torch.log_softmax(logits / 0.8, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    (plain * upstream).sum().backward()
    torch.testing.assert_close(chunked, plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad, logits.grad, atol=2e-7, rtol=0)
