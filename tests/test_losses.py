"""policy_loss against values derived by hand, and the gradient properties each fix promises.

The shared example (float64): two completions, the second one token shorter (padding at [1, 2]).

    ratio r = pi / pi_old       [[1.5, 0.7, 1.1], [0.5, 1.3, pad]]
    advantages A                [1.0, -2.0]

PPO clip with eps_low = 0.2, eps_high = 0.28, per token loss = max(-A r, -A clip(r, 0.8, 1.28)):
    seq 0 (A = 1):  r=1.5 -> max(-1.5, -1.28) = -1.28 (clipped high); r=0.7 -> max(-0.7, -0.8) = -0.7;
                    r=1.1 -> -1.1.                              sum -3.08, mean -3.08/3
    seq 1 (A = -2): r=0.5 -> max(1.0, 1.6) = 1.6 (clipped low); r=1.3 -> max(2.6, 2.56) = 2.6.
                                                                sum 4.2, mean 2.1
"""

import math

import pytest
import torch

from grpopp.config_tools import ConfigError, validate_config
from grpopp.objective.advantages import compute_advantages
from grpopp.objective.losses import GSPO, ConstantNorm, LossConfig, NoTIS, PPOClip, SequenceMask, TokenMean, policy_loss

TOL = {"rtol": 0, "atol": 1e-6}
DT = torch.float64
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.3, -9.0]], dtype=DT)
RATIO = [[1.5, 0.7, 1.1], [0.5, 1.3, 1.0]]
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=DT)
ADV = torch.tensor([1.0, -2.0], dtype=DT)


def new_logprobs(ratio=RATIO, old=OLD):
    """logprobs = old + log(ratio), a leaf that records gradients."""
    return (old + torch.log(torch.tensor(ratio, dtype=DT))).requires_grad_(True)


def run(cfg, ratio=RATIO, adv=ADV, mask=MASK, **kwargs):
    logprobs = new_logprobs(ratio)
    out = policy_loss(logprobs, OLD, adv, mask, cfg, **kwargs)
    out.loss.backward()
    return out, logprobs.grad


def close(actual, expected):
    actual = actual.detach() if isinstance(actual, torch.Tensor) else actual
    assert math.isclose(float(actual), expected, rel_tol=0, abs_tol=1e-6), (float(actual), expected)


# -- objectives and aggregations -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("aggregation", "norm_length", "expected"),
    [
        ("token_mean", None, (-3.08 + 4.2) / 5),  # all tokens summed / 5 tokens = 0.224
        ("seq_mean_token_mean", None, (-3.08 / 3 + 4.2 / 2) / 2),  # (-1.02667 + 2.1) / 2
        ("seq_mean_token_sum", None, (-3.08 + 4.2) / 2),  # 0.56
        ("constant_norm", 4, (-3.08 + 4.2) / (2 * 4)),  # 0.14
    ],
)
def test_ppo_clip_higher_each_aggregation(aggregation, norm_length, expected):
    cfg = LossConfig(eps_low=0.2, eps_high=0.28, aggregation=aggregation, norm_length=norm_length)
    out, _ = run(cfg)
    close(out.loss, expected)
    close(out.metrics["clip_frac_low"], 1 / 5)  # token r=0.5 with A<0
    close(out.metrics["clip_frac_high"], 1 / 5)  # token r=1.5 with A>0
    close(out.metrics["ratio_mean"], (1.5 + 0.7 + 1.1 + 0.5 + 1.3) / 5)
    close(out.metrics["ratio_min"], 0.5)
    close(out.metrics["ratio_max"], 1.5)
    assert out.metrics["num_tokens"] == 5
    assert out.metrics["num_sequences"] == 2


def test_ppo_symmetric_clip_grpo():
    # eps 0.2/0.2: r=1.5 (A=1) -> -1.2; r=1.3 (A=-2) -> max(2.6, 2.4) = 2.6; the rest as above.
    # token sum = -1.2 - 0.7 - 1.1 + 1.6 + 2.6 = 1.2 -> token mean 0.24
    out, _ = run(LossConfig(eps_low=0.2, eps_high=0.2))
    close(out.loss, 1.2 / 5)


