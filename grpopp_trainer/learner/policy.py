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

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grpopp.learner import lora
from grpopp.learner.distributed import SINGLE, DistInfo
from grpopp.learner.logprobs import linear_selected_logprobs, selected_logprobs
from grpopp.learner.optim import OptimConfig
from grpopp.rollout.base import distinct_rows
from grpopp.rollout.hf import cache_keyword, returned_cache


@dataclass
class TokenBatch:
    """Completions laid out for the learner (see the module docstring)."""

    input_ids: torch.Tensor  # [B, P + T] left-padded prompt, right-padded completion
    attention_mask: torch.Tensor  # [B, P + T] 1 on real tokens
    completion_mask: torch.Tensor  # [B, T] 1 on completion tokens the model sampled (an episode's env tokens: 0)
    prompt_length: int  # P
    prompt_index: torch.Tensor  # [B] long: which distinct prompt row b continues (0 .. U-1)
    first_rows: torch.Tensor  # [U] long: the first row of each distinct prompt

    @property
    def completion_length(self) -> int:
        return int(self.completion_mask.shape[1])


def make_token_batch(
    prompts: list[list[int]],
    completions: list[list[int]],
    pad_token_id: int,
    device: torch.device,
    model_masks: Sequence[Sequence[bool] | None] = (),
) -> TokenBatch:
    """Lay out (prompt, completion) token-id pairs for one forward pass. ``model_masks``: per row,
    where the model sampled the completion's tokens (an episode; None or absent: every token), so
    the environment's tokens of an episode are in the forward pass but out of ``completion_mask``."""
    masks_of = list(model_masks) or [None] * len(completions)
    prompt_length = max(len(p) for p in prompts)
    completion_length = max(1, max(len(c) for c in completions))
    rows, masks, completion_masks = [], [], []
    first_rows, prompt_index = distinct_rows(prompts)
    for prompt, completion, model_mask in zip(prompts, completions, masks_of, strict=True):
        left, right = prompt_length - len(prompt), completion_length - len(completion)
        rows.append([pad_token_id] * left + prompt + completion + [pad_token_id] * right)
        masks.append([0] * left + [1] * (len(prompt) + len(completion)) + [0] * right)
        sampled = [1] * len(completion) if model_mask is None else [int(m) for m in model_mask]
        if len(sampled) != len(completion):
            raise ValueError(f"a model mask of {len(sampled)} entries for a completion of {len(completion)} tokens")
        completion_masks.append(sampled + [0] * right)
    return TokenBatch(
        input_ids=torch.tensor(rows, dtype=torch.long, device=device),
        attention_mask=torch.tensor(masks, dtype=torch.long, device=device),
        completion_mask=torch.tensor(completion_masks, dtype=torch.float32, device=device),
        prompt_length=prompt_length,
        prompt_index=torch.tensor(prompt_index, dtype=torch.long, device=device),
        first_rows=torch.tensor(first_rows, dtype=torch.long, device=device),
    )


FUSED_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe"})
"""Architectures whose logits are exactly their output layer applied to the decoder's last hidden
state (no soft-capping, scaling or bias): their log-probs are computed from the hidden states with
the output layer fused in (``linear_selected_logprobs``)."""


