"""The policy being trained: model, optimizer and learning-rate schedule, in one place.

Everything that touches parameters lives here (forward log-probs, backward, clipping, the
optimizer step, saving and loading), so that a sharded implementation (FSDP) can replace this class
without the training loop changing.

Token layout for the learner: prompts are left-padded to a common length P and completions
right-padded to T, so every completion starts at column P and the logits that predict completion
tokens are the columns P-1 .. P+T-2 (position ids follow the attention mask, as in generation).

Shared prompts: the G completions of a group share their prompt, so by default each distinct prompt
of a micro-batch goes through the model once, and its keys and values are copied to every row that
continues it (``Cache.reorder_cache`` with the row -> prompt index); the completions then attend to
that cache. It is the same computation as the flat [B, P + T] pass up to float rounding, with its
gradient flowing back through the copies into the one prompt pass, and it saves (G - 1) / G of
the prompt's share of the forward and backward work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grpopp_trainer.config import OptimConfig
from grpopp_trainer.rollout.base import distinct_rows


@dataclass
class TokenBatch:
    """Completions laid out for the learner (see the module docstring)."""

    input_ids: torch.Tensor  # [B, P + T] left-padded prompt, right-padded completion
    attention_mask: torch.Tensor  # [B, P + T] 1 on real tokens
    completion_mask: torch.Tensor  # [B, T] 1 on completion tokens
    prompt_length: int  # P
    prompt_index: torch.Tensor  # [B] long: which distinct prompt row b continues (0 .. U-1)
    first_rows: torch.Tensor  # [U] long: the first row of each distinct prompt

    @property
    def completion_length(self) -> int:
        return int(self.completion_mask.shape[1])


def make_token_batch(
    prompts: list[list[int]], completions: list[list[int]], pad_token_id: int, device: torch.device
) -> TokenBatch:
    """Lay out (prompt, completion) token-id pairs for one forward pass."""
    prompt_length = max(len(p) for p in prompts)
    completion_length = max(1, max(len(c) for c in completions))
    rows, masks, completion_masks = [], [], []
    first_rows, prompt_index = distinct_rows(prompts)
    for prompt, completion in zip(prompts, completions, strict=True):
        left, right = prompt_length - len(prompt), completion_length - len(completion)
        rows.append([pad_token_id] * left + prompt + completion + [pad_token_id] * right)
        masks.append([0] * left + [1] * (len(prompt) + len(completion)) + [0] * right)
        completion_masks.append([1] * len(completion) + [0] * right)
    return TokenBatch(
        input_ids=torch.tensor(rows, dtype=torch.long, device=device),
        attention_mask=torch.tensor(masks, dtype=torch.long, device=device),
        completion_mask=torch.tensor(completion_masks, dtype=torch.float32, device=device),
        prompt_length=prompt_length,
        prompt_index=torch.tensor(prompt_index, dtype=torch.long, device=device),
        first_rows=torch.tensor(first_rows, dtype=torch.long, device=device),
    )


def completion_logprobs(
    model: PreTrainedModel,
    batch: TokenBatch,
    temperature: float,
    with_entropy: bool = False,
    share_prompts: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [B, T] of the completion tokens under ``model`` at ``temperature`` (the sampler's
    scaling, so TIS compares like with like), and optionally the entropy [B, T] (detached).

    ``share_prompts``: one pass per distinct prompt (see the module docstring) when prompts repeat;
    the flat pass otherwise, and under gradient checkpointing (which turns the KV cache off).
    """
    shared = share_prompts and len(batch.first_rows) < len(batch.prompt_index)
    if shared and not (model.training and _checkpointing(model)):
        logits = _shared_prompt_logits(model, batch)
    else:
        logits = _flat_logits(model, batch)
    logits = logits.float() / temperature  # [B, T, V]
    targets = batch.input_ids[:, batch.prompt_length :]  # [B, T]
    log_softmax = torch.log_softmax(logits, dim=-1)  # [B, T, V]
    logprobs = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T]
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(log_softmax.exp() * log_softmax).sum(dim=-1)  # [B, T]
    return logprobs, entropy


def _checkpointing(model: PreTrainedModel) -> bool:
    """Whether activation (gradient) checkpointing is on; transformers 5 renamed the attribute."""
    name = (
        "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else "is_gradient_checkpointing"
    )
    return bool(getattr(model, name, False))