def test_ppo_token_mean_gradient():
    # d(-A r)/d logp = -A r where unclipped, 0 where the clipped branch is taken. / 5 tokens.
    _, grad = run(LossConfig(eps_low=0.2, eps_high=0.28))
    expected = torch.tensor([[0.0, -0.7, -1.1], [0.0, 2.6, 0.0]], dtype=DT) / 5
    torch.testing.assert_close(grad, expected, **TOL)


def test_dual_clip_bounds_negative_advantage_loss():
    # A = -2, r = 4: max(-A r, -A clip(r)) = max(8, 2.56) = 8 > c |A| = 6 -> loss 6, gradient 0.
    # A = -2, r = 2: max(4, 2.56) = 4 < 6 -> unchanged, gradient -A r = 4.
    # A = +1, r = 5: max(-5, -1.28) = -1.28 -> dual clip does not apply to A > 0.
    cfg = LossConfig(eps_low=0.2, eps_high=0.28, dual_clip=3.0, aggregation="seq_mean_token_sum")
    old = torch.zeros(3, 1, dtype=DT)
    logprobs = torch.log(torch.tensor([[4.0], [2.0], [5.0]], dtype=DT)).requires_grad_(True)
    out = policy_loss(logprobs, old, torch.tensor([-2.0, -2.0, 1.0], dtype=DT), torch.ones(3, 1), cfg)
    out.loss.backward()
    close(out.loss, (6.0 + 4.0 - 1.28) / 3)
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0], [4.0], [0.0]], dtype=DT) / 3, **TOL)
    close(out.metrics["dual_clip_frac"], 1 / 3)


def test_gspo_sequence_ratio_and_gradient():
    # s_0 = (1.5 * 0.7 * 1.1)^(1/3) = 1.155^(1/3) ~ 1.04924, inside [0.9, 1.1] -> token loss -s_0.
    # s_1 = (0.5 * 1.3)^(1/2) = sqrt(0.65) ~ 0.80623 < 0.9 with A = -2 -> max(2 s_1, 2 * 0.9) = 1.8.
    # seq_mean_token_mean: (-s_0 + 1.8) / 2. Gradient: d/dlogp_0t = (1/2)(1/3)(-A s_0) = -s_0 / 6;
    # sequence 1 is clipped, so 0 (GSPO-token gives every token the sequence's ratio).
    s0 = 1.155 ** (1 / 3)
    cfg = LossConfig(objective="gspo", eps_low=0.1, eps_high=0.1, aggregation="seq_mean_token_mean")
    out, grad = run(cfg)
    close(out.loss, (-s0 + 1.8) / 2)
    expected = torch.tensor([[-s0 / 6] * 3, [0.0, 0.0, 0.0]], dtype=DT)
    torch.testing.assert_close(grad, expected, **TOL)
    close(out.metrics["ratio_mean"], (3 * s0 + 2 * math.sqrt(0.65)) / 5)
    close(out.metrics["clip_frac_low"], 2 / 5)  # both tokens of sequence 1


def test_gspo_is_sequence_level_not_token_level():
    # Two sequences with the same tokens' ratios in different order give the same GSPO loss;
    # and one token far outside the range does not clip alone when the sequence mean is inside.
    cfg = LossConfig(objective="gspo", eps_low=0.2, eps_high=0.2, aggregation="seq_mean_token_mean")
    out, grad = run(cfg, ratio=[[1.5, 0.7, 0.95], [1.0, 1.0, 1.0]], adv=torch.tensor([1.0, 0.0], dtype=DT))
    s0 = (1.5 * 0.7 * 0.95) ** (1 / 3)  # ~0.99740, inside [0.8, 1.2]: no clipping at all
    close(out.loss, -s0 / 2)
    torch.testing.assert_close(grad[0], torch.full((3,), -s0 / 6, dtype=DT), **TOL)


