"""Property tests of policy_loss over random shapes, masks and configs (hypothesis).

The reference below is a second, independent implementation written token by token from the
formulas in the papers grpopp.objective.losses cites, with Python loops and scalar autograd:
policy_loss (vectorised) must
agree with it in value and gradient on every config, also with padding anywhere and rows that
are entirely masked.
"""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpopp.objective.losses import LossConfig, policy_loss

DT = torch.float64


def reference_loss(logp, old, adv, mask, cfg, sampler, ref, num_items=None):
    """Naive per-token GRPO++ loss; logp is a [B, T] leaf, everything else plain data."""
    batch, length = logp.shape
    lp = logp.detach().tolist()
    objective, aggregation, tis = cfg.objective.type, cfg.aggregation.type, cfg.tis.type
    lo, hi = 1 - cfg.objective.eps_low, 1 + cfg.objective.eps_high
    dual_clip = getattr(cfg.objective, "dual_clip", None)
    pg_total, kl_total, n_tokens, n_seqs = 0.0, 0.0, 0, 0
    for i in range(batch):
        tokens = [t for t in range(length) if mask[i][t] == 1]
        if not tokens:
            continue
        n_seqs += 1
        n_tokens += len(tokens)
        a = float(adv[i])
        seq_log_ratio = sum(lp[i][t] - float(old[i][t]) for t in tokens) / len(tokens)
        seq_log_w = sum(float(old[i][t]) - float(sampler[i][t]) for t in tokens)
        pg_seq, kl_seq = 0.0, 0.0
        for t in tokens:
            if objective == "cispo":
                w = min(max(math.exp(lp[i][t] - float(old[i][t])), lo), hi)
                loss = -w * a * logp[i, t]
            else:
                if objective == "ppo_clip":
                    r = torch.exp(logp[i, t] - float(old[i][t]))
                else:  # gspo-token: value s_i, gradient s_i * d log pi
                    r = math.exp(seq_log_ratio) * torch.exp(logp[i, t] - lp[i][t])
                unclipped, clipped = -a * r, -a * torch.clamp(r, lo, hi)
                loss = unclipped if unclipped.item() >= clipped.item() else clipped
                if dual_clip is not None and a < 0 and loss.item() > -a * dual_clip:
                    loss = loss * 0 + (-a * dual_clip)
            if tis != "off":
                log_w = seq_log_w if tis.startswith("sequence") else float(old[i][t]) - float(sampler[i][t])
                w = math.exp(log_w)
                if tis.endswith("truncate"):
                    w = min(w, cfg.tis.cap)
                elif w > cfg.tis.cap:
                    w = 0.0
                loss = loss * w
            d = float(ref[i][t]) - logp[i, t]
            kl = {"k1": -d, "k2": 0.5 * d * d, "k3": torch.exp(d) - d - 1}[cfg.kl_estimator]
            pg_seq = pg_seq + loss
            kl_seq = kl_seq + kl
        per_seq_divisor = len(tokens) if aggregation == "seq_mean_token_mean" else 1
        pg_total = pg_total + pg_seq / per_seq_divisor
        kl_total = kl_total + kl_seq / per_seq_divisor
    if num_items is None:
        num_items = n_tokens if aggregation == "token_mean" else n_seqs
    denominator = max(num_items, 1) * (cfg.aggregation.norm_length if aggregation == "constant_norm" else 1)
    return (pg_total + cfg.kl_coef * kl_total) / denominator


@st.composite
def loss_configs(draw):
    objective = draw(st.sampled_from(["ppo_clip", "gspo", "cispo"]))
    aggregation = draw(st.sampled_from(["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant_norm"]))
    clip = {"eps_low": draw(st.sampled_from([0.1, 0.2, 1.0])), "eps_high": draw(st.sampled_from([0.1, 0.28, 4.0]))}
    if objective != "cispo":
        clip["dual_clip"] = draw(st.sampled_from([None, 1.5, 3.0]))
    lengths = {"norm_length": draw(st.integers(1, 16))} if aggregation == "constant_norm" else {}
    tis = draw(st.sampled_from(["off", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]))
    cap = {} if tis == "off" else {"cap": draw(st.sampled_from([1.0, 1.5, 2.0]))}
    return LossConfig(
        objective={"type": objective, **clip},
        aggregation={"type": aggregation, **lengths},
        kl_coef=draw(st.sampled_from([0.0, 0.05])),
        kl_estimator=draw(st.sampled_from(["k1", "k2", "k3"])),
        tis={"type": tis, **cap},
    )


