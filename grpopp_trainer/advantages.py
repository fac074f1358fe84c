"""Group-relative advantages: one scalar per completion, shared by all its tokens.

GRPO replaces PPO's value model with a baseline computed from the group of G completions sampled
for the same prompt (DeepSeekMath, arXiv 2402.03300, section 4.1.2):

    A_i = (R_i - mean_j R_j) / (std_j R_j + eps)          scale="group"

Departures offered here:
- scale="batch": centre on the group mean but divide by the std of all rewards in the batch
  (TRL's ``scale_rewards="batch"``), which avoids up-weighting groups whose rewards barely differ.
- scale="none": Dr. GRPO (arXiv 2503.20783, section 3.1) drops the division entirely; the std
  term gives questions that are too easy or too hard a larger weight, a bias it removes.

Shapes: rewards [N] with N = prompts x G, groups contiguous (completions 0..G-1 are prompt 0).
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import torch

AdvantageScale: TypeAlias = Literal["group", "batch", "none"]


def compute_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale: AdvantageScale = "group",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Return the advantage of every completion, [N], float like ``rewards``.

    Args:
        rewards: [N] scalar reward per completion, N = number of groups x ``group_size``,
            the completions of one prompt stored next to each other.
        group_size: G, the number of completions sampled per prompt (>= 1).
        scale: "group" (DeepSeekMath), "batch" (std over the whole batch) or "none" (Dr. GRPO).
        eps: added to the std before dividing; ignored when ``scale="none"``.

    A group whose rewards are all equal gets advantage exactly 0 whatever the scale, also when
    floating-point rounding would make ``r - mean`` a tiny non-zero number: such a group carries no
    learning signal (DAPO, arXiv 2503.14476, section 3.2) and must give no gradient.
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be one of 'group', 'batch', 'none'; got {scale!r}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be a 1-D tensor [N], got shape {tuple(rewards.shape)}")
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a floating-point tensor, got dtype {rewards.dtype}")
    num_completions = rewards.numel()
    if num_completions % group_size != 0:
        raise ValueError(
            f"rewards has {num_completions} entries, not a multiple of group_size={group_size}; "
            "pass whole groups of completions, each group's completions next to each other"
        )
    non_finite = (~torch.isfinite(rewards)).nonzero()
    if non_finite.numel() > 0:
        index = int(non_finite[0].item())
        raise ValueError(
            f"rewards[{index}] = {rewards[index].item()} is not finite; mask completions whose "
            "verification failed before computing advantages instead of giving them a reward"
        )

    if group_size == 1:
        return torch.zeros_like(rewards)  # a group of one has no relative signal
    grouped = rewards.detach().view(-1, group_size)  # [N / G, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [N / G, G]
    if scale == "group":
        # Unbiased std (Bessel's correction), as torch.std and the GRPO reference code.
        scaled = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        scaled = centred / (rewards.detach().std() + eps)
    else:
        scaled = centred
    zero_variance = zero_variance_groups(rewards.detach(), group_size).unsqueeze(1)  # [N / G, 1]
    advantages = torch.where(zero_variance, torch.zeros_like(scaled), scaled)
    return advantages.reshape(num_completions)


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Return a bool mask [N / G]: True for groups whose rewards are all equal (no signal).

    Dynamic sampling (DAPO) drops these groups; ``compute_advantages`` gives them exactly 0.
    """
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be 1-D with a length that is a multiple of group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )
    grouped = rewards.view(-1, group_size)
    return grouped.amax(dim=1) == grouped.amin(dim=1)
