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

import math
from typing import Literal, TypeAlias

import torch

AdvantageScale: TypeAlias = Literal["group", "batch", "none"]


def compute_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale: AdvantageScale = "group",
    eps: float = 1e-6,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the advantage of every completion, [N], float like ``rewards``.

    Args:
        rewards: [N] scalar reward per completion, N = number of groups x ``group_size``,
            the completions of one prompt stored next to each other.
        group_size: G, the number of completions sampled per prompt (>= 1).
        scale: "group" (DeepSeekMath), "batch" (std over the whole batch) or "none" (Dr. GRPO).
        eps: added to the std before dividing; ignored when ``scale="none"``.
        valid: [N] bool, False for completions whose verifier could not judge (timeout, error).
            They take no part in any mean or std, their reward is never read (it may be NaN), and
            their advantage is 0; a group is then as large as its valid completions.

    A group whose (valid) rewards are all equal, or that has fewer than two valid completions, gets
    advantage exactly 0 whatever the scale, also when floating-point rounding would make
    ``r - mean`` a tiny non-zero number: such a group carries no learning signal (DAPO, arXiv
    2503.14476, section 3.2) and must give no gradient.
    """
    _check_arguments(rewards, group_size, scale, eps, valid)
    num_completions = rewards.numel()
    keep = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid.bool()  # [N]
    values = torch.where(keep, rewards.detach(), torch.zeros_like(rewards))  # [N], invalid -> 0, never read
    grouped, grouped_keep = values.view(-1, group_size), keep.view(-1, group_size)  # [N / G, G]
    counts = grouped_keep.sum(dim=1, keepdim=True)  # [N / G, 1] valid completions per group
    mean = grouped.sum(dim=1, keepdim=True) / counts.clamp(min=1)  # [N / G, 1]
    centred = torch.where(grouped_keep, grouped - mean, torch.zeros_like(grouped))  # [N / G, G]
    if scale == "group":
        # Unbiased std (Bessel's correction), as torch.std and the GRPO reference code.
        std = (centred.square().sum(dim=1, keepdim=True) / (counts - 1).clamp(min=1)).sqrt()  # [N / G, 1]
        scaled = centred / (std + eps)
    elif scale == "batch":
        batch = values[keep]
        std = batch.std() if batch.numel() > 1 else torch.zeros((), dtype=rewards.dtype)
        scaled = centred / (std + eps)
    else:
        scaled = centred
    no_signal = zero_variance_groups(rewards, group_size, valid).unsqueeze(1)  # [N / G, 1]
    advantages = torch.where(no_signal | ~grouped_keep, torch.zeros_like(scaled), scaled)
    return advantages.reshape(num_completions)


def _check_arguments(
    rewards: torch.Tensor, group_size: int, scale: str, eps: float, valid: torch.Tensor | None
) -> None:
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
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards has {rewards.numel()} entries, not a multiple of group_size={group_size}; "
            "pass whole groups of completions, each group's completions next to each other"
        )
    if valid is not None and valid.shape != rewards.shape:
        raise ValueError(f"valid must be [N] like rewards, got shape {tuple(valid.shape)}")
    keep = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid.bool()
    non_finite = (~torch.isfinite(rewards) & keep).nonzero()
    if non_finite.numel() > 0:
        index = int(non_finite[0].item())
        raise ValueError(
            f"rewards[{index}] = {rewards[index].item()} is not finite; mark completions whose "
            "verification failed as invalid (valid=False) instead of giving them a reward"
        )


def zero_variance_groups(rewards: torch.Tensor, group_size: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Return a bool mask [N / G]: True for groups with no signal, whose valid rewards are all equal
    or that have fewer than two valid completions.

    Dynamic sampling (DAPO) drops these groups; ``compute_advantages`` gives them exactly 0.
    """
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be 1-D with a length that is a multiple of group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )
    keep = (torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid.bool()).view(-1, group_size)
    grouped = rewards.detach().view(-1, group_size)  # [N / G, G]
    highest = torch.where(keep, grouped, torch.full_like(grouped, -math.inf)).amax(dim=1)
    lowest = torch.where(keep, grouped, torch.full_like(grouped, math.inf)).amin(dim=1)
    return (highest == lowest) | (keep.sum(dim=1) < 2)
