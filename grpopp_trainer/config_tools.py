"""Config helpers shared by every pydantic config: dotted overrides and readable errors.

``apply_overrides(cfg, ["loss.objective.eps_high=0.28"])`` is what ``--set KEY=VALUE`` does on the CLI. An
unknown key is refused with the closest known key suggested, or, when it is a TRL or verl name
(``epsilon_high``, ``actor_rollout_ref.rollout.n``), with grpopp's key for it (``FOREIGN_NAMES``,
the one table of those names); a bad value is refused with pydantic's reason and the dotted key it
belongs to, never silently ignored.

``UserError`` is the base of every error a user can cause (config, data file, plugin, model path,
checkpoint, report, input file): the CLI prints its message as one paragraph and exits with status
2. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


class UserError(ValueError):
    """Something a user got wrong (a config key or value, a data file, a plugin, a model path, a
    checkpoint, an input file); the message names the key, file or line and says how to fix it.
    The CLI prints it as one paragraph and exits with status 2."""


class ConfigError(UserError):
    """A configuration problem; the message names the key and says how to fix it."""


# -- TRL and verl names ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForeignName:
    """A training setting as TRL's ``GRPOConfig`` and verl's config call it, and grpopp's key for it."""

    key: str
    """grpopp's key (a ``TrainConfig`` path), or "" where grpopp has no such setting."""
    trl: tuple[str, ...] = ()
    verl: tuple[str, ...] = ()
    note: str = ""
    """How values translate, where they are not the same."""


