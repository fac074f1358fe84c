"""``selected_logprobs`` and ``linear_selected_logprobs`` against the formulas in float64, computed here
from scratch: log p_y = z_y / tau - logsumexp(z / tau); d log p_y / d z = (onehot(y) - p) / tau;
entropy = logsumexp(z / tau) - sum_v p_v z_v / tau (in float64 the two entropy formulas agree); and a
model's log-probs with its output layer fused in against its own logits."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from grpopp.learner import policy as policy_module
from grpopp.learner.logprobs import linear_selected_logprobs, selected_logprobs
from grpopp.learner.policy import completion_logprobs, make_token_batch
from grpopp.recipes.tiny import TinyModelConfig, build_model, build_tokenizer


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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_the_fused_output_layer_equals_the_formulas_gradients_included(dtype, chunk):
    """``linear_selected_logprobs(h, W, y)`` = ``selected_logprobs(h W^T, y)``, with dL/dh = g W and
    dL/dW = g^T h for g the formulas' logits gradient: float64 within 1e-12, float32 within 2e-6; in
    bfloat16 the values equal the plain bf16 path's (logits rounded to bf16 by the layer in both) and
    the gradients are within one bf16 ulp of their scale."""
    generator = torch.Generator().manual_seed(11)
    hidden = torch.randn(3, 5, 16, generator=generator).to(dtype).requires_grad_(True)
    weight = (torch.randn(50, 16, generator=generator) * 0.5).to(dtype).requires_grad_(True)
    targets = torch.randint(0, 50, (3, 5), generator=generator)
    upstream = torch.randn(3, 5, generator=generator)
    logprobs, entropy = linear_selected_logprobs(hidden, weight, targets, 0.7, with_entropy=True, chunk=chunk)
    grad_hidden, grad_weight = torch.autograd.grad((logprobs * upstream.to(logprobs.dtype)).sum(), (hidden, weight))
    assert logprobs.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert grad_hidden.dtype == grad_weight.dtype == dtype
    if dtype == torch.bfloat16:  # the plain path in bf16: logits from the same layer, then selected_logprobs
        plain, plain_entropy = selected_logprobs(torch.nn.functional.linear(hidden, weight), targets, 0.7, True)
        assert torch.equal(logprobs, plain) and torch.equal(entropy, plain_entropy)
        logits = torch.nn.functional.linear(hidden.detach(), weight.detach()).double()  # rounded to bf16, as the layer
    else:
        logits = hidden.detach().double() @ weight.detach().double().T
    chosen, expected_entropy, grad_logits = reference(logits, targets, 0.7, upstream)
    expected_hidden = grad_logits @ weight.detach().double()
    expected_weight = grad_logits.reshape(-1, 50).T @ hidden.detach().double().reshape(-1, 16)
    if dtype == torch.bfloat16:  # gradients rounded to bf16: within one ulp (2^-8) of their scale
        for grad, expected in ((grad_hidden, expected_hidden), (grad_weight, expected_weight)):
            torch.testing.assert_close(grad.double(), expected, atol=2**-8 * float(expected.abs().max()), rtol=0)
        return
    tolerance = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(logprobs.double(), chosen, atol=tolerance, rtol=0)
    torch.testing.assert_close(entropy.double(), expected_entropy, atol=tolerance, rtol=0)
    torch.testing.assert_close(grad_hidden.double(), expected_hidden, atol=tolerance, rtol=0)
    torch.testing.assert_close(grad_weight.double(), expected_weight, atol=tolerance, rtol=0)


@pytest.mark.parametrize("share_prompts", [False, True])
def test_a_model_with_the_fused_output_layer_equals_its_logits_path(share_prompts, monkeypatch):
    """``completion_logprobs`` on the tiny Llama in float64, from the hidden states with the output
    layer fused in and from the model's own logits (``output_layer`` patched to None): the same
    log-probs, entropy and gradient of every parameter (the tied embeddings included) within 1e-10."""
    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        config = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
        model = build_model(build_tokenizer(), config).double()
        if not fused:
            monkeypatch.setattr(policy_module, "output_layer", lambda model: None)
        assert (policy_module.output_layer(model) is not None) == fused
        batch = make_token_batch([[5, 6, 7], [5, 6, 7], [8, 9]], [[10, 11, 12], [13], [14, 15]], 0, torch.device("cpu"))
        logprobs, entropy = completion_logprobs(model, batch, 0.8, with_entropy=True, share_prompts=share_prompts)
        (logprobs * batch.completion_mask).sum().backward()
        results.append((logprobs.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters()}))
        monkeypatch.undo()
    (fused_values, fused_entropy, fused_grads), (plain_values, plain_entropy, plain_grads) = results
    torch.testing.assert_close(fused_values, plain_values, atol=1e-10, rtol=0)
    torch.testing.assert_close(fused_entropy, plain_entropy, atol=1e-10, rtol=0)
    assert fused_grads.keys() == plain_grads.keys()
    for name, grad in fused_grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-10, rtol=1e-9, msg=name)


@pytest.mark.parametrize("fused", [True, False])
def test_a_packed_pass_equals_the_padded_pass(fused, monkeypatch):
    """``completion_logprobs(packed=True)``: the rows' real tokens end to end in one row, position ids
    restarting per row and no attention mask (transformers keeps attention within each row), against
    the padded [B, P + T] pass on the tiny Llama in float64 (sdpa): log-probs, entropy and every
    parameter's gradient within 1e-10, with the output layer fused in and from the logits."""
    torch.manual_seed(0)
    config = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model = build_model(build_tokenizer(), config).double()
    if not fused:
        monkeypatch.setattr(policy_module, "output_layer", lambda model: None)
    prompts, completions = [[5, 6, 7], [5, 6, 7], [8, 9], [4]], [[10, 11, 12], [13], [14, 15], [16, 17, 18, 19]]
    batch = make_token_batch(prompts, completions, 0, torch.device("cpu"))
    results = []
    for packed in (False, True):
        model.zero_grad()
        logprobs, entropy = completion_logprobs(model, batch, 0.8, True, share_prompts=False, packed=packed)
        (logprobs * batch.completion_mask).sum().backward()
        mask = batch.completion_mask.bool()
        results.append(
            (logprobs.detach()[mask], entropy[mask], {n: p.grad.clone() for n, p in model.named_parameters()})
        )
    (values, entropy, grads), (packed_values, packed_entropy, packed_grads) = results
    torch.testing.assert_close(packed_values, values, atol=1e-10, rtol=0)
    torch.testing.assert_close(packed_entropy, entropy, atol=1e-10, rtol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-10, rtol=1e-9, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None,
    reason="needs a CUDA GPU with flash-attn (packed sequences run through its varlen kernel)",
)
def test_a_packed_pass_with_flash_attention_equals_the_padded_pass():
    """On a GPU with flash-attention 2 (varlen kernel for the packed row, its padded kernel for the
    padded pass), in bfloat16: masked log-probs within 2e-2 (bf16 rounding)."""
    torch.manual_seed(0)
    config = TinyModelConfig(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256)
    model = build_model(build_tokenizer(), config).to("cuda", torch.bfloat16)
    model.set_attn_implementation("flash_attention_2")
    prompts, completions = [[5, 6, 7], [5, 6, 7], [8, 9], [4]], [[10, 11, 12], [13], [14, 15], [16, 17, 18, 19]]
    batch = make_token_batch(prompts, completions, 0, torch.device("cuda"))
    mask = batch.completion_mask.bool()
    with torch.no_grad():
        padded, _ = completion_logprobs(model, batch, 1.0, share_prompts=False)
        packed, _ = completion_logprobs(model, batch, 1.0, share_prompts=False, packed=True)
    torch.testing.assert_close(packed[mask], padded[mask], atol=2e-2, rtol=0)
