"""``TrainConfig``: everything a training run needs, in one validated pydantic model.

Sources, later ones winning: the field defaults, a built-in recipe or a YAML/TOML file
(``--config``), ``--env NAME[:WEIGHT]`` flags, and ``--set KEY.PATH=VALUE`` overrides. ``--env`` flags
choose the mixture: the environments they name, with their weights, each keeping the options the
file gives it (``grpopp.envs.mixture.select_envs``, which ``grpopp eval`` uses too); a name the file does
not hold runs with its default options, and ``resolve_train_config`` returns a note saying so.
``algorithm`` starts from a named preset (``algorithm: {preset: dapo}`` in the file, or ``--set
algorithm.preset=dapo``); any of its fields can be overridden, loss fields also by their short name
(``--set algorithm.eps_high=0.28`` means ``algorithm.loss.objective.eps_high``; ``current_key``). A
preset that fixes optimizer settings (``trl_dapo``: TRL's Adam betas and schedule) supplies them to
``optim`` under the file's own values. Values derived from the config (completions per step,
micro-batches per mini-batch, ...) are computed once in ``derived()`` and shown in the run's start-up
summary.

With no config at all, ``grpopp train`` runs the built-in recipe ``tiny-arithmetic``: a tiny model
built by the project, trained on the ``arithmetic`` environment on a CPU in minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from grpopp.config_tools import ConfigError, apply_overrides, load_config_file, set_key, validate_config
from grpopp.envs.mixture import EnvSpec, parse_env_arg, select_envs
from grpopp.learner.lora import LoraSettings
from grpopp.learner.optim import OptimConfig
from grpopp.objective.algorithms import PRESETS, AlgorithmConfig
from grpopp.objective.losses import FLAT_KEYS as LOSS_FLAT_KEYS
from grpopp.objective.losses import LossConfig, fold_flat_keys
from grpopp.rewards.shaping import LengthLimits
from grpopp.rollout.config import FLAT_KEYS as ROLLOUT_FLAT_KEYS
from grpopp.rollout.config import RolloutConfig

_STRICT = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
RECIPES = ("tiny-arithmetic", "tiny-guess")
"""Built-in configs shipped in ``grpopp/recipes/``."""


class ModelConfig(BaseModel):
    """The policy to train."""

    model_config = _STRICT

    name_or_path: str = "tiny"
    """A local Hugging Face checkpoint directory or a hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct). "tiny": the
    built-in tiny arithmetic model, built and warm-started on first use and cached (~/.cache/grpopp);
    "tiny-guess": the same model warm-started on the ``guess`` game (the ``tiny-guess`` recipe)."""

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter dtype for training (the optimizer keeps the same dtype)."""

    gradient_checkpointing: bool | Literal["selective"] = False
    """Recompute activations in the backward pass to save memory. true: every decoder layer keeps its input
    only and is rerun whole in the backward pass, under LoRA the MLPs of Llama, Mistral, Qwen2 and Qwen3
    layers a tile of tokens at a time; "selective": the layers also keep the outputs of their matrix products and
    attention, and only the element-wise work between them is redone (less memory saved than true, for
    less extra time; ``grpopp.learner.recompute``)."""

    trust_remote_code: bool = False
    """Allow model code from the hub (transformers' trust_remote_code)."""

    fsdp_param_dtype: Literal["bfloat16", "float16"] | None = None
    """Under torchrun (FSDP2): compute in this dtype (parameters are gathered in it), keep float32
    master weights and reduce gradients in float32 (``MixedPrecisionPolicy``). None: compute in
    ``dtype``. Single-process runs ignore it."""

    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flex_attention"] | None = None
    """Attention kernel (transformers' attn_implementation); None: transformers' default (sdpa).
    On CPU, "eager" is faster for very small models such as the built-in tiny one."""

    lora: LoraSettings | None = None
    """Train LoRA adapters (through peft) instead of the whole model, e.g. ``{r: 16, alpha: 32}``; the
    base weights stay frozen, a KL term's reference is the model with its adapters off, checkpoints
    hold the adapters (and optionally the merged model). None: full fine-tuning."""