FOREIGN_NAMES: tuple[ForeignName, ...] = (
    ForeignName("algorithm.loss.objective.eps_low", ("epsilon",), ("actor_rollout_ref.actor.clip_ratio_low",)),
    ForeignName("algorithm.loss.objective.eps_high", ("epsilon_high",), ("actor_rollout_ref.actor.clip_ratio_high",)),
    ForeignName(
        "algorithm.loss.objective.eps_low",
        (),
        ("actor_rollout_ref.actor.clip_ratio",),
        "verl's clip_ratio sets both bounds: set algorithm.loss.objective.eps_low and .eps_high",
    ),
    ForeignName(
        "algorithm.loss.objective.dual_clip",
        ("delta",),
        ("actor_rollout_ref.actor.clip_ratio_c",),
        "the ratio of a negative-advantage token is bounded by this constant c > 1",
    ),
    ForeignName(
        "algorithm.loss.aggregation.type",
        ("loss_type",),
        ("actor_rollout_ref.actor.loss_agg_mode",),
        "TRL grpo = seq_mean_token_mean, dapo and bnpo = token_mean, dr_grpo = constant_norm (with "
        "algorithm.loss.aggregation.norm_length), cispo = algorithm.loss.objective.type=cispo; verl token-mean = "
        "token_mean, "
        "seq-mean-token-mean = seq_mean_token_mean, seq-mean-token-sum = seq_mean_token_sum, "
        "seq-mean-token-sum-norm = constant_norm. A whole recipe is a preset: algorithm.preset=dr_grpo; TRL's "
        "defaults as a whole: --set algorithm.preset=trl_dapo",
    ),
    ForeignName("algorithm.loss.aggregation.norm_length", (), ("actor_rollout_ref.actor.loss_scale_factor",)),
    ForeignName(
        "algorithm.loss.objective.type",
        ("importance_sampling_level",),
        ("actor_rollout_ref.actor.policy_loss.loss_mode",),
        "TRL token = ppo_clip, sequence = gspo; verl vanilla = ppo_clip, gspo = gspo",
    ),
    ForeignName(
        "algorithm.loss.kl_coef",
        ("beta",),
        ("actor_rollout_ref.actor.kl_loss_coef", "actor_rollout_ref.actor.use_kl_loss"),
        "0 turns the KL term off",
    ),
    ForeignName(
        "algorithm.loss.kl_estimator",
        (),
        ("actor_rollout_ref.actor.kl_loss_type",),
        "verl kl = k1, mse = k2, low_var_kl = k3",
    ),
    ForeignName(
        "algorithm.loss.tis.type",
        ("vllm_importance_sampling_mode", "vllm_importance_sampling_correction"),
        ("algorithm.rollout_correction.rollout_is",),
        "TRL's modes have the same names here; correction false = off; verl token = token_truncate, "
        "sequence = sequence_truncate",
    ),
    ForeignName(
        "algorithm.loss.tis.cap",
        ("vllm_importance_sampling_clip_max", "vllm_importance_sampling_cap"),
        ("algorithm.rollout_correction.rollout_is_threshold",),
    ),
    ForeignName(
        "algorithm.advantage_scale",
        ("scale_rewards",),
        ("algorithm.norm_adv_by_std_in_grpo",),
        "group, batch or none (TRL true = group, false = none; verl false = none)",
    ),
    ForeignName("algorithm.overlong.filter_truncated", ("mask_truncated_completions",)),
    ForeignName("algorithm.overlong.soft_punishment", (), ("reward_model.overlong_buffer.enable",)),
    ForeignName("algorithm.overlong.cache_length", (), ("reward_model.overlong_buffer.len",)),
    ForeignName("algorithm.overlong.penalty_factor", (), ("reward_model.overlong_buffer.penalty_factor",)),
    ForeignName("algorithm.dynamic_sampling.enabled", (), ("algorithm.filter_groups.enable",)),
    ForeignName(
        "algorithm.dynamic_sampling.max_generation_rounds", (), ("algorithm.filter_groups.max_num_gen_batches",)
    ),
    ForeignName("rollout.completions_per_prompt", ("num_generations",), ("actor_rollout_ref.rollout.n",)),
    ForeignName("rollout.max_new_tokens", ("max_completion_length",), ("data.max_response_length",)),
    ForeignName("rollout.temperature", ("temperature",), ("actor_rollout_ref.rollout.temperature",)),
    ForeignName("rollout.top_p", ("top_p",), ("actor_rollout_ref.rollout.top_p",)),
    ForeignName("rollout.top_k", ("top_k",), ("actor_rollout_ref.rollout.top_k",)),
    ForeignName(
        "rollout.engine.type",
        ("use_vllm", "vllm_mode"),
        ("actor_rollout_ref.rollout.name",),
        "hf or vllm; grpopp's vLLM runs colocated in the trainer (TRL vllm_mode=colocate)",
    ),
    ForeignName(
        "rollout.engine.gpu_memory_utilization",
        ("vllm_gpu_memory_utilization",),
        ("actor_rollout_ref.rollout.gpu_memory_utilization",),
    ),
    ForeignName("rollout.engine.sleep_level", ("vllm_enable_sleep_mode",), (), "0 = no sleep mode, 1 or 2 = sleep"),
    ForeignName(
        "rollout.engine.max_model_len", ("vllm_max_model_length",), ("actor_rollout_ref.rollout.max_model_len",)
    ),
    ForeignName(
        "batch.prompts_per_step",
        ("generation_batch_size",),
        ("data.train_batch_size",),
        "grpopp counts prompts: TRL's generation_batch_size counts completions (prompts x num_generations)",
    ),
    ForeignName(
        "batch.micro_batch_size",
        ("per_device_train_batch_size",),
        ("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",),
        "completions per forward and backward pass",
    ),
    ForeignName(
        "batch.mini_batches",
        ("steps_per_generation",),
        ("actor_rollout_ref.actor.ppo_mini_batch_size",),
        "optimizer steps per rollout batch; verl: data.train_batch_size / ppo_mini_batch_size",
    ),
    ForeignName("batch.epochs", ("num_iterations",), ("actor_rollout_ref.actor.ppo_epochs",)),
    ForeignName(
        "",
        ("gradient_accumulation_steps",),
        (),
        "grpopp derives it: completions per mini-batch / batch.micro_batch_size",
    ),
    ForeignName("optim.lr", ("learning_rate",), ("actor_rollout_ref.actor.optim.lr",)),
    ForeignName("optim.warmup_steps", ("warmup_steps",), ("actor_rollout_ref.actor.optim.lr_warmup_steps",)),
    ForeignName("optim.schedule", ("lr_scheduler_type",), (), "constant, cosine or linear"),
    ForeignName("optim.weight_decay", ("weight_decay",), ("actor_rollout_ref.actor.optim.weight_decay",)),
    ForeignName("optim.max_grad_norm", ("max_grad_norm",), ("actor_rollout_ref.actor.grad_clip",)),
    ForeignName("steps", ("max_steps",), ("trainer.total_training_steps",)),
    ForeignName("checkpoint.every", ("save_steps",), ("trainer.save_freq",)),
    ForeignName("checkpoint.keep_last", ("save_total_limit",), ("trainer.max_actor_ckpt_to_keep",)),
    ForeignName("eval.every", ("eval_steps",), ("trainer.test_freq",)),
    ForeignName("logging.run_dir", ("output_dir",), ("trainer.default_local_dir",)),
    ForeignName(
        "logging.wandb",
        ("report_to",),
        ("trainer.logger",),
        "logging.wandb=true for W&B, logging.tensorboard=true for TensorBoard",
    ),
    ForeignName("model.name_or_path", ("model_name_or_path",), ("actor_rollout_ref.model.path",)),
    ForeignName(
        "model.gradient_checkpointing",
        ("gradient_checkpointing",),
        ("actor_rollout_ref.model.enable_gradient_checkpointing",),
    ),
    ForeignName("model.dtype", ("bf16",), (), "bf16=true is model.dtype=bfloat16"),
    ForeignName("model.lora.r", ("lora_r",), ("actor_rollout_ref.model.lora_rank",), "setting it turns LoRA on"),
    ForeignName("model.lora.alpha", ("lora_alpha",), ("actor_rollout_ref.model.lora_alpha",)),
    ForeignName("model.lora.dropout", ("lora_dropout",), ()),
    ForeignName("model.lora.target_modules", ("lora_target_modules",), ("actor_rollout_ref.model.target_modules",)),
    ForeignName("model.lora", ("use_peft",), (), "model.lora.r=16 (or any model.lora key) turns LoRA on"),
    ForeignName(
        "batch.max_tokens_per_micro_batch",
        (),
        ("actor_rollout_ref.actor.ppo_max_token_len_per_gpu", "actor_rollout_ref.actor.use_dynamic_bsz"),
        "the budget in padded positions per pass; setting it turns token-budget micro-batches on",
    ),
    ForeignName("", ("max_prompt_length",), ("data.max_prompt_length",), "grpopp never truncates prompts"),
)
"""TRL ``GRPOConfig`` and verl names of grpopp's settings: an unknown key that is one of them gets
grpopp's key in its error (``--set algorithm.epsilon_high=0.28`` -> ``algorithm.loss.objective.eps_high``)."""


