"""LoRA through peft, on the policy model itself: adapters in, adapters off for the KL reference, merged
weights for vLLM and for export.

grpopp keeps the policy a plain transformers model: ``add_lora`` injects peft's LoRA layers into it
(``peft.get_peft_model``, keeping the model it wraps; peft freezes every base weight). The rest of
grpopp then needs nothing special:

- forward passes run the adapters (log-probs, the ``hf`` engine's generation);
- ``adapters_disabled(model)`` switches them off, so with a KL term the reference policy is the base
  model inside the policy, not a second copy of it (peft's ``disable_adapter``, as TRL and verl do);
- ``save_adapters(model, folder)`` writes peft's format (``adapter_config.json``,
  ``adapter_model.safetensors``, as ``PeftModel.save_pretrained`` does): ``peft.PeftModel.from_pretrained``
  reads it, and so do ``grpopp train --resume`` and ``grpopp eval``;
- ``merged_weights(model)`` yields the base model's parameters with each adapter folded in,
  W + (alpha / r) B A (peft's ``lora.Linear.get_delta_weight``), under the base model's names: what
  the ``vllm`` engine loads after each step (``handoff``), and what ``save_merged`` writes. The base
  weights are never changed in place, so merging loses nothing to rounding.

Only LoRA on linear layers (``target_modules``; "all-linear" is every linear layer but the output
layer, peft's rule) is offered: it is what every peer trains, and its merge is the one written here.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from grpopp.config_tools import ConfigError
from grpopp.learner.distributed import whole_tensor
from grpopp.rollout.base import PolicyHandoff

ADAPTER_CONFIG = "adapter_config.json"
"""peft's adapter config file: a folder with it holds adapters, not a whole model."""
MERGED_FOLDER = "merged"
"""A checkpoint's sub-folder with the merged model (``model.lora.save_merged``)."""


class LoraSettings(BaseModel):
    """LoRA adapters (Hu et al. 2021, arXiv:2106.09685) trained in place of the whole model, through peft."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    r: int = Field(16, ge=1)
    """Rank of each adapter's update B A."""

    alpha: int = Field(32, ge=1)
    """The update is scaled by alpha / r (peft's lora_alpha)."""

    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapters' input while training. Keep 0 for RL: with dropout, a mini-batch after
    the first is scored by a different random network than the one that sampled."""

    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    """Linear layers that get adapters: "all-linear" (every one but the output layer), or module name
    suffixes such as [q_proj, k_proj, v_proj, o_proj]."""

    save_merged: bool = False
    """Checkpoints also hold the merged model (base + adapters) in a ``merged/`` folder, loadable without
    peft by transformers and vLLM. The adapters alone are always saved."""


def require_peft() -> None:
    """Raise a clear error when peft is missing."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ConfigError(
            "model.lora trains LoRA adapters through peft, which is not installed: pip install peft (or grpopp's "
            "'lora' extra), or remove model.lora"
        ) from None


def add_lora(model: torch.nn.Module, settings: LoraSettings) -> None:
    """Inject fresh LoRA adapters (B = 0: the model's outputs are unchanged) and freeze the base weights."""
    require_peft()
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )
    # transformers' own PEFT integration (model.add_adapter) would do the same, but its releases demand
    # the newest peft; peft's API is stable across them. The wrapper is dropped: the layers it injected
    # and the config it records (model.peft_config) stay on the model.
    with _quiet_peft():
        try:
            get_peft_model(model, config)
        except ValueError as error:  # peft names target modules the model lacks
            raise ConfigError(f"model.lora.target_modules={settings.target_modules!r}: {error}") from None
    check_lora_layers(model)


