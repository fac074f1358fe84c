"""``OptimConfig``: AdamW and the learning-rate schedule the learner (``policy.Policy``) builds."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class OptimConfig(BaseModel):
    """AdamW and the learning-rate schedule."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    lr: float = Field(1e-6, gt=0.0)
    """Peak learning rate (DeepSeek-R1-Zero used 3e-6; Dr. GRPO 1e-6)."""

    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas."""

    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay."""

    max_grad_norm: float = Field(1.0, gt=0.0)
    """Gradient clipping by global norm."""

    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up from 0 to lr over this many optimizer steps."""

    schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Learning rate after warm-up: constant, or decayed to min_lr_ratio x lr at the last step."""

    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    """Final learning rate as a fraction of lr (cosine and linear schedules)."""