def test_cispo_keeps_every_token_gradient():
    # eps_low = 1 (no lower bound), eps_high = 0.2: weight w = sg(min(r, 1.2)).
    # w = [[1.2, 0.7, 1.1], [0.5, 1.2]]; loss = sum(-w A logp) / 5; gradient = -w A / 5.
    cfg = LossConfig(objective="cispo", eps_low=1.0, eps_high=0.2)
    out, grad = run(cfg)
    logp = [
        [-1.0 + math.log(1.5), -2.0 + math.log(0.7), -0.5 + math.log(1.1)],
        [-1.5 + math.log(0.5), -0.3 + math.log(1.3)],
    ]
    weights = [[1.2, 0.7, 1.1], [0.5, 1.2]]
    adv = [1.0, -2.0]
    expected = sum(-w * adv[i] * lp for i in range(2) for w, lp in zip(weights[i], logp[i], strict=True)) / 5
    close(out.loss, expected)
    expected_grad = torch.tensor([[-1.2, -0.7, -1.1], [1.0, 2.4, 0.0]], dtype=DT) / 5
    torch.testing.assert_close(grad, expected_grad, **TOL)
    assert grad[0, 0] != 0  # the token PPO would have clipped (r = 1.5, A > 0) still learns
    close(out.metrics["clip_frac_high"], 2 / 5)  # r = 1.5 and r = 1.3 capped at 1.2


# -- clip-higher gradient property -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("advantage", "ratio", "expected_grad"),
    [
        (1.0, 1.27, -1.27),  # A > 0 below 1 + eps_high: gradient -A r
        (1.0, 1.29, 0.0),  # A > 0 above 1 + eps_high: clipped, no gradient
        (1.0, 0.5, -0.5),  # A > 0 below 1 - eps_low: never clipped (pessimistic min)
        (-2.0, 0.81, 1.62),  # A < 0 above 1 - eps_low: gradient -A r
        (-2.0, 0.79, 0.0),  # A < 0 below 1 - eps_low: clipped
        (-2.0, 1.5, 3.0),  # A < 0 above 1 + eps_high: never clipped
    ],
)
def test_clip_higher_zeroes_gradient_only_past_the_bound(advantage, ratio, expected_grad):
    cfg = LossConfig(eps_low=0.2, eps_high=0.28)
    logprobs = torch.tensor([[math.log(ratio)]], dtype=DT, requires_grad=True)
    policy_loss(
        logprobs, torch.zeros(1, 1, dtype=DT), torch.tensor([advantage], dtype=DT), torch.ones(1, 1), cfg
    ).loss.backward()
    close(logprobs.grad.item(), expected_grad)


def test_cispo_gradient_past_the_bound_is_capped_not_zero():
    cfg = LossConfig(objective="cispo", eps_low=1.0, eps_high=0.28)
    logprobs = torch.tensor([[math.log(1.29)]], dtype=DT, requires_grad=True)
    policy_loss(logprobs, torch.zeros(1, 1, dtype=DT), torch.ones(1, dtype=DT), torch.ones(1, 1), cfg).loss.backward()
    close(logprobs.grad.item(), -1.28)  # -sg(min(1.29, 1.28)) * A


# -- KL estimators ------------------------------------------------------------------------------------

KL_D = [[0.1, -0.2, 0.0], [0.3, -0.1, 0.0]]  # d = log pi_ref - log pi on the 5 completion tokens
K3 = sum(math.exp(d) - d - 1 for d in (0.1, -0.2, 0.0, 0.3, -0.1))


