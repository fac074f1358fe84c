"""compute_advantages against hand-derived values (DeepSeekMath, TRL batch scaling, Dr. GRPO)."""

import math

import pytest
import torch

from grpopp.objective.advantages import compute_advantages, zero_variance_groups

EPS = 1e-6


def test_group_scale_matches_hand_values():
    # Group 1: [1, 0, 0, 1]: mean 0.5, unbiased var = 4 * 0.25 / 3 = 1/3, std = 1/sqrt(3).
    # A = +-0.5 / (1/sqrt(3) + 1e-6). Group 2: [1, 1, 1, 1]: all equal, A = 0 exactly.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    a = 0.5 / (1 / math.sqrt(3) + EPS)
    expected = torch.tensor([a, -a, -a, a, 0, 0, 0, 0], dtype=torch.float64)
    got = compute_advantages(rewards, group_size=4, scale="group", eps=EPS)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_group_scale_uneven_group():
    # [2, 0, 1]: mean 1, unbiased var = (1 + 1 + 0) / 2 = 1, std 1 -> A = [1, -1, 0] / (1 + 1e-6).
    rewards = torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)
    expected = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64) / (1 + EPS)
    torch.testing.assert_close(compute_advantages(rewards, 3), expected, rtol=0, atol=1e-12)


def test_batch_scale_uses_std_of_all_rewards():
    # Groups [1, 0] and [0, 0]; group means 0.5 and 0 -> centred [0.5, -0.5, 0, 0].
    # Batch rewards [1, 0, 0, 0]: mean 0.25, unbiased var = (0.5625 + 3 * 0.0625) / 3 = 0.25, std 0.5.
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    a = 0.5 / (0.5 + EPS)
    expected = torch.tensor([a, -a, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(compute_advantages(rewards, 2, scale="batch"), expected, rtol=0, atol=1e-12)


def test_none_scale_is_dr_grpo_centring_only():
    # Groups [3, 1] (mean 2) and [2, 5] (mean 3.5): A = [1, -1, -1.5, 1.5], no division.
    rewards = torch.tensor([3.0, 1.0, 2.0, 5.0])
    expected = torch.tensor([1.0, -1.0, -1.5, 1.5])
    torch.testing.assert_close(compute_advantages(rewards, 2, scale="none"), expected, rtol=0, atol=0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_equal_rewards_give_exactly_zero_despite_rounding(scale):
    # 0.1 * 3 / 3 != 0.1 in binary floating point, so r - mean is ~1e-17, not 0, unless the
    # zero-variance rule applies; it must, exactly.
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 0.5], dtype=torch.float64)
    assert rewards[:3].mean().item() != 0.1  # the rounding this test is about
    got = compute_advantages(rewards, 3, scale=scale)
    assert torch.equal(got[:3], torch.zeros(3, dtype=torch.float64))
    assert (got[3:] != 0).sum() == 2  # the other group keeps its signal (its mean 0.5 gives one 0)


def test_group_size_one_gives_zero():
    assert torch.equal(compute_advantages(torch.tensor([1.0, 0.0, 3.0]), 1), torch.zeros(3))


def test_zero_variance_groups_mask():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert zero_variance_groups(rewards, 2).tolist() == [True, False, True]


def test_dtype_is_preserved():
    assert compute_advantages(torch.tensor([1.0, 0.0], dtype=torch.float64), 2).dtype == torch.float64


@pytest.mark.parametrize(
    ("rewards", "group_size", "kwargs", "message"),
    [
        (torch.ones(5), 2, {}, "not a multiple of group_size=2"),
        (torch.ones(2, 2), 2, {}, "1-D tensor"),
        (torch.tensor([1.0, float("nan")]), 2, {}, r"rewards\[1\] = nan is not finite"),
        (torch.tensor([1, 0]), 2, {}, "floating-point"),
        (torch.ones(4), 0, {}, "positive integer"),
        (torch.ones(4), 2, {"scale": "std"}, "scale must be one of"),
    ],
)
def test_bad_input_is_refused_clearly(rewards, group_size, kwargs, message):
    with pytest.raises(ValueError, match=message):
        compute_advantages(rewards, group_size, **kwargs)


def test_invalid_samples_take_no_part_in_group_statistics():
    # Group [1, 0, NaN (timed out), 0]: valid rewards [1, 0, 0], mean 1/3, unbiased var =
    # ((2/3)^2 + 2 (1/3)^2) / 2 = 1/3, std = 1/sqrt(3). The invalid sample gets exactly 0.
    rewards = torch.tensor([1.0, 0.0, float("nan"), 0.0], dtype=torch.float64)
    valid = torch.tensor([True, True, False, True])
    std = 1 / math.sqrt(3)
    a, b = (2 / 3) / (std + EPS), (-1 / 3) / (std + EPS)
    expected = torch.tensor([a, b, 0.0, b], dtype=torch.float64)
    torch.testing.assert_close(compute_advantages(rewards, 4, valid=valid), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", ["group", "none"])
def test_masked_groups_equal_the_unmasked_function_on_the_valid_subset(scale):
    # Second method: drop the invalid sample of each group (one per group here), so the groups
    # shrink to 3 and the plain function applies; the valid entries must match exactly.
    torch.manual_seed(0)
    rewards = torch.rand(5 * 4, dtype=torch.float64)
    valid = torch.ones(20, dtype=torch.bool)
    valid[torch.arange(5) * 4 + torch.tensor([0, 3, 1, 2, 0])] = False
    masked = compute_advantages(rewards, 4, scale=scale, valid=valid)
    subset = compute_advantages(rewards[valid], 3, scale=scale)
    torch.testing.assert_close(masked[valid], subset, rtol=0, atol=1e-12)
    assert torch.equal(masked[~valid], torch.zeros(5, dtype=torch.float64))


def test_group_with_one_valid_sample_has_no_signal():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    valid = torch.tensor([True, False, True, True])
    assert zero_variance_groups(rewards, 2, valid).tolist() == [True, False]
    assert compute_advantages(rewards, 2, valid=valid)[:2].tolist() == [0.0, 0.0]


def test_batch_scale_ignores_invalid_rewards():
    # valid rewards [1, 0, 0] (the 4th is invalid): batch std = 1/sqrt(3); group 1 centred [0.5, -0.5].
    rewards = torch.tensor([1.0, 0.0, 0.0, 100.0], dtype=torch.float64)
    valid = torch.tensor([True, True, True, False])
    a = 0.5 / (1 / math.sqrt(3) + EPS)
    got = compute_advantages(rewards, 2, scale="batch", valid=valid)
    torch.testing.assert_close(got, torch.tensor([a, -a, 0.0, 0.0], dtype=torch.float64), rtol=0, atol=1e-12)


def test_nan_reward_of_a_valid_sample_is_refused():
    with pytest.raises(ValueError, match="valid=False"):
        compute_advantages(torch.tensor([1.0, float("nan")]), 2, valid=torch.tensor([True, True]))