class BatchConfig(BaseModel):
    """How many samples a step uses and how they are split for updates."""

    model_config = _STRICT

    prompts_per_step: int = Field(16, ge=1)
    """Prompts whose groups make one rollout batch (after dynamic sampling)."""

    mini_batches: int = Field(1, ge=1)
    """Optimizer steps per rollout batch: the batch is split into this many mini-batches of whole
    groups. More than 1 makes later updates off-policy (where clipping matters)."""

    epochs: int = Field(1, ge=1)
    """mu: passes over the rollout batch."""

    micro_batch_size: int = Field(16, ge=1)
    """Completions per forward/backward pass; gradients accumulate over a mini-batch."""

    max_tokens_per_micro_batch: int | None = Field(None, ge=1)
    """Form the learner's passes by a token budget instead of ``micro_batch_size``: a mini-batch's rows
    sorted by length, each pass takes rows while rows x (longest prompt + longest completion), its
    padded positions, stays within this budget (a longer row gets a pass of its own). Less padding and
    passes of even memory; the update is unchanged (the loss normaliser is the mini-batch's). None: a
    fixed ``micro_batch_size`` rows per pass. With ``packing`` the budget counts real tokens."""

    packing: bool = False
    """Padding-free passes: each learner pass runs over its rows' real tokens laid end to end ([1, N],
    position ids restarting with each row), and attention stays within each row. With
    ``model.attn_implementation: flash_attention_2`` (GPU) that is a varlen kernel; sdpa and eager get
    a block-diagonal causal mask of N x N, so no padding is computed in the other layers but the
    attention scores take N^2 memory (keep passes short on CPU, e.g. with ``max_tokens_per_micro_batch``).
    Exact (tested against the padded pass). The shared-prompt pass is off then."""

    skip_zero_advantage: bool = True
    """Without a KL term, leave samples whose advantage is 0 out of the forward and backward passes:
    their gradient is exactly 0, so the update is unchanged (the loss normaliser still counts them).
    Update statistics (entropy, clip fractions, ratios) then cover the samples that carry gradient."""

    share_prompts: bool = True
    """Run each distinct prompt of a micro-batch through the learner once and let its completions
    attend to that prompt's keys and values (exact up to rounding; saves (G-1)/G of the prompt's
    compute). Micro-batches of whole groups share the most. Off under gradient checkpointing."""


class EvalConfig(BaseModel):
    """Held-out evaluation during training (test split of each environment)."""

    model_config = _STRICT

    every: int = Field(0, ge=0)
    """Evaluate every this many steps; 0: only before and after training."""

    tasks_per_env: int = Field(200, ge=0)
    """Held-out tasks per environment (fewer if the test split is smaller); 0 turns held-out
    evaluation off (before, during and after training)."""

    greedy: bool = True
    """Greedy decoding (else sampling with the rollout's temperature)."""

    @property
    def enabled(self) -> bool:
        """Whether the run evaluates at all (``tasks_per_env`` > 0)."""
        return self.tasks_per_env > 0

    @model_validator(mode="after")
    def _check_every(self) -> EvalConfig:
        if self.every > 0 and not self.enabled:
            raise ValueError(
                f"every={self.every} asks for evaluations during training but tasks_per_env=0 turns evaluation "
                "off: set every=0, or tasks_per_env to the number of held-out tasks per environment"
            )
        return self


class CheckpointConfig(BaseModel):
    """Checkpoints in Hugging Face format plus the trainer state to resume from."""

    model_config = _STRICT

    every: int = Field(0, ge=0)
    """Save every this many steps; 0: only at the end."""

    keep_last: int = Field(2, ge=1)
    """Keep only the newest checkpoints."""


class LoggingConfig(BaseModel):
    """Where and how a run is recorded."""

    model_config = _STRICT

    run_dir: str | None = None
    """Run directory; None: runs/<UTC time>. Holds config, metrics.jsonl, samples, checkpoints."""

    samples_per_step: int = Field(4, ge=0)
    """Completions written to samples.jsonl per step."""

    tensorboard: bool = False
    """Also write TensorBoard event files (needs the `tensorboard` package)."""

    wandb: bool = False
    """Also log to Weights & Biases (needs `wandb`; WANDB_MODE=offline works)."""

    wandb_project: str = "grpopp"
    """W&B project name."""

    progress: bool = True
    """In a terminal, show live progress bars (steps with reward, accuracy, length, entropy and ETA;
    evaluations; the tiny model's warm start). Lines are printed either way (see print_every)."""

    print_every: int = Field(10, ge=0)
    """In a terminal, also print a kept line every this many steps (0: never); without a terminal
    every step is printed as a line."""