def _foreign_index() -> dict[str, list[tuple[ForeignName, str, str]]]:
    """Every way a foreign name may be typed -> (entry, its framework, the full foreign name). TRL names
    are flat; a verl name matches by any dotted tail of two or more parts, or by its last part when that
    is distinctive (holds '_' or has 8+ letters: ``clip_ratio_high``, not ``n`` or ``enable``)."""
    index: dict[str, list[tuple[ForeignName, str, str]]] = {}
    for entry in FOREIGN_NAMES:
        for name in entry.trl:
            index.setdefault(name, []).append((entry, "TRL's", name))
        for name in entry.verl:
            parts = name.split(".")
            tails = [".".join(parts[i:]) for i in range(len(parts) - 1)]
            if "_" in parts[-1] or len(parts[-1]) >= 8:
                tails.append(parts[-1])
            for tail in tails:
                index.setdefault(tail, []).append((entry, "verl's", name))
    return index


_FOREIGN_INDEX = _foreign_index()


def foreign_name_hint(model: type[BaseModel], path: Sequence[str]) -> str | None:
    """For an unknown dotted key that is a TRL or verl name: which setting of ``model`` it is, and how
    its values translate; None when it is none of them (or several, by a too-short tail)."""
    for start in range(len(path)):
        matches = _FOREIGN_INDEX.get(".".join(path[start:]), [])
        if len({entry.key for entry, _, _ in matches}) == 1:
            entry, framework, name = matches[0]
            note = f" ({entry.note})" if entry.note else ""
            if not entry.key:
                return f"{name} is {framework} name for a setting grpopp does not have{note}"
            return f"{name} is {framework} name; grpopp's key is {_key_under(model, entry.key)}{note}"
    return None


