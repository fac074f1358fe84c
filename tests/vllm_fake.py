"""A stand-in for ``vllm.LLM`` that isolates grpopp's vLLM adapter where the real vLLM cannot go.

The real vLLM is tested in ``tests/test_vllm_real.py`` (``make test-vllm``, vLLM's CPU build). This
stand-in stays for what that build cannot do, and for the unit tests of the adapter that run in the
main suite without vLLM: sleep mode (levels 1 and 2: vLLM's CPU platform has none), the exact order
of sleep, wake-up, loading and cache resets, and the torchrun path with sleep level 2
(``tests/dist_vllm_worker.py``).

Its "model" is a second copy of the policy that ``reload_weights`` fills by Hugging Face name, as
vLLM's worker does; ``generate`` samples with that copy through the ``hf`` engine (temperature and
seed as asked), scores prompts for the integrity probe (``prompt_logprobs``), and answers in vLLM's
output format; every call is recorded, so tests read the order of calls off ``calls``.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import torch

from grpopp.rollout.base import SamplingParams
from grpopp.rollout.hf import HFEngine


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


class FakeWorker:
    """vLLM's worker as ``collective_rpc`` functions see it: the in-place reload, and the model."""

    def __init__(self, inner: FakeVLLMModel) -> None:
        self.inner = inner

    def reload_weights(self, weights_iterator: Any, is_checkpoint_format: bool = True) -> None:
        self.inner.load_weights(list(weights_iterator))

    def get_model(self) -> torch.nn.Module:
        return self.inner.model


class FakeLLM:
    """Stands in for ``vllm.LLM``: records calls, samples with its own model copy."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any) -> None:
        self.inner = FakeVLLMModel(copy.deepcopy(model))
        self.engine = HFEngine(self.inner.model, tokenizer)
        self.calls: list[Any] = []
        self.requests: list[tuple[list[int], dict[str, Any]]] = []

    def collective_rpc(self, method: Any, timeout: float | None = None, args: tuple[Any, ...] = ()) -> list[Any]:
        self.calls.append("load")  # the only collective_rpc grpopp makes: the weight reload
        return [method(FakeWorker(self.inner), *args)]

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
            if kwargs.get("prompt_logprobs") is not None:  # the integrity probe: score the prompt
                outputs.append(SimpleNamespace(prompt_logprobs=self.prompt_logprobs(ids), outputs=[]))
                continue
            self.requests.append((ids, kwargs))
            params = SamplingParams(
                max_new_tokens=kwargs["max_tokens"], temperature=kwargs["temperature"], seed=kwargs["seed"]
            )
            (completions,) = self.engine.generate([self.engine.tokenizer.decode(ids)], params, n=kwargs["n"])
            outputs.append(SimpleNamespace(outputs=[vllm_output(c) for c in completions]))
        return outputs

    @torch.no_grad()
    def prompt_logprobs(self, ids: list[int]) -> list[Any]:
        """vLLM's ``prompt_logprobs`` with 0 extra: None, then {token: Logprob} for every later token."""
        logits = self.inner.model(torch.tensor([ids])).logits[0, :-1].float()
        scores = torch.log_softmax(logits, dim=-1)
        return [None] + [{t: SimpleNamespace(logprob=float(scores[i, t]))} for i, t in enumerate(ids[1:])]


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