@pytest.mark.parametrize(
    ("estimator", "kl_sum", "grad_of_first_token"),
    [
        ("k1", -(0.1 - 0.2 + 0.0 + 0.3 - 0.1), 1.0),  # k1 = -d, d k1 / d logp = 1
        ("k2", 0.5 * (0.01 + 0.04 + 0.0 + 0.09 + 0.01), -0.1),  # k2 = d^2 / 2, grad = -d
        ("k3", K3, 1 - math.exp(0.1)),  # k3 = e^d - d - 1, grad = -e^d + 1
    ],
)
def test_kl_estimators(estimator, kl_sum, grad_of_first_token):
    cfg = LossConfig(eps_low=0.2, eps_high=0.28, kl_coef=0.1, kl_estimator=estimator)
    logprobs = new_logprobs()
    ref = logprobs.detach() + torch.tensor(KL_D, dtype=DT)
    out = policy_loss(logprobs, OLD, ADV, MASK, cfg, ref_logprobs=ref)
    out.loss.backward()
    close(out.loss, (-3.08 + 4.2) / 5 + 0.1 * kl_sum / 5)
    close(out.metrics["kl_mean"], kl_sum / 5)
    # token [0, 0] is clipped (no pg gradient), so its gradient is the KL term's alone: 0.1 * g / 5
    close(logprobs.grad[0, 0].item(), 0.1 * grad_of_first_token / 5)


def test_k3_is_non_negative_and_zero_at_equality():
    cfg = LossConfig(kl_coef=1.0, kl_estimator="k3")
    logprobs = new_logprobs()
    out = policy_loss(logprobs, OLD, torch.zeros(2, dtype=DT), MASK, cfg, ref_logprobs=logprobs.detach())
    assert out.metrics["kl_mean"] == 0.0


# -- truncated importance sampling ----------------------------------------------------------------

# w = exp(old - sampler) = [[1, 3, 0.5], [2.5, 1.5]], cap C = 2; padding holds NaN (never read).
W = [[1.0, 3.0, 0.5], [2.5, 1.5, 1.0]]
SAMPLER = OLD - torch.log(torch.tensor(W, dtype=DT))
SAMPLER[1, 2] = float("nan")
PG = [[-1.28, -0.7, -1.1], [1.6, 2.6]]  # per-token PPO losses from the module docstring


@pytest.mark.parametrize(
    ("mode", "weights", "frac_key", "frac"),
    [
        ("token_truncate", [[1, 2, 0.5], [2, 1.5]], "tis/frac_truncated", 2 / 5),
        ("token_mask", [[1, 0, 0.5], [0, 1.5]], "tis/frac_masked", 2 / 5),
        ("sequence_truncate", [[1.5] * 3, [2] * 2], "tis/frac_truncated", 1 / 2),  # 1*3*0.5=1.5; 2.5*1.5=3.75
        ("sequence_mask", [[1.5] * 3, [0] * 2], "tis/frac_masked", 1 / 2),
    ],
)
def test_tis_modes(mode, weights, frac_key, frac):
    cfg = LossConfig(eps_low=0.2, eps_high=0.28, tis=mode, tis_cap=2.0)
    out, grad = run(cfg, sampler_logprobs=SAMPLER)
    expected = sum(p * w for i in range(2) for p, w in zip(PG[i], weights[i], strict=True)) / 5
    close(out.loss, expected)
    close(out.metrics[frac_key], frac)
    flat = [w for row in weights for w in row]
    close(out.metrics["tis/weight_mean"], sum(flat) / 5)
    close(out.metrics["tis/weight_max"], max(flat))
    # the weight multiplies the gradient too: token [0, 1] (unclipped, -A r = -0.7) gets w * -0.7 / 5
    close(grad[0, 1].item(), weights[0][1] * -0.7 / 5)


def test_tis_weights_are_one_when_sampler_matches_learner():
    out_off, grad_off = run(LossConfig())
    out_tis, grad_tis = run(LossConfig(tis="token_truncate"), sampler_logprobs=OLD.clone())
    close(out_tis.loss, out_off.loss.item())
    torch.testing.assert_close(grad_tis, grad_off, **TOL)
    close(out_tis.metrics["tis/logprob_gap_max"], 0.0)


