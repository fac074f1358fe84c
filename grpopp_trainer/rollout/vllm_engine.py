"""The ``vllm`` rollout engine: a vLLM engine colocated with the trainer on the same GPU.

Only this module imports vLLM, and only when a ``VLLMEngine`` is built, so the rest of grpopp runs
without it (CPU machines, the test suite). What needs no GPU is kept in plain functions that the
tests check on their own: the mapping of ``SamplingParams`` to vLLM's, the conversion of vLLM's
outputs to ``Completion`` records, and the order of sleep, wake-up and weight loading.

Design (as TRL's "colocate" mode and verl's hybrid engine, arXiv 2409.19256):

1. vLLM runs inside the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the weights
   are handed over as tensors on the same device, without serialisation.
2. Sampler log-probs are vLLM's "processed" log-probs: those of the distribution each token was
   drawn from, after temperature and top-k/top-p (vLLM's default returns the raw model's), which is
   what truncated importance sampling needs (``logprobs_mode="processed_logprobs"``).
3. After each optimizer step ``sync_weights`` loads the policy's parameters into vLLM's model
   (``load_weights`` takes Hugging Face parameter names, as when it reads a checkpoint) and clears
   the prefix cache, whose entries were computed with the old weights.
4. Sleep mode frees vLLM's memory while the trainer runs: level 1 moves the weights to host memory
   and drops the KV cache; level 2 drops both (the weights come back by ``sync_weights`` anyway).
   ``generate`` wakes the engine up, loads the weights if they are not current, samples and puts
   it back to sleep.
5. Under ``torchrun`` every rank has its own engine on its own GPU, built with vLLM's
   ``external_launcher`` backend (as TRL's colocate mode and verl): tensor parallel size 1, so the
   ranks are independent data-parallel samplers, each generating the prompts of its own share of
   the groups. The policy is sharded by FSDP2, so ``sync_weights`` gathers each parameter
   (``DTensor.full_tensor()``, a collective: every rank loads the same parameters in the same order)
   and hands them to vLLM in buckets of ``weight_sync_bucket_mb``, never the whole model at once.
   Every rank calls ``generate`` as often as the others, also with no prompts, so a pending
   weight load (after sleep level 2) is a collective every rank joins.

Shapes: none cross this boundary as tensors except the parameters themselves.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grpopp_trainer.rollout.base import Completion, FinishReason, Prompt, SamplingParams, VLLMSettings, encode_prompt


class _LLM(Protocol):
    """The part of ``vllm.LLM`` this engine uses."""

    def generate(self, prompts: Any, sampling_params: Any = None, use_tqdm: bool = True) -> list[Any]: ...
    def apply_model(self, func: Any) -> list[Any]: ...
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


class VLLMEngine:
    """Rollout engine over a colocated ``vllm.LLM``; implements ``RolloutEngine``."""

    samples_from_policy = False  # vLLM decodes with its own copy of the weights

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        source: str,
        settings: VLLMSettings,
        *,
        dtype: str = "bfloat16",
        seed: int = 0,
        distributed: bool = False,
        llm: _LLM | None = None,
        make_sampling_params: Callable[..., Any] | None = None,
    ) -> None:
        """``model`` is the trainer's policy (its weights are loaded into vLLM at once and after each
        step); ``source`` the checkpoint folder or hub id vLLM builds its copy of the model from;
        ``dtype`` vLLM's compute dtype (the learner's); ``seed`` this rank's sampling seed.
        ``distributed``: under torchrun (one engine per rank, see 5. above; every rank must build
        its engine at the same time). ``llm`` and ``make_sampling_params`` stand in for
        ``vllm.LLM`` and ``vllm.SamplingParams`` in tests that isolate the adapter from vLLM."""
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.dtype = getattr(torch, dtype)
        self.distributed = distributed
        if llm is None or make_sampling_params is None:
            llm, make_sampling_params = _load_vllm(source, settings, dtype, seed, distributed)
        self.llm: _LLM = llm
        self.make_sampling_params: Callable[..., Any] = make_sampling_params
        self.weights_on_gpu = True  # a fresh engine is awake
        self.kv_cache_on_gpu = True
        self.weights_current = False
        self.sync_weights()

    def sync_weights(self) -> None:
        """Load the policy's current parameters into vLLM and drop the stale prefix cache."""
        if not self.weights_on_gpu:
            self.llm.wake_up(tags=["weights"])  # the KV cache stays freed until the next generate
            self.weights_on_gpu = True
        bucket_bytes = self.settings.weight_sync_bucket_mb * 2**20
        for bucket in weight_buckets(policy_weights(self.model, self.dtype), bucket_bytes):
            self.llm.apply_model(lambda vllm_model, bucket=bucket: vllm_model.load_weights(bucket))
        if self.kv_cache_on_gpu:
            self.llm.reset_prefix_cache()
        self.weights_current = True

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
        # other ranks are in) and sleeps, so every rank's engine stays in the same state (5.).
        outputs = self.awake_generate(requests, sampling)
        return [[to_completion(ids, o) for o in out.outputs] for ids, out in zip(prompt_ids, outputs, strict=True)]

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
        outputs = self.llm.generate(list(requests), list(sampling), use_tqdm=False) if requests else []
        if self.settings.sleep_level > 0:
            self.llm.sleep(level=self.settings.sleep_level)
            self.weights_on_gpu = self.kv_cache_on_gpu = False
            self.weights_current = self.settings.sleep_level == 1  # level 2 dropped them
        return outputs


def _load_vllm(
    source: str, settings: VLLMSettings, dtype: str, seed: int, distributed: bool
) -> tuple[_LLM, Callable[..., Any]]:
    """A ``vllm.LLM`` in this process, with the settings the engine relies on, and vLLM's
    ``SamplingParams`` class."""
    if not torch.cuda.is_available():
        raise RuntimeError("rollout.engine='vllm' needs a CUDA GPU; use rollout.engine=hf on this machine")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # 1. weights handed over in-process
    try:
        import vllm
    except ImportError as exc:
        raise RuntimeError(
            "rollout.engine='vllm' needs the vllm extra: pip install -e '.[vllm]' (GPU machines only)"
        ) from exc
    # 5. Under torchrun: vLLM joins the existing process group (RANK, LOCAL_RANK, MASTER_ADDR from
    # torchrun) with one engine per rank; tensor parallel size 1 makes each an independent sampler.
    launcher = {"distributed_executor_backend": "external_launcher", "tensor_parallel_size": 1} if distributed else {}
    llm: _LLM = vllm.LLM(
        model=source,
        dtype=dtype,
        seed=seed,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        enable_sleep_mode=settings.sleep_level > 0,
        max_model_len=settings.max_model_len,
        enforce_eager=settings.enforce_eager,
        enable_prefix_caching=settings.enable_prefix_caching,
        logprobs_mode="processed_logprobs",  # 2.
        **launcher,
    )
    return llm, vllm.SamplingParams