@st.composite
def batches(draw):
    """Random [B, T] inputs; masks with padding anywhere, including all-masked rows."""
    batch, length = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    old = torch.randn(batch, length, generator=gen, dtype=DT) - 1.5
    spread = draw(st.sampled_from([0.01, 0.3, 1.0]))
    logp = old + spread * torch.randn(batch, length, generator=gen, dtype=DT)
    sampler = old + spread * torch.randn(batch, length, generator=gen, dtype=DT)
    ref = old + 0.2 * torch.randn(batch, length, generator=gen, dtype=DT)
    mask = (torch.rand(batch, length, generator=gen) < draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))).to(DT)
    adv = torch.randn(batch, generator=gen, dtype=DT)
    return logp, old, sampler, ref, mask, adv


@settings(max_examples=150, deadline=None)
@given(cfg=loss_configs(), data=batches())
def test_matches_naive_reference_in_value_and_gradient(cfg, data):
    logp, old, sampler, ref, mask, adv = data
    leaf = logp.clone().requires_grad_(True)
    out = policy_loss(leaf, old, adv, mask, cfg, sampler_logprobs=sampler, ref_logprobs=ref)
    (grad,) = torch.autograd.grad(out.loss, leaf)

    ref_leaf = logp.clone().requires_grad_(True)
    expected = reference_loss(ref_leaf, old.tolist(), adv.tolist(), mask.tolist(), cfg, sampler.tolist(), ref.tolist())
    if isinstance(expected, torch.Tensor) and expected.requires_grad:
        (expected_grad,) = torch.autograd.grad(expected, ref_leaf)
    else:  # no completion token at all: the loss is the constant 0
        expected_grad = torch.zeros_like(logp)
    assert math.isfinite(out.loss.item())
    assert abs(out.loss.item() - float(expected.detach() if isinstance(expected, torch.Tensor) else expected)) < 1e-9
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(
    cfg=loss_configs(),
    data=batches(),
    garbage=st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e30]),
)
def test_padding_values_are_never_read(cfg, data, garbage):
    logp, old, sampler, ref, mask, adv = data
    padding = mask == 0
    results = []
    for fill in (None, garbage):
        tensors = [t.clone() for t in (logp, old, sampler, ref)]
        if fill is not None:
            for t in tensors:
                t[padding] = fill
        leaf = tensors[0].requires_grad_(True)
        out = policy_loss(leaf, tensors[1], adv, mask, cfg, sampler_logprobs=tensors[2], ref_logprobs=tensors[3])
        (grad,) = torch.autograd.grad(out.loss, leaf)
        results.append((out.loss.detach(), grad))
    (clean_loss, clean_grad), (dirty_loss, dirty_grad) = results
    assert torch.equal(clean_loss, dirty_loss)
    assert torch.equal(clean_grad, dirty_grad)
    assert torch.equal(dirty_grad[padding], torch.zeros_like(dirty_grad[padding]))


@settings(max_examples=100, deadline=None)
@given(cfg=loss_configs(), data=batches(), cut=st.integers(0, 5))
def test_any_micro_batch_split_sums_to_the_full_gradient(cfg, data, cut):
    logp, old, sampler, ref, mask, adv = data
    cut = min(cut, logp.shape[0])
    num_items = float(mask.sum() if cfg.aggregation.type == "token_mean" else (mask.sum(1) > 0).sum())
    num_items = max(num_items, 1.0)
    leaf = logp.clone().requires_grad_(True)
    full = policy_loss(leaf, old, adv, mask, cfg, sampler_logprobs=sampler, ref_logprobs=ref, num_items=num_items)
    (full_grad,) = torch.autograd.grad(full.loss, leaf)
    leaf = logp.clone().requires_grad_(True)
    total = torch.zeros((), dtype=DT)
    for rows in (slice(0, cut), slice(cut, None)):
        if leaf[rows].shape[0] == 0:
            continue
        total = (
            total
            + policy_loss(
                leaf[rows],
                old[rows],
                adv[rows],
                mask[rows],
                cfg,
                sampler_logprobs=sampler[rows],
                ref_logprobs=ref[rows],
                num_items=num_items,
            ).loss
        )
    (split_grad,) = torch.autograd.grad(total, leaf, allow_unused=True)
    torch.testing.assert_close(total, full.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(split_grad, full_grad, rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(cfg=loss_configs(), data=batches())
def test_metrics_are_finite_fractions(cfg, data):
    logp, old, sampler, ref, mask, adv = data
    out = policy_loss(logp, old, adv, mask, cfg, sampler_logprobs=sampler, ref_logprobs=ref)
    for key in ("clip_frac_low", "clip_frac_high"):
        assert 0.0 <= out.metrics[key] <= 1.0
    assert out.metrics["num_tokens"] == mask.sum().item()
    if mask.sum() > 0:
        slack = 1e-12  # the mean of equal float64 values may differ from them in the last bit
        assert out.metrics["ratio_min"] - slack <= out.metrics["ratio_mean"] <= out.metrics["ratio_max"] + slack