# -- micro-batches, normalisers, zero-variance groups ----------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        LossConfig(aggregation="token_mean"),
        LossConfig(aggregation="seq_mean_token_mean"),
        LossConfig(aggregation="seq_mean_token_sum"),
        LossConfig(aggregation="constant_norm", norm_length=7),
        LossConfig(objective="gspo", eps_low=3e-4, eps_high=4e-4, aggregation="seq_mean_token_mean"),
        LossConfig(objective="cispo", eps_low=1.0, eps_high=0.2, kl_coef=0.05, tis="sequence_mask"),
    ],
)
def test_micro_batch_accumulation_with_num_items_equals_full_batch(cfg):
    torch.manual_seed(0)
    batch, length = 6, 5
    old = torch.randn(batch, length, dtype=DT) - 2
    logprobs = (old + 0.3 * torch.randn(batch, length, dtype=DT)).requires_grad_(True)
    sampler = old + 0.2 * torch.randn(batch, length, dtype=DT)
    ref = old + 0.1 * torch.randn(batch, length, dtype=DT)
    mask = (torch.rand(batch, length) < 0.7).to(DT)
    mask[2] = 0  # an all-masked row, e.g. a sample whose verification failed
    adv = torch.randn(batch, dtype=DT)
    kwargs = {"sampler_logprobs": sampler, "ref_logprobs": ref}

    full = policy_loss(logprobs, old, adv, mask, cfg, **kwargs)
    (full_grad,) = torch.autograd.grad(full.loss, logprobs)

    num_items = mask.sum() if cfg.aggregation.type == "token_mean" else (mask.sum(1) > 0).sum()
    total = torch.zeros((), dtype=DT)
    for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):
        part = policy_loss(
            logprobs[rows],
            old[rows],
            adv[rows],
            mask[rows],
            cfg,
            sampler_logprobs=sampler[rows],
            ref_logprobs=ref[rows],
            num_items=float(num_items),
        )
        total = total + part.loss
    (split_grad,) = torch.autograd.grad(total, logprobs)
    torch.testing.assert_close(total, full.loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(split_grad, full_grad, rtol=0, atol=1e-12)


def test_without_num_items_micro_batches_would_be_wrong():
    # The reason num_items exists: per-micro-batch token means weight tokens unequally.
    cfg = LossConfig(aggregation="token_mean")
    logprobs = new_logprobs()
    full = policy_loss(logprobs, OLD, ADV, MASK, cfg).loss
    split = (
        policy_loss(logprobs[:1], OLD[:1], ADV[:1], MASK[:1], cfg).loss
        + policy_loss(logprobs[1:], OLD[1:], ADV[1:], MASK[1:], cfg).loss
    ) / 2
    close(full, 0.224)
    close(split, (-3.08 / 3 + 4.2 / 2) / 2)  # silently becomes seq_mean_token_mean


def test_constant_norm_gradient_ignores_other_sequence_lengths():
    # Dr. GRPO: d loss / d logp_0t = -A r / (B L) whatever the length of sequence 1.
    cfg = LossConfig(eps_low=0.2, eps_high=0.28, aggregation="constant_norm", norm_length=4)
    _, grad_long = run(cfg)
    short_mask = MASK.clone()
    short_mask[1, 1] = 0  # sequence 1 now has one token instead of two
    _, grad_short = run(cfg, mask=short_mask)
    torch.testing.assert_close(grad_long[0], grad_short[0], rtol=0, atol=0)
    torch.testing.assert_close(grad_long[0], torch.tensor([0.0, -0.7, -1.1], dtype=DT) / 8, **TOL)
    # token_mean, by contrast, divides by the total token count, which the other sequence changes
    _, tm_long = run(LossConfig(eps_low=0.2, eps_high=0.28))
    _, tm_short = run(LossConfig(eps_low=0.2, eps_high=0.28), mask=short_mask)
    assert not torch.allclose(tm_long[0], tm_short[0])


@pytest.mark.parametrize(
    "cfg",
    [
        LossConfig(),
        LossConfig(objective="gspo", eps_low=3e-4, eps_high=4e-4, aggregation="seq_mean_token_mean"),
        LossConfig(objective="cispo", eps_low=1.0, eps_high=4.0),
        LossConfig(dual_clip=3.0, tis="token_truncate"),
    ],
)
def test_zero_variance_groups_contribute_no_gradient(cfg):
    # Rewards [1, 1 | 0, 1]: the first group is all equal -> advantages 0 -> no gradient on its rows.
    adv = compute_advantages(torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=DT), 2)
    torch.manual_seed(1)
    old = torch.randn(4, 3, dtype=DT)
    # tiny policy change: inside every clip range (GSPO's is 3e-4), so rows with signal have gradient
    logprobs = (old + 1e-5 * torch.randn(4, 3, dtype=DT)).requires_grad_(True)
    out = policy_loss(logprobs, old, adv, torch.ones(4, 3), cfg, sampler_logprobs=old + 0.1)
    out.loss.backward()
    assert torch.equal(logprobs.grad[:2], torch.zeros(2, 3, dtype=DT))
    assert (logprobs.grad[2:] != 0).all()