def completion_logprobs(
    model: PreTrainedModel,
    batch: TokenBatch,
    temperature: float,
    with_entropy: bool = False,
    share_prompts: bool = True,
    force_shared: bool = False,
    packed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [B, T] of the completion tokens under ``model`` at ``temperature`` (the sampler's
    scaling, so TIS compares like with like), and optionally the entropy [B, T] (detached).

    ``packed``: one pass over the rows' real tokens laid end to end, without padding
    (``_packed_features``); it overrides ``share_prompts``.

    ``share_prompts``: one pass per distinct prompt (see the module docstring) when prompts repeat;
    the flat pass otherwise, and under gradient checkpointing (which turns the KV cache off).
    ``force_shared``: the shared path also when no prompt repeats (under FSDP every rank must run as
    many forward passes as the others).

    Memory: for the architectures of ``FUSED_HEAD_MODELS`` (``output_layer``) the logits never exist
    beyond a chunk of positions: the decoder's hidden states [B, T, H] go through the output layer a
    chunk at a time (``linear_selected_logprobs``); for others the logits [B, T, V] are formed in the
    model's dtype and reduced a chunk at a time (``selected_logprobs``), with no float32 copy.
    """
    head = output_layer(model)
    shared = share_prompts and (force_shared or len(batch.first_rows) < len(batch.prompt_index))
    if packed:
        features = _packed_features(model, batch, hidden=head is not None)
    elif shared and not (model.training and _checkpointing(model)):
        features = _shared_prompt_features(model, batch, hidden=head is not None)
    else:
        features = _flat_features(model, batch, hidden=head is not None)
    targets = batch.input_ids[:, batch.prompt_length :]  # [B, T]
    if head is not None:
        return linear_selected_logprobs(features, head, targets, temperature, with_entropy)
    return selected_logprobs(features, targets, temperature, with_entropy)


def output_layer(model: PreTrainedModel) -> torch.Tensor | None:
    """The output layer's weight [V, H] when the log-probs can be computed from the hidden states
    (a transformers model of ``FUSED_HEAD_MODELS`` with a bias-free linear head, not sharded by FSDP:
    the sharded root's parameters are gathered only by its own forward pass), else None."""
    if not isinstance(model, PreTrainedModel):  # e.g. a peft wrapper: its base_model is not the decoder
        return None
    head = model.get_output_embeddings()
    if (
        getattr(model.config, "model_type", None) not in FUSED_HEAD_MODELS
        or isinstance(model, FSDPModule)
        or type(head) is not torch.nn.Linear
        or head.bias is not None
    ):
        return None
    return head.weight


def _checkpointing(model: PreTrainedModel) -> bool:
    """Whether activation (gradient) checkpointing is on; transformers 5 renamed the attribute."""
    name = (
        "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else "is_gradient_checkpointing"
    )
    return bool(getattr(model, name, False))


def _pass(model: PreTrainedModel, hidden: bool, keep: int | torch.Tensor, **inputs: Any) -> tuple[torch.Tensor, Any]:
    """One forward pass: (its logits [B, keep, V] (the last ``keep`` positions, or those a tensor
    lists), output), or with ``hidden`` (the decoder's last hidden states [B, L, H] (after the final
    norm), output) from the decoder alone."""
    if hidden:
        output = model.base_model(**inputs)
        return output.last_hidden_state, output
    output = model(**inputs, logits_to_keep=keep)
    return output.logits, output


def _flat_features(model: PreTrainedModel, batch: TokenBatch, hidden: bool) -> torch.Tensor:
    """Logits [B, T, V] that predict the completion tokens (or the hidden states [B, T, H] they come
    from), from one pass over [B, P + T]."""
    position_ids = (batch.attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # [B, P + T]
    length = batch.completion_length
    features, _ = _pass(  # keep columns P-1 .. P+T-1; the last one predicts past the end
        model,
        hidden,
        length + 1,
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position_ids,
        use_cache=False,
    )
    # Slice explicitly: a model that ignores logits_to_keep returns all P + T columns, and gather would
    # then silently read prompt positions.
    return features[:, -(length + 1) : -1, :]  # [B, T, V or H]


def _packed_features(model: PreTrainedModel, batch: TokenBatch, hidden: bool) -> torch.Tensor:
    """``_flat_features`` from one pass over [1, N]: the real tokens of every row laid end to end (N =
    all of them, no padding), position ids restarting at 0 with each row and no attention mask.
    transformers then keeps attention within each row (``masking_utils.find_packed_sequence_indices``:
    a varlen kernel for flash-attention, a block-diagonal causal mask for the others). The features
    predicting each row's completion tokens are gathered back into the [B, T] layout; the padded
    positions there repeat a real one and are masked out by ``completion_mask``."""
    real = batch.attention_mask.bool()  # [B, P + T]
    lengths = real.sum(dim=1)  # [B]
    starts = torch.cumsum(lengths, dim=0) - lengths  # [B]: where each row begins in the packed row
    prompt_lengths = real[:, : batch.prompt_length].sum(dim=1)  # [B]
    positions = torch.cat([torch.arange(int(n), device=lengths.device) for n in lengths])  # [N]
    steps = torch.arange(batch.completion_length, device=lengths.device)  # [T]
    completion_lengths = lengths - prompt_lengths  # [B]
    last = (starts + lengths - 2).clamp(min=0).unsqueeze(1)  # [B, 1]: the position predicting a row's last token
    index = torch.minimum((starts + prompt_lengths - 1).unsqueeze(1) + steps, last)  # [B, T]
    index = torch.where(steps < completion_lengths.unsqueeze(1), index, last)
    needed, inverse = torch.unique(index, return_inverse=True)  # the logits pass keeps these positions only
    features, _ = _pass(
        model,
        hidden,
        needed,
        input_ids=batch.input_ids[real].unsqueeze(0),  # [1, N]: row-major, so each row's tokens in order
        attention_mask=None,
        position_ids=positions.unsqueeze(0),
        use_cache=False,
    )
    return features[0, index if hidden else inverse]  # [B, T, V or H]


def _shared_prompt_features(model: PreTrainedModel, batch: TokenBatch, hidden: bool) -> torch.Tensor:
    """``_flat_features``, with one prompt pass [U, P] per distinct prompt."""
    prompt_length, length = batch.prompt_length, batch.completion_length
    position_ids = (batch.attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # [B, P + T]
    first = batch.first_rows  # [U]
    prompt_features, prompt_pass = _pass(
        model,
        hidden,
        1,
        input_ids=batch.input_ids[first, :prompt_length],  # [U, P]
        attention_mask=batch.attention_mask[first, :prompt_length],
        position_ids=position_ids[first, :prompt_length],
        use_cache=True,
    )
    first_token = prompt_features[:, -1:, :][batch.prompt_index]  # [B, 1, V or H]: predict token 0
    if length == 1:
        return first_token
    cache = returned_cache(prompt_pass)
    cache.reorder_cache(batch.prompt_index)  # [U, H, P, D] -> [B, H, P, D] per layer, differentiable
    end = prompt_length + length - 1  # the last completion token predicts nothing
    completion_features, _ = _pass(
        model,
        hidden,
        length - 1,
        input_ids=batch.input_ids[:, prompt_length:end],  # [B, T - 1]
        attention_mask=batch.attention_mask[:, :end],  # [B, P + T - 1]: past and new columns
        position_ids=position_ids[:, prompt_length:end],
        use_cache=True,
        **{cache_keyword(model): cache},
    )
    rest = completion_features[:, -(length - 1) :, :]  # [B, T - 1, V or H]: predict tokens 1..T-1
    return torch.cat([first_token, rest], dim=1)  # [B, T, V or H]


class Policy:
    """The trained model, its AdamW optimizer and its learning-rate schedule (set by position)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        optim: OptimConfig,
        total_optimizer_steps: int,
        device: torch.device,
        dist_info: DistInfo = SINGLE,
        fsdp_param_dtype: torch.dtype | None = None,
    ) -> None:
        """With ``dist_info.enabled`` the model is sharded with FSDP2 (``fully_shard``): each decoder
        layer, then the root. Gradients are summed across ranks, not averaged: the loss of every
        rank is already divided by the global ``num_items``, so the sum is the single-process gradient."""
        torch.nn.Module.to(model, device)  # transformers wraps .to() in a decorator mypy cannot read
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.optim_config = optim
        self.dist = dist_info
        if dist_info.enabled:
            shard_model(model, fsdp_param_dtype)
        parameters = [p for p in model.parameters() if p.requires_grad]
        # One fused kernel for all parameters where torch has it (CPU and CUDA): the same AdamW update,
        # a few times faster than the per-tensor loop on small models. Sharded (DTensor) parameters take
        # torch's default implementation.
        fused = not dist_info.enabled and all(
            p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters
        )
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

    def token_batch(
        self,
        prompts: list[list[int]],
        completions: list[list[int]],
        model_masks: Sequence[Sequence[bool] | None] = (),
    ) -> TokenBatch:
        return make_token_batch(prompts, completions, self.pad_token_id, self.device, model_masks)

    def set_schedule_position(self, optimizer_step: int) -> None:
        """Set the learning rate of planned optimizer step ``optimizer_step`` (0-based). The position
        comes from the training step, so skipped updates never shift the schedule."""
        factor = _lr_factor(optimizer_step, self.optim_config, self.total_optimizer_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = self.optim_config.lr * factor

    def step(self) -> tuple[float, bool]:
        """Clip gradients and take an optimizer step; return (grad norm, applied). A non-finite
        gradient norm skips the step (the gradients are dropped, never applied). Sharded: the norm
        is the global one (of the DTensor gradients), the same on every rank."""
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        total = torch.nn.utils.clip_grad_norm_(parameters, self.optim_config.max_grad_norm)
        norm = float(total.full_tensor() if isinstance(total, DTensor) else total)
        applied = math.isfinite(norm)
        if applied:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, applied

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state with parameters named by their fully qualified names, whole (not
        sharded): the same format from any number of ranks, so a run resumes on another world size.
        Sharded: a collective, every rank must call it."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return {"optimizer": get_optimizer_state_dict(self.model, self.optimizer, options=options)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load ``state_dict()``'s output (every rank reads the whole state and keeps its shard)."""
        options = StateDictOptions(full_state_dict=self.dist.enabled)
        set_optimizer_state_dict(self.model, self.optimizer, optim_state_dict=state["optimizer"], options=options)

    def gathered_state(self, merged: bool = False) -> dict[str, dict[str, torch.Tensor]]:
        """What ``save_pretrained`` writes, gathered from the shards onto the CPU (a collective: every
        rank calls it). "model": the whole model's parameters, or a LoRA policy's adapters alone;
        "merged" (LoRA, with ``merged``): the merged model's weights."""
        if not lora.has_lora(self.model):
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state = get_model_state_dict(self.model, options=options)
            return {"model": {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}}
        gathered = {"model": lora.adapter_state(self.model)}
        if merged:
            gathered["merged"] = lora.merged_state(self.model)
        return gathered

    def save_pretrained(
        self, path: Path, gathered: dict[str, dict[str, torch.Tensor]] | None = None, merged: bool = False
    ) -> None:
        """Hugging Face format, loadable by a single process: the whole model, or a LoRA policy's
        adapters in peft's format, with ``merged`` also the merged model in ``path/merged``. Sharded:
        pass ``gathered_state(merged)`` (gathered by every rank); only the caller writes."""
        if self.dist.enabled and gathered is None:
            raise ValueError("a sharded policy saves the gathered gathered_state(); pass it")
        state = gathered or {}
        if lora.has_lora(self.model):
            lora.save_adapters(self.model, path, state.get("model"))
            if merged:
                whole = state.get("merged") or lora.merged_state(self.model)
                self._save_whole(path / lora.MERGED_FOLDER, whole)
                self.tokenizer.save_pretrained(path / lora.MERGED_FOLDER)
        else:
            self._save_whole(path, state.get("model"))
        self.tokenizer.save_pretrained(path)

    def _save_whole(self, path: Path, state: dict[str, torch.Tensor] | None) -> None:
        """The whole model (``state``: its weights, when not the model's own) with its config."""
        self.model.save_pretrained(path, state_dict=state)
        if self.dist.enabled:  # FSDP renamed the class ("FSDP" + name): restore it
            config_file = path / "config.json"
            config = json.loads(config_file.read_text())
            config["architectures"] = [_unwrapped_class(self.model).__name__]
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @contextmanager
    def full_parameters(self) -> Iterator[None]:
        """Unsharded parameters on every rank for generation and evaluation, without collectives in
        the forward passes (ranks decode different lengths); resharded afterwards. Nothing to do on a
        single process."""
        if not self.dist.enabled:
            yield
            return
        fsdp_modules = [m for m in self.model.modules() if isinstance(m, FSDPModule)]
        for module in fsdp_modules:
            module.set_reshard_after_forward(False, recurse=False)
        for module in fsdp_modules:
            module.unshard()
        try:
            yield
        finally:
            for module in fsdp_modules:
                module.reshard()
                module.set_reshard_after_forward(True, recurse=False)


def shard_model(model: PreTrainedModel, param_dtype: torch.dtype | None = None) -> None:
    """FSDP2: each decoder layer (transformers' ``_no_split_modules`` names them), then the root.
    ``param_dtype``: mixed precision, compute in it with gradients reduced in float32."""
    policy = (
        MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        if param_dtype
        else MixedPrecisionPolicy()
    )
    block_names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} names no decoder layer class in _no_split_modules; FSDP needs one to shard"
        )
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    for module in model.modules():  # each layer is its own FSDP group: set every one
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # sum across ranks: each loss is over the global num_items
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)


def _unwrapped_class(model: torch.nn.Module) -> type:
    """The model's own class under FSDP2's dynamic subclass."""
    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule) and c.__name__ in type(model).__name__)


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
