"""A training step's batch: what filling it cost, and the tensors handed to the loss.

The groups themselves (``grpopp.rollout.groups``) are scored by their environments; here live the pure
bookkeeping of a step: ``CollectStats`` (statuses, tokens and times of generation), which samples count
in the loss (valid, and not filtered as overlong: DAPO sec. 3.4), and the padded per-token tensors.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from grpopp.rollout.groups import Group


@dataclass
class CollectStats:
    """What generating one step's groups cost (what filling the batch took is in
    ``grpopp.training.dynamic_sampling.Batch``)."""

    statuses: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    generated_tokens: int = 0
    generation_seconds: float = 0.0
    scoring_seconds: float = 0.0


@dataclass
class TrainTensors:
    """Per-completion tensors of a rollout batch, in group order (completion k of group g at g x G + k)."""

    prompts: list[list[int]]
    completions: list[list[int]]
    sampler_logprobs: list[list[float]]
    rewards: torch.Tensor  # [N] total reward, NaN where invalid
    valid: torch.Tensor  # [N] bool: the verifier could judge
    trained: torch.Tensor  # [N] bool: counts in the loss (valid, and not filtered as overlong)
    model_masks: list[list[bool] | None] = field(default_factory=list)
    """Per completion: an episode's mask of model-sampled tokens (None: all of them). Empty: no episode."""
    old_logprobs: list[list[float] | None] = field(default_factory=list)
    """pi_old per completion of a carried group (the learner's log-probs when it was generated); None
    for one generated this step, whose pi_old is the learner's now. Empty: no carried group."""

    def model_tokens(self, row: int) -> int:
        """Tokens of completion ``row`` the model sampled (an episode's environment tokens excluded)."""
        mask = self.model_masks[row] if self.model_masks else None
        return len(self.completions[row]) if mask is None else sum(mask)

    def masks_of(self, rows: Sequence[int]) -> list[list[bool] | None]:
        return [self.model_masks[r] for r in rows] if self.model_masks else [None] * len(rows)


def to_tensors(
    groups: Sequence[Group], filter_truncated: bool, old_logprobs: Sequence[list[list[float]] | None] = ()
) -> TrainTensors:
    """Flatten groups for the loss. Invalid samples (timeout, error) never count; truncated ones do not
    either when DAPO's overlong filtering is on (they still take part in their group's statistics).
    ``old_logprobs``: per group, the stored pi_old of a carried group, or None (default: all None)."""
    samples = [s for g in groups for s in g.samples]
    stored = list(old_logprobs) or [None] * len(groups)
    valid = torch.tensor([s.reward.valid for s in samples])
    truncated = torch.tensor([s.truncated for s in samples])
    return TrainTensors(
        prompts=[s.completion.prompt_ids for s in samples],
        completions=[s.completion.token_ids for s in samples],
        sampler_logprobs=[s.completion.logprobs for s in samples],
        model_masks=[s.completion.model_mask for s in samples],
        old_logprobs=[
            None if old is None else old[k]
            for g, old in zip(groups, stored, strict=True)
            for k in range(len(g.samples))
        ],
        rewards=torch.cat([g.rewards for g in groups]).double(),
        valid=valid,
        trained=valid & ~truncated if filter_truncated else valid,
    )


def pad(rows: Sequence[Sequence[float] | torch.Tensor], length: int, device: torch.device) -> torch.Tensor:
    """Right-pad rows of per-token values (lists or 1-D tensors) to [B, length] with zeros."""
    out = torch.zeros(len(rows), length, dtype=torch.float32, device=device)
    for i, row in enumerate(rows):
        if len(row):
            out[i, : len(row)] = torch.as_tensor(row, dtype=torch.float32, device=device)
    return out


def token_budget_micro_batches(
    lengths: Sequence[tuple[int, int]], budget: int, packed: bool = False
) -> list[list[int]]:
    """Micro-batches (lists of indices into ``lengths``) under a token budget. ``lengths``: (prompt,
    completion) tokens of each row. The rows are sorted by total length (ties: in order, so a group's
    rows stay together and share their prompt pass); each micro-batch then takes the next rows while
    rows x (longest prompt + longest completion) -- the positions of its padded [b, P + T] pass; with
    ``packed`` the sum of the rows' lengths -- stays within ``budget``. A row longer than the budget
    gets a micro-batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: (sum(lengths[i]), i))
    batches: list[list[int]] = []
    current: list[int] = []
    prompt = completion = total = 0
    for index in order:
        p, c = max(prompt, lengths[index][0]), max(completion, lengths[index][1])
        cost = total + sum(lengths[index]) if packed else (len(current) + 1) * (p + c)
        if current and cost > budget:
            batches.append(current)
            current, p, c, total = [], lengths[index][0], lengths[index][1], 0
        current.append(index)
        prompt, completion, total = p, c, total + sum(lengths[index])
    if current:
        batches.append(current)
    return batches