def test_all_masked_batch_gives_zero_loss_and_finite_grad():
    logprobs = new_logprobs()
    out = policy_loss(logprobs, OLD, ADV, torch.zeros_like(MASK), LossConfig(aggregation="seq_mean_token_mean"))
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert torch.equal(logprobs.grad, torch.zeros_like(logprobs))
    assert out.metrics["num_tokens"] == 0 and math.isnan(out.metrics["ratio_mean"])


def test_float32_and_bfloat16_inputs_agree_with_float64():
    cfg = LossConfig(dual_clip=3.0, kl_coef=0.1, tis="token_truncate")
    ref = OLD + 0.1
    expected = policy_loss(new_logprobs(), OLD, ADV, MASK, cfg, sampler_logprobs=SAMPLER, ref_logprobs=ref).loss
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 5e-2)):
        cast = {k: v.to(dtype) for k, v in {"s": SAMPLER, "r": ref, "o": OLD}.items()}
        got = policy_loss(
            new_logprobs().to(dtype),
            cast["o"],
            ADV.to(dtype),
            MASK,
            cfg,
            sampler_logprobs=cast["s"],
            ref_logprobs=cast["r"],
        ).loss
        assert got.dtype == dtype
        assert abs(got.item() - expected.item()) < tol


# -- configuration errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"aggregation": {"type": "constant_norm"}}, "loss.aggregation.norm_length is required"),
        ({"aggregation": "constant_norm"}, "loss.aggregation.norm_length is required"),  # the flat form
        ({"norm_length": 100}, "the 'token_mean' variant has no field 'norm_length' \\(constant_norm has it\\)"),
        ({"objective": {"eps_low": -0.1}}, "say which variant with loss.objective.type"),
        ({"objective": {"type": "ppo_clip", "eps_low": -0.1}}, "objective.eps_low: .*greater than or equal to 0"),
        ({"eps_high": -0.1}, "loss.objective.eps_high: .*greater than or equal to 0"),
        ({"dual_clip": 0.5}, "greater than 1"),
        (
            {"objective": {"type": "cispo", "dual_clip": 3.0}},
            "'cispo' variant has no field 'dual_clip' \\(ppo_clip, gspo",
        ),
        ({"objective": "cispo", "dual_clip": 3.0}, "'cispo' variant has no field 'dual_clip'"),
        ({"kl_coef": -1}, "greater than or equal to 0"),
        ({"tis": {"type": "token_truncate", "cap": 0.5}}, "loss.tis.cap: .*greater than or equal to 1"),
        ({"tis": "token_mask", "tis_cap": 0.5}, "loss.tis.cap: .*greater than or equal to 1"),
        ({"tis": "token_clip"}, "loss.tis.type: unknown 'token_clip'; choose one of off, token_truncate"),
        ({"eps_hihg": 0.3}, "unknown key 'eps_hihg'"),
    ],
)
def test_invalid_config_is_refused_with_a_fix(fields, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(LossConfig, fields, "loss")


def test_flat_form_of_before_the_unions_loads_as_the_nested_one():
    # A run's config.yaml written before the loss variants were unions: every key, nulls included.
    flat = {
        "objective": "ppo_clip",
        "eps_low": 0.2,
        "eps_high": 0.28,
        "dual_clip": None,
        "aggregation": "token_mean",
        "norm_length": None,
        "kl_coef": 0.0,
        "kl_estimator": "k3",
        "tis": False,
        "tis_cap": 2.0,
    }
    assert LossConfig.model_validate(flat) == LossConfig(
        objective=PPOClip(eps_low=0.2, eps_high=0.28), aggregation=TokenMean(), tis=NoTIS()
    )
    flat |= {"objective": "gspo", "aggregation": "constant_norm", "norm_length": 64, "tis": "sequence_mask"}
    assert LossConfig.model_validate(flat) == LossConfig(
        objective=GSPO(eps_low=0.2, eps_high=0.28),
        aggregation=ConstantNorm(norm_length=64),
        tis=SequenceMask(cap=2.0),
    )


@pytest.mark.parametrize(
    ("cfg", "kwargs", "message"),
    [
        (LossConfig(tis="token_truncate"), {}, "needs sampler_logprobs"),
        (LossConfig(kl_coef=0.1), {}, "needs ref_logprobs"),
        (LossConfig(), {"num_items": 2}, "smaller than the 5 completion tokens"),
        (
            LossConfig(aggregation="seq_mean_token_sum"),
            {"num_items": 1},
            "smaller than the 2 non-empty sequences",
        ),
        (LossConfig(), {"num_items": 0}, "positive finite"),
    ],
)
def test_invalid_call_is_refused_with_a_fix(cfg, kwargs, message):
    with pytest.raises(ValueError, match=message):
        policy_loss(new_logprobs(), OLD, ADV, MASK, cfg, **kwargs)


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="old_logprobs has shape"):
        policy_loss(new_logprobs(), OLD[:, :2], ADV, MASK, LossConfig())
    with pytest.raises(ValueError, match=r"advantages must be \[B\]"):
        policy_loss(new_logprobs(), OLD, ADV.unsqueeze(1), MASK, LossConfig())
    with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
        policy_loss(new_logprobs(), OLD, ADV, MASK * 0.5, LossConfig())