def _flat_logits(model: PreTrainedModel, batch: TokenBatch) -> torch.Tensor:
    """Logits [B, T, V] that predict the completion tokens, from one pass over [B, P + T]."""
    position_ids = (batch.attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # [B, P + T]
    length = batch.completion_length
    output = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position_ids,
        use_cache=False,
        logits_to_keep=length + 1,  # columns P-1 .. P+T-1; the last one predicts past the end
    )
    # Slice explicitly: a model that ignores logits_to_keep returns all P + T columns, and gather would
    # then silently read prompt positions.
    logits: torch.Tensor = output.logits[:, -(length + 1) : -1, :]  # [B, T, V]
    return logits


def _shared_prompt_logits(model: PreTrainedModel, batch: TokenBatch) -> torch.Tensor:
    """Logits [B, T, V] as ``_flat_logits``, with one prompt pass [U, P] per distinct prompt."""
    prompt_length, length = batch.prompt_length, batch.completion_length
    position_ids = (batch.attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # [B, P + T]
    first = batch.first_rows  # [U]
    prompt_pass = model(
        input_ids=batch.input_ids[first, :prompt_length],  # [U, P]
        attention_mask=batch.attention_mask[first, :prompt_length],
        position_ids=position_ids[first, :prompt_length],
        use_cache=True,
        logits_to_keep=1,
    )
    first_token_logits: torch.Tensor = prompt_pass.logits[:, -1:, :][batch.prompt_index]  # [B, 1, V] predict token 0
    if length == 1:
        return first_token_logits
    cache = prompt_pass.past_key_values
    cache.reorder_cache(batch.prompt_index)  # [U, H, P, D] -> [B, H, P, D] per layer, differentiable
    end = prompt_length + length - 1  # the last completion token predicts nothing
    completion_pass = model(
        input_ids=batch.input_ids[:, prompt_length:end],  # [B, T - 1]
        attention_mask=batch.attention_mask[:, :end],  # [B, P + T - 1]: past and new columns
        position_ids=position_ids[:, prompt_length:end],
        past_key_values=cache,
        use_cache=True,
    )
    rest: torch.Tensor = completion_pass.logits[:, -(length - 1) :, :]  # [B, T - 1, V] predict tokens 1..T-1
    return torch.cat([first_token_logits, rest], dim=1)  # [B, T, V]


class Policy:
    """The trained model, its AdamW optimizer and its learning-rate schedule (set by position)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        optim: OptimConfig,
        total_optimizer_steps: int,
        device: torch.device,
    ) -> None:
        torch.nn.Module.to(model, device)  # transformers wraps .to() in a decorator mypy cannot read
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.optim_config = optim
        parameters = [p for p in model.parameters() if p.requires_grad]
        # One fused kernel for all parameters where torch has it (CPU and CUDA): the same AdamW update,
        # a few times faster than the per-tensor loop on small models.
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters)
        self.optimizer = torch.optim.AdamW(
            parameters, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay, fused=fused or None
        )
        self.total_optimizer_steps = total_optimizer_steps

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
        return int(pad)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def token_batch(self, prompts: list[list[int]], completions: list[list[int]]) -> TokenBatch:
        return make_token_batch(prompts, completions, self.pad_token_id, self.device)

    def set_schedule_position(self, optimizer_step: int) -> None:
        """Set the learning rate of planned optimizer step ``optimizer_step`` (0-based). The position
        comes from the training step, so skipped updates never shift the schedule."""
        factor = _lr_factor(optimizer_step, self.optim_config, self.total_optimizer_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = self.optim_config.lr * factor

    def step(self) -> tuple[float, bool]:
        """Clip gradients and take an optimizer step; return (grad norm, applied). A non-finite
        gradient norm skips the step (the gradients are dropped, never applied)."""
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        norm = float(torch.nn.utils.clip_grad_norm_(parameters, self.optim_config.max_grad_norm))
        applied = math.isfinite(norm)
        if applied:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, applied

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def save_pretrained(self, path: Path) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)


def _lr_factor(step: int, optim: OptimConfig, total: int) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - optim.warmup_steps) / max(1, total - optim.warmup_steps))
    floor = optim.min_lr_ratio
    if optim.schedule == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