def _key_under(model: type[BaseModel], key: str) -> str:
    """``key`` (a TrainConfig path) as seen from ``model``: "loss.objective.eps_high" under an
    AlgorithmConfig."""
    parts = key.split(".")
    for start in range(len(parts)):
        if any(parts[-1] in parent.model_fields for parent in _models_at(model, parts[start:-1])):
            return ".".join(parts[start:])
    return f"{key} (a training-config key)"


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds: itself, or the model inside list[...] / X | None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _models_at(model: type[BaseModel], path: Sequence[str | int]) -> list[type[BaseModel]]:
    """The models reached by walking ``path`` (field names; list indices are stepped over): one, or
    every member of a variant field (``union_members``); [] when the path leads to no model."""
    current = [model]
    for part in path:
        if isinstance(part, int) or str(part).isdigit():
            continue
        reached: list[type[BaseModel]] = []
        for parent in current:
            field = parent.model_fields.get(str(part))
            if field is None:
                continue
            members = list(union_members(field.annotation).values())
            nested = _nested_model(field.annotation)
            reached += [m for m in members if m not in reached] or ([nested] if nested is not None else [])
        current = reached
    return current


def _fields_at(model: type[BaseModel], path: Sequence[str | int]) -> list[str]:
    """The field names of the models at ``path``, in order, without repeats."""
    return list(dict.fromkeys(name for parent in _models_at(model, path) for name in parent.model_fields))


def unknown_key_message(model: type[BaseModel], path: Sequence[str]) -> str:
    """Why the dotted ``path`` is no key of ``model``: grpopp's key for a TRL/verl name, or the closest
    field and the known ones where the path goes wrong."""
    key = ".".join(path)
    foreign = foreign_name_hint(model, path)
    if foreign is not None:
        return f"unknown key {key!r}: {foreign}"
    depth = 0
    while depth < len(path) - 1 and _models_at(model, path[: depth + 1]):
        depth += 1
    fields = _fields_at(model, path[:depth])
    if not fields:
        return f"unknown key {key!r}"
    part = path[depth]
    close = difflib.get_close_matches(part, fields, n=1)
    hint = f" Did you mean {'.'.join([*path[:depth], close[0]])!r}?" if close else ""
    if depth == 0:
        return f"unknown key {key!r}.{hint} Known keys: {', '.join(fields)}"
    where = ".".join(path[:depth])
    return f"unknown key {key!r}: {where} has no field {part!r}.{hint} Known fields there: {', '.join(fields)}"


@dataclass(frozen=True)
class _ErrorPlace:
    """Where a pydantic error points, as a config key: the location without the variant tags pydantic
    inserts (``objective.cispo.dual_clip`` -> ``objective.dual_clip``), the variants of the last
    variant field passed (tag -> member) and the tag taken there."""

    parts: list[str]
    variants: dict[str, type[BaseModel]]
    tag: str | None


def _error_place(model: type[BaseModel], loc: Sequence[str | int]) -> _ErrorPlace:
    items = [str(part) for part in loc]
    parts: list[str] = []
    variants: dict[str, type[BaseModel]] = {}
    tag: str | None = None
    current: type[BaseModel] | None = model
    index = 0
    while index < len(items):
        part = items[index]
        parts.append(part)
        index += 1
        field = current.model_fields.get(part) if current is not None else None
        if part.isdigit() or field is None:  # a list index stays on the list's model
            current = current if part.isdigit() else None
            continue
        members = union_members(field.annotation)
        if members:
            variants, tag = members, items[index] if index < len(items) and items[index] in members else None
            index += tag is not None
            current = members.get(tag or "")
        else:
            variants, tag, current = {}, None, _nested_model(field.annotation)
    return _ErrorPlace(parts, variants, tag)


def _unknown_variant(key: str, tag: Any, variants: dict[str, type[BaseModel]]) -> str:
    return f"{key}: unknown {tag!r}; choose one of {', '.join(variants)}"


