"""A stand-in for ``vllm.LLM`` that isolates grpopp's vLLM adapter in tests without a GPU.

Its "model" is a second copy of the policy that ``load_weights`` fills by Hugging Face name, as
vLLM's does; ``generate`` samples with that copy through the ``hf`` engine (temperature and seed as
asked) and answers in vLLM's output format; every call is recorded, so tests read the order of
sleep, wake-up, loading and cache resets off ``calls``.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import torch

from grpopp_trainer.rollout.base import SamplingParams
from grpopp_trainer.rollout.hf import HFEngine


class FakeVLLMModel:
    """vLLM's copy of the model: ``load_weights`` copies tensors in by Hugging Face name."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.loaded: list[str] = []
        self.batches: list[list[str]] = []  # the names of each load_weights call
        self.dtypes: set[torch.dtype] = set()

    def load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        state = self.model.state_dict()
        self.batches.append([name for name, _ in weights])
        for name, tensor in weights:
            state[name].copy_(tensor)  # KeyError on a name vLLM would not know
            self.loaded.append(name)
            self.dtypes.add(tensor.dtype)


class FakeLLM:
    """Stands in for ``vllm.LLM``: records calls, samples with its own model copy."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any) -> None:
        self.inner = FakeVLLMModel(copy.deepcopy(model))
        self.engine = HFEngine(self.inner.model, tokenizer)
        self.calls: list[Any] = []
        self.requests: list[tuple[list[int], dict[str, Any]]] = []

    def apply_model(self, func: Any) -> list[Any]:
        self.calls.append("load")
        return [func(self.inner)]

    def wake_up(self, tags: list[str] | None = None) -> bool:
        self.calls.append(("wake_up", tuple(tags or ())))
        return True

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))

    def reset_prefix_cache(self) -> bool:
        self.calls.append("reset")
        return True

    def generate(self, prompts: Any, sampling_params: Any = None, use_tqdm: bool = True) -> list[Any]:
        self.calls.append("generate")
        outputs = []
        for request, kwargs in zip(prompts, sampling_params, strict=True):
            ids = request["prompt_token_ids"]
            self.requests.append((ids, kwargs))
            params = SamplingParams(
                max_new_tokens=kwargs["max_tokens"], temperature=kwargs["temperature"], seed=kwargs["seed"]
            )
            (completions,) = self.engine.generate([self.engine.tokenizer.decode(ids)], params, n=kwargs["n"])
            outputs.append(SimpleNamespace(outputs=[vllm_output(c) for c in completions]))
        return outputs


def vllm_output(completion: Any, finish_reason: str | None = None) -> SimpleNamespace:
    """A ``Completion`` in vLLM's ``CompletionOutput`` shape: logprobs as [{token id: Logprob}]."""
    positions = [
        {token: SimpleNamespace(logprob=lp, rank=1), token + 1: SimpleNamespace(logprob=-9.0, rank=2)}
        for token, lp in zip(completion.token_ids, completion.logprobs, strict=True)
    ]
    return SimpleNamespace(
        token_ids=tuple(completion.token_ids),
        text=completion.text,
        logprobs=positions,
        finish_reason=finish_reason or completion.finish_reason,
    )