class TrainConfig(BaseModel):
    """A whole training run."""

    model_config = _STRICT

    model: ModelConfig = ModelConfig()
    """The policy."""

    rollout: RolloutConfig = RolloutConfig()
    """Generation."""

    algorithm: AlgorithmConfig = PRESETS["grpopp"].config
    """The RL algorithm: a preset plus overrides (see `grpopp algo list`)."""

    envs: list[EnvSpec] = [EnvSpec(name="arithmetic")]
    """The environment mixture: name, weight and options (with reward shaping) of each."""

    batch: BatchConfig = BatchConfig()
    """Batch sizes."""

    optim: OptimConfig = OptimConfig()
    """Optimizer and schedule."""

    steps: int = Field(100, ge=1)
    """Training steps (one rollout batch each)."""

    eval: EvalConfig = EvalConfig()
    """Held-out evaluation."""

    checkpoint: CheckpointConfig = CheckpointConfig()
    """Checkpointing."""

    logging: LoggingConfig = LoggingConfig()
    """Run directory and writers."""

    seed: int = 0
    """Seed of everything: model init of the tiny model, data order, sampling."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: "auto" picks CUDA when available."""

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if not self.envs:
            raise ValueError("envs is empty: add at least one environment, e.g. --env arithmetic")
        if self.batch.prompts_per_step % self.batch.mini_batches != 0:
            raise ValueError(
                f"batch.prompts_per_step={self.batch.prompts_per_step} is not divisible by batch.mini_batches="
                f"{self.batch.mini_batches}: mini-batches hold whole groups; make prompts_per_step a multiple"
            )
        overlong = self.algorithm.overlong
        if overlong.max_length is not None and overlong.max_length > self.rollout.max_new_tokens:
            raise ValueError(
                f"algorithm.overlong.max_length={overlong.max_length} exceeds rollout.max_new_tokens="
                f"{self.rollout.max_new_tokens}: completions never get that long; lower it or leave it unset"
            )
        self.algorithm.length_limits(self.rollout.max_new_tokens)  # validates cache_length against the limit
        filtered = self.rollout.top_p < 1.0 or self.rollout.top_k > 0
        if filtered and self.algorithm.loss.tis.uses_sampler:
            raise ValueError(
                f"algorithm.loss.tis.type={self.algorithm.loss.tis.type!r} with rollout.top_p/top_k filtering: the "
                "sampler's log-probs are then those of the truncated distribution, so every importance weight would "
                "carry the nucleus mass instead of the sampler/learner gap. Set algorithm.loss.tis.type=off, or "
                "sample with top_p=1 and top_k=0"
            )
        if getattr(self.rollout.engine, "lora_adapters", False) and self.model.lora is None:
            raise ValueError(
                "rollout.engine.lora_adapters=true hands vLLM the policy's LoRA adapters, but model.lora is not set: "
                "set model.lora (e.g. model.lora.r=16), or rollout.engine.lora_adapters=false"
            )
        return self

    def derived(self) -> Derived:
        """Values computed from the config: shown at start-up, read by the run and the trainer."""
        completions = self.batch.prompts_per_step * self.rollout.completions_per_prompt
        per_mini_batch = completions // self.batch.mini_batches
        optimizer_steps = self.batch.mini_batches * self.batch.epochs
        return Derived(
            completions_per_step=completions,
            completions_per_mini_batch=per_mini_batch,
            micro_batches_per_mini_batch=math.ceil(per_mini_batch / self.batch.micro_batch_size),
            max_tokens_per_micro_batch=self.batch.max_tokens_per_micro_batch,
            optimizer_steps_per_step=optimizer_steps,
            total_optimizer_steps=self.steps * optimizer_steps,
            length_limits=self.algorithm.length_limits(self.rollout.max_new_tokens),
            reference_model=self.algorithm.loss.kl_coef > 0,
        )