def _variant_message(place: _ErrorPlace, key: str, item: Any) -> str | None:
    """The message of an error about a variant field: an unknown ``type``, none given, or a field the
    chosen variant does not have (naming the variants that have it); None for any other error."""
    if item["type"] == "union_tag_invalid":
        return _unknown_variant(f"{key}.type", item["ctx"]["tag"], place.variants)
    if item["type"] == "union_tag_not_found":
        return f"{key}: say which variant with {key}.type, one of {', '.join(place.variants)}"
    if item["type"] == "extra_forbidden" and place.tag is not None and len(place.parts) >= 2:
        field, member = place.parts[-1], place.variants[place.tag]
        have = [tag for tag, other in place.variants.items() if field in other.model_fields]
        where = f" ({', '.join(have)} {'has' if len(have) == 1 else 'have'} it)" if have else ""
        return (
            f"unknown key {key!r}: the {place.tag!r} variant has no field {field!r}{where}; its fields: "
            f"{', '.join(member.model_fields)}"
        )
    return None


def format_validation_error(error: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line per problem: ``key.path: reason (got value)`` (a rule across fields names its keys in
    its reason); an unknown key of ``model`` says what it may have meant (``unknown_key_message``), and
    an error inside a variant (``union_members``) names the variants."""
    lines = []
    for item in error.errors():
        place = _error_place(model, item["loc"]) if model else _ErrorPlace([str(p) for p in item["loc"]], {}, None)
        key = ".".join(part for part in (prefix, *place.parts) if part != "")
        variant = _variant_message(place, key, item) if place.variants else None
        if variant is not None:
            lines.append(variant)
            continue
        if item["type"] == "extra_forbidden" and model is not None:
            message = unknown_key_message(model, place.parts)
            lines.append(f"{prefix}: {message}" if prefix else message)
            continue
        if item["type"] == "missing" and model is not None:
            fields = {
                name: info
                for parent in _models_at(model, place.parts[:-1])
                for name, info in parent.model_fields.items()
            }
            about = fields.get(place.parts[-1])
            lines.append(
                f"{key} is required: give it a value"
                + (f" ({about.description})" if about and about.description else "")
            )
            continue
        reason = item["msg"].removeprefix("Value error, ")
        got = "" if item["type"] == "value_error" else f" (got {item['input']!r})"
        lines.append(f"{key}: {reason}{got}" if key else f"{reason}{got}")
    return "\n".join(lines)


def validate_config(model: type[ModelT], data: Any, prefix: str = "") -> ModelT:
    """``model.model_validate(data)`` with a ``ConfigError`` that names every bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, prefix, model)) from None


def parse_value(text: str) -> Any:
    """Read an override's value: JSON when it parses (numbers, true/false, lists), else the string."""
    if text.strip().lower() in ("none", "null", "~"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def union_members(annotation: Any) -> dict[str, type[BaseModel]]:
    """Tag -> member of a field that holds a union of models told apart by their ``type`` (a config
    variant such as a loss objective or a rollout engine); empty for any other field."""
    members: dict[str, type[BaseModel]] = {}
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel) and "type" in arg.model_fields:
            for tag in typing.get_args(arg.model_fields["type"].annotation):
                members[str(tag)] = arg
    return members


def optional_model(annotation: Any) -> type[BaseModel] | None:
    """X for a field annotated ``X | None`` with X a model: an optional section (``model.lora``), whose
    sub-keys may be set while it is None (it then starts from X's defaults)."""
    args = typing.get_args(annotation)
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    return models[0] if len(args) == 2 and type(None) in args and len(models) == 1 else None


def _check_path(model: type[BaseModel], path: list[str], data: Any = None) -> dict[str, type[BaseModel]]:
    """Refuse a dotted key that names no field, suggesting the closest one (or grpopp's key for a
    TRL/verl name). Under a variant field (``union_members``) a key is one of the variant's fields: the
    variant ``data`` holds now, or another one a ``type`` override switches to. Returns the variants
    when the key is a variant's ``type``, else {}."""
    current: type[BaseModel] = model
    node = data
    for depth, part in enumerate(path):
        fields = current.model_fields
        if part not in fields:
            raise ConfigError(unknown_key_message(model, path))
        node = node.get(part) if isinstance(node, dict) else None
        if depth == len(path) - 1:
            return {}
        annotation = fields[part].annotation
        members = union_members(annotation)
        if members:
            key, field = ".".join(path[: depth + 1]), path[depth + 1]
            tag = node.get("type") if isinstance(node, dict) else None
            holders = [m for m in [members.get(str(tag)), *members.values()] if m and field in m.model_fields]
            if not holders:
                known = _fields_at(model, path[: depth + 1])
                close = difflib.get_close_matches(field, known, n=1)
                hint = f" Did you mean {key}.{close[0]}?" if close else ""
                raise ConfigError(
                    f"unknown key {'.'.join(path)!r}: no variant of {key} ({', '.join(members)}) has a field "
                    f"{field!r}.{hint} Their fields: {', '.join(known)}"
                )
            if field == "type" and depth + 1 == len(path) - 1:
                return members
            current = holders[0]
            continue
        section = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else optional_model(annotation)
        )
        if section is None:
            raise ConfigError(f"unknown key {'.'.join(path)!r}: {'.'.join(path[: depth + 1])!r} has no sub-keys")
        current = section
    return {}