def check_targets(model_folder: str | Path, settings: LoraSettings) -> None:
    """Raise ``ConfigError`` when ``settings`` cannot be applied to the model of a local folder (a target
    module it lacks, or one that is not linear), before anything is loaded: the model is built from
    its config on the meta device, which holds no weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_folder))
    with torch.device("meta"):
        add_lora(AutoModelForCausalLM.from_config(config), settings)


def load_lora(model: torch.nn.Module, folder: str | Path, trainable: bool) -> None:
    """Load the adapters saved in ``folder`` (``save_adapters``) into ``model``, its base model, in place;
    ``trainable``: to train on (else frozen too)."""
    require_peft()
    from peft import PeftModel

    with _quiet_peft():
        PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)
    check_lora_layers(model)


def save_adapters(model: torch.nn.Module, folder: Path, state: Mapping[str, torch.Tensor] | None = None) -> None:
    """Write the adapters in peft's format (what ``PeftModel.save_pretrained`` writes): the adapter
    config and the adapter weights, named as in a ``PeftModel``. ``state``: the model's state dict when
    already gathered (FSDP); it may hold only the trainable tensors."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    config: Any = getattr(model, "peft_config")["default"]  # noqa: B009  # set by peft, unknown to mypy
    weights = get_peft_model_state_dict(model, state_dict=dict(state) if state is not None else None)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    prefixed = {f"base_model.model.{name}": t.detach().cpu().contiguous() for name, t in weights.items()}
    save_file(prefixed, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft reads transformers' renamed ``is_gradient_checkpointing``: not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def check_lora_layers(model: torch.nn.Module) -> None:
    """Every adapter must sit on a linear layer (the merge here is the one for linear layers)."""
    from peft.tuners.lora import Linear, LoraLayer

    others = [name for name, m in model.named_modules() if isinstance(m, LoraLayer) and not isinstance(m, Linear)]
    if others:
        raise ConfigError(
            f"LoRA adapters on layers that are not linear ({', '.join(others[:3])}): grpopp trains LoRA on linear "
            "layers only; set model.lora.target_modules to linear layers (e.g. all-linear, or [q_proj, v_proj])"
        )


def has_lora(model: torch.nn.Module) -> bool:
    """Whether ``model`` carries LoRA adapters (``add_lora`` or ``load_lora``)."""
    return "default" in (getattr(model, "peft_config", None) or {})


def is_adapter_folder(path: str | Path) -> bool:
    """Whether ``path`` is a local folder of adapters (peft's format) rather than a whole model."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def base_model_of(folder: str | Path) -> str:
    """The base model an adapter folder was trained on (its ``base_model_name_or_path``)."""
    config = json.loads((Path(folder) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{Path(folder) / ADAPTER_CONFIG} names no base_model_name_or_path: which model to load it on")
    return str(base)


@contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """The base model: every adapter off inside the block (the KL reference of a LoRA run); what
    ``PeftModel.disable_adapter`` does, on the model it wrapped."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def merged_weights(model: torch.nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(base model's name, whole tensor) of every parameter and persistent buffer, with each adapter
    folded into its layer's weight: W + scaling B A, computed in float32 (peft's
    ``lora.Linear.get_delta_weight`` for a layer that is not fan-in-fan-out). The adapters' own
    tensors are not yielded. Sharded (FSDP2 ``DTensor``) tensors are gathered: a collective, run by
    every rank in the same order. ``dtype`` casts floating-point results."""
    from peft.tuners.lora import LoraLayer

    adapter_layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    persistent = set(model.state_dict(keep_vars=True))
    named = [*model.named_parameters(), *((n, b) for n, b in model.named_buffers() if n in persistent)]
    for name, tensor in named:
        if ".lora_" in name:
            continue
        owner, _, leaf = name.rpartition(".base_layer.")
        layer = adapter_layers.get(owner) if leaf == "weight" else None
        whole = whole_tensor(tensor)
        if layer is not None and not layer.merged:
            merged = whole.to(torch.float32, copy=True)  # never the parameter itself: it stays unmerged
            for adapter in [a for a in layer.active_adapters if a in layer.lora_A]:
                a_weight: Any = layer.lora_A[adapter].weight  # [r, in]
                b_weight: Any = layer.lora_B[adapter].weight  # [out, r]
                merged += whole_tensor(b_weight).float() @ whole_tensor(a_weight).float() * layer.scaling[adapter]
            whole = merged.to(whole.dtype)
        if dtype is not None and whole.is_floating_point():
            whole = whole.to(dtype)
        yield (f"{owner}.{leaf}" if owner else name), whole


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable (adapter) tensors by name, whole and on the CPU: gathered from FSDP2 shards, a
    collective every rank runs."""
    return {name: whole_tensor(p).cpu() for name, p in model.named_parameters() if p.requires_grad}


def merged_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``merged_weights`` as a dict on the CPU (what ``save_merged`` writes)."""
    return {name: tensor.cpu() for name, tensor in merged_weights(model)}


def handoff(model: torch.nn.Module) -> PolicyHandoff:
    """What an engine with its own copy of the model (vLLM) needs from a LoRA policy: the merged
    weights, and the adapters alone (gathered from FSDP shards under torchrun)."""

    def save(folder: Path) -> None:
        save_adapters(model, folder, adapter_state(model))

    rank = int(getattr(model, "peft_config")["default"].r)  # noqa: B009  # set by peft
    return PolicyHandoff(weights=lambda dtype: merged_weights(model, dtype), adapter_rank=rank, save_adapters=save)