@dataclass(frozen=True)
class Derived:
    """Values that follow from a ``TrainConfig`` (``TrainConfig.derived()``), computed in one place."""

    completions_per_step: int
    """prompts_per_step x completions_per_prompt."""
    completions_per_mini_batch: int
    micro_batches_per_mini_batch: int
    """With a fixed ``micro_batch_size``; a token budget decides its passes at each step."""
    max_tokens_per_micro_batch: int | None
    optimizer_steps_per_step: int
    """mini_batches x epochs."""
    total_optimizer_steps: int
    """What the learning-rate schedule spans: steps x optimizer_steps_per_step."""
    length_limits: LengthLimits
    """L_max, L_cache and the overlong weight of reward shaping (``AlgorithmConfig.length_limits``)."""
    reference_model: bool
    """Whether the run needs a reference model (a KL term: kl_coef > 0)."""

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) rows of the start-up summary and ``grpopp train --dry-run``."""
        limits = self.length_limits
        return [
            ("completions per step", str(self.completions_per_step)),
            ("completions per mini-batch", str(self.completions_per_mini_batch)),
            (
                "micro-batches per mini-batch",
                str(self.micro_batches_per_mini_batch)
                if self.max_tokens_per_micro_batch is None
                else f"by token budget (<= {self.max_tokens_per_micro_batch} padded positions each)",
            ),
            ("optimizer steps per training step", str(self.optimizer_steps_per_step)),
            ("total optimizer steps", str(self.total_optimizer_steps)),
            (
                "overlong L_max / L_cache / weight",
                f"{limits.max_length} / {limits.cache_length} / {limits.overlong_factor:g}",
            ),
            ("reference model", "yes (kl_coef > 0)" if self.reference_model else "no (kl_coef = 0)"),
        ]


def recipe_path(name: str) -> Path:
    """The file of a built-in recipe."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; built-in recipes: {', '.join(RECIPES)}")
    return Path(str(resources.files("grpopp") / "recipes" / f"{name}.yaml"))