def set_key(model: type[BaseModel], data: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` of ``data`` (a ``model`` as a dict, e.g. its ``model_dump()``) to ``value``,
    refusing a key that names no field. Setting a variant's ``type`` (``algorithm.loss.objective.type=
    gspo``) keeps the fields both variants have and drops the others."""
    path = key.split(".")
    variants = _check_path(model, path, data)
    target = data
    for part in path[:-1]:
        if target.get(part) is None:  # a section not given, or an optional one that is off (None)
            target[part] = {}
        target = target[part]
    if variants:
        if value is False and "off" in variants:
            value = "off"  # YAML 1.1, and --set, read `off` as false
        if str(value) not in variants:
            raise ConfigError(_unknown_variant(key, value, variants))
        kept = variants[str(value)].model_fields
        for name in [name for name in target if name not in kept]:
            del target[name]
    target[path[-1]] = value


def apply_overrides(config: ModelT, assignments: Sequence[str]) -> ModelT:
    """Return a copy of ``config`` with ``KEY.PATH=VALUE`` assignments applied (``set_key``) and
    re-validated."""
    data: dict[str, Any] = config.model_dump()
    for assignment in assignments:
        key, sep, raw_value = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {assignment!r} is not KEY=VALUE, e.g. loss.objective.eps_high=0.28")
        set_key(type(config), data, key.strip(), parse_value(raw_value))
    return validate_config(type(config), data)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) config file into a dict; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise ConfigError(f"{where}: invalid YAML: {getattr(error, 'problem', error)}") from None
    elif path.suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: invalid TOML: {error}") from None
    else:
        raise ConfigError(f"config file {str(path)!r}: use a .yaml, .yml or .toml file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


_HUB_ID = re.compile(r"(?:[A-Za-z0-9_][\w.\-]*/)?[A-Za-z0-9_][\w.\-]*")


TINY_MODELS: dict[str, Literal["arithmetic", "guess"]] = {"tiny": "arithmetic", "tiny-guess": "guess"}
"""Model names grpopp builds itself (``grpopp.recipes.tiny``): the tiny model warm-started on arithmetic,
or on the ``guess`` game."""


def check_model_source(value: str, what: str = "model.name_or_path", also: str = "") -> None:
    """Refuse a model that is neither "tiny", a local Hugging Face model folder (one with config.json),
    a folder of LoRA adapters (adapter_config.json, e.g. a LoRA run's checkpoint) nor shaped like a hub
    id (NAME or NAMESPACE/NAME), before transformers or the hub see it: a path-looking value that does
    not exist ("/data/model", "./ckpt") is a missing folder, not a repo. ``also`` names the other things
    ``what`` may be (e.g. "a run directory, ")."""
    if value in TINY_MODELS:
        return
    path = Path(value).expanduser()
    fix = (
        f"give {also}a model folder (with config.json), a folder of LoRA adapters (with adapter_config.json), "
        "a hub id (NAME or NAMESPACE/NAME) or 'tiny'"
    )
    if path.is_dir():
        if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
            raise ConfigError(f"{what} {value!r} is a folder without config.json, not a model folder: {fix}")
        return
    if path.exists():
        raise ConfigError(f"{what} {value!r} is a file, not a model folder: {fix}")
    hub_like = _HUB_ID.fullmatch(value) is not None and ".." not in value and "--" not in value
    if not hub_like or len(value) > 96 or value.endswith((".", "-")):
        raise ConfigError(f"{what} {value!r}: no such folder: {fix}")