@pytest.mark.parametrize(("mode", "kept_weight"), [("token_truncate", 2.0), ("token_mask", 0.0)])
def test_tis_cap_boundary(mode, kept_weight):
    # w = 1.999 is under the cap C = 2 and is used as is; w = 2.001 is over it: truncated to 2, or masked.
    cfg = LossConfig(tis=mode, tis_cap=2.0, aggregation="seq_mean_token_sum")
    sampler = -torch.log(torch.tensor([[1.999], [2.001]], dtype=DT))  # old = 0
    logprobs = torch.zeros(2, 1, dtype=DT, requires_grad=True)  # ratio 1, unclipped: pg loss = -A
    out = policy_loss(
        logprobs, torch.zeros(2, 1, dtype=DT), torch.ones(2, dtype=DT), torch.ones(2, 1), cfg, sampler_logprobs=sampler
    )
    close(out.loss, (-1.999 - kept_weight) / 2)
    close(out.metrics["tis/frac_truncated" if mode == "token_truncate" else "tis/frac_masked"], 1 / 2)


def test_tis_false_is_off_as_yaml_reads_off():
    assert LossConfig(tis=False).tis == NoTIS()  # `tis: off` in YAML 1.1 arrives as False
    assert LossConfig.model_validate({"tis": {"type": False}}).tis == NoTIS()
    assert LossConfig.model_validate({"tis": "off"}).tis == NoTIS()
    with pytest.raises(ConfigError, match="loss.tis.type: unknown 'True'; choose one of off, token_truncate"):
        validate_config(LossConfig, {"tis": True}, "loss")  # `tis: on` names no mode