def _resolve_algorithm(data: dict[str, Any]) -> None:
    """Turn ``algorithm: {preset: NAME, ...overrides}`` (or a bare preset name) into a full algorithm
    config: the preset's values, with each given key set over them as ``--set`` would (``set_key``:
    short names and keys of the flat loss form are read, and choosing another variant keeps the
    preset's values of the fields both variants have)."""
    raw = data.get("algorithm")
    if raw is None:
        return
    if isinstance(raw, str):
        raw = {"preset": raw}
    if not isinstance(raw, dict):
        raise ConfigError("algorithm: give a preset name or a mapping with 'preset' and overrides")
    raw = dict(raw)
    preset = raw.pop("preset", raw.get("name", "grpopp"))
    if preset not in PRESETS:
        raise ConfigError(f"algorithm.preset: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    loss = raw.get("loss") or {}
    if not isinstance(loss, dict):
        raise ConfigError("algorithm.loss: give a mapping of loss settings, e.g. loss: {objective: {type: gspo}}")
    loss = {**loss, **{key: raw.pop(key) for key in list(raw) if key in _LOSS_SHORT_NAMES}}
    raw["loss"] = fold_flat_keys(loss, complete=False)
    resolved = {"algorithm": PRESETS[preset].config.model_dump()}
    given = [(f"algorithm.{key}", value) for key, value in _leaves(raw)]
    for key, value in sorted(given, key=lambda item: not item[0].endswith(".type")):  # variants first
        set_key(TrainConfig, resolved, key, value)
    data["algorithm"] = resolved["algorithm"]
    overridden = any(key != "algorithm.name" for key, _ in given)
    data["algorithm"]["name"] = f"{preset} + overrides" if overridden else preset
    preset_optim = PRESETS[preset].optim
    if preset_optim:  # the preset's optimizer settings, under the file's own
        own = data.get("optim") or {}
        if not isinstance(own, dict):
            raise ConfigError("optim: give a mapping of optimizer settings, e.g. optim: {lr: 1.0e-6}")
        data["optim"] = {**preset_optim, **own}


def _leaves(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every non-mapping value of nested mappings."""
    leaves: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict):  # an empty mapping sets nothing
            leaves += _leaves(value, f"{prefix}{key}.")
        else:
            leaves.append((f"{prefix}{key}", value))
    return leaves


def _renamed_keys() -> dict[str, str]:
    """Keys of the flat loss and rollout forms -> their key now (``FLAT_KEYS`` of each)."""
    renamed = {f"algorithm.loss.{old}": f"algorithm.loss.{new}" for old, new in LOSS_FLAT_KEYS.items()}
    return renamed | {f"rollout.{old}": f"rollout.{new}" for old, new in ROLLOUT_FLAT_KEYS.items()}


_RENAMED = _renamed_keys()
_LOSS_SHORT_NAMES = (LossConfig.model_fields.keys() | LOSS_FLAT_KEYS.keys()) - AlgorithmConfig.model_fields.keys()
"""Loss keys that may stand right under ``algorithm`` (``algorithm.eps_high``, ``algorithm.kl_coef``)."""


def current_key(key: str) -> str:
    """A dotted config key as it is now. Loss fields have short names under ``algorithm``
    (``algorithm.eps_high``, ``algorithm.objective.type``), and the keys of the loss and rollout from
    before their variants were unions still work (``algorithm.loss.eps_high`` ->
    ``algorithm.loss.objective.eps_high``, ``rollout.engine=vllm`` -> ``rollout.engine.type``,
    ``rollout.vllm.max_model_len`` -> ``rollout.engine.max_model_len``)."""
    parts = key.split(".")
    if parts[0] == "algorithm" and len(parts) > 1 and parts[1] in _LOSS_SHORT_NAMES:
        parts.insert(1, "loss")
    for length in range(len(parts), 1, -1):
        old = ".".join(parts[:length])
        new = _RENAMED.get(old)
        # A tag (objective -> objective.type) renames only the key itself; objective.eps_high stays.
        if new is not None and (length == len(parts) or not new.startswith(f"{old}.")):
            return ".".join([new, *parts[length:]])
    return ".".join(parts)


def _take_preset_overrides(data: dict[str, Any], overrides: list[str]) -> list[str]:
    """Apply ``--set algorithm.preset=NAME`` to the file's data (the file's algorithm overrides then
    apply to that preset) and return the other overrides."""
    rest = []
    for assignment in overrides:
        key, sep, value = assignment.partition("=")
        if key.strip() != "algorithm.preset" or not sep:
            rest.append(assignment)
            continue
        raw = data.get("algorithm")
        raw = dict(raw) if isinstance(raw, dict) else {}
        raw.pop("name", None)
        data["algorithm"] = {**raw, "preset": value.strip()}
    return rest


def current_overrides(assignments: list[str]) -> list[str]:
    """``--set`` assignments with their keys as they are now (``current_key``)."""
    expanded = []
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        expanded.append(f"{current_key(key.strip())}{sep}{value}" if sep else assignment)
    return expanded


RUN_CONFIG_FILE = "config.yaml"
"""The resolved config that ``grpopp train`` writes into each run directory."""


def is_run_dir(path: Path) -> bool:
    return (path / RUN_CONFIG_FILE).is_file()


def load_run_config(run_dir: Path) -> TrainConfig:
    """The resolved config of a run directory (resume, evaluation); errors name the file."""
    path = run_dir / RUN_CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {RUN_CONFIG_FILE} there; is it a grpopp run directory?")
    try:
        return validate_config(TrainConfig, load_config_file(path))
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def _file_envs(data: dict[str, Any]) -> list[EnvSpec]:
    """The environments the config file lists (none when it has no ``envs``), validated."""
    raw = data.get("envs") or []
    if not isinstance(raw, list):
        raise ConfigError("envs: give a list of environments, e.g. envs: [{name: gsm8k, weight: 0.7}]")
    return [validate_config(EnvSpec, item, f"envs.{index}") for index, item in enumerate(raw)]


@dataclass(frozen=True)
class ResolvedConfig:
    """A run's config and what resolving it has to tell the user."""

    config: TrainConfig
    notes: list[str]
    """Lines to print before the run: e.g. an --env name the config file does not hold."""


def load_train_config(
    config_file: str | Path | None = None,
    envs: list[str] | None = None,
    overrides: list[str] | None = None,
) -> TrainConfig:
    """Build the run's config: file (or the tiny-arithmetic recipe when no file is given), then --env
    flags, then --set overrides. Every error names the key and how to fix it. ``resolve_train_config``
    also returns the notes to print."""
    return resolve_train_config(config_file, envs, overrides).config


def resolve_train_config(
    config_file: str | Path | None = None,
    envs: list[str] | None = None,
    overrides: list[str] | None = None,
) -> ResolvedConfig:
    """``load_train_config``, with the notes for the user (``select_envs``)."""
    path = Path(config_file) if config_file is not None else recipe_path("tiny-arithmetic")
    if config_file is not None and str(config_file) in RECIPES:
        path = recipe_path(str(config_file))
    data = load_config_file(path)
    overrides = _take_preset_overrides(data, list(overrides or []))
    _resolve_algorithm(data)
    notes: list[str] = []
    if envs:
        selection = select_envs(_file_envs(data), [parse_env_arg(text) for text in envs])
        data["envs"] = [spec.model_dump() for spec in selection.specs]
        notes += selection.notes
    config = validate_config(TrainConfig, data)
    if overrides:
        expanded = current_overrides(overrides)
        config = apply_overrides(config, expanded)
        changed = [a for a in expanded if a.startswith("algorithm.") and not a.startswith("algorithm.name=")]
        if changed and not config.algorithm.name.endswith("+ overrides"):
            algorithm = config.algorithm.model_copy(update={"name": f"{config.algorithm.name} + overrides"})
            config = config.model_copy(update={"algorithm": algorithm})
    return ResolvedConfig(config, notes)
