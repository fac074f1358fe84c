"""The ``hf`` rollout engine: batched sampling with a transformers model, on CPU or GPU.

The engine samples from the very model object the trainer optimises, so there are no weights to
copy after an optimizer step (``sync_weights`` does nothing). It runs its own decoding loop instead
of ``model.generate`` so that the record of each token is exactly what the loss needs:

1. Prompts are left-padded, ``n`` copies per prompt, in chunks of at most ``batch_size`` rows.
   Position ids come from the attention mask (cumsum - 1), so a padded row sees the same positions
   as the prompt alone.
2. One prefill forward pass over the distinct prompts of a chunk fills the KV cache, which is then
   copied to the ``n`` rows of each prompt (``Cache.reorder_cache``); then one token per step, fed
   back with the cache.
3. Each token is drawn from softmax(filter(logits / temperature)) with top-k, then top-p applied
   (the order of transformers and vLLM); its log-prob under that same distribution is recorded for
   truncated importance sampling. Temperature 0 is greedy: argmax of the raw logits, recorded with
   the log-softmax of the raw logits.
4. A row finishes at EOS (kept) or once its decoded text contains a stop string (the token that
   completed it is kept); its result stops growing. Finished rows are fed padding until a quarter
   of the batch has finished, then leave the batch (``COMPACT_BELOW``). A row cut at
   ``max_new_tokens`` finishes with reason "length".

Shapes: B rows of a chunk (prompt copies), b <= B rows still in the decoding batch, P padded prompt
tokens, T generated tokens, V vocab.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from grpopp.rollout.base import Completion, EngineContext, Prompt, SamplingParams, distinct_rows, encode_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class HFEngineConfig(BaseModel):
    """The ``hf`` engine (``rollout.engine.type=hf``): transformers, on CPU or GPU, sampling from the
    trainer's own policy module."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    type: Literal["hf"] = "hf"

    batch_size: int = Field(64, ge=1)
    """Sequences generated at once."""

    def build(self, context: EngineContext) -> HFEngine:
        # Chat models may end a turn with another token than the tokenizer's EOS (e.g. <|eot_id|>): stop on all.
        tokenizer, model = context.tokenizer, context.model
        eos: set[int] = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
        generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos.update([generation_eos] if isinstance(generation_eos, int) else list(generation_eos or []))
        return HFEngine(model, tokenizer, batch_size=self.batch_size, eos_token_ids=sorted(eos) or None)


STOP_WINDOW_SLACK = 8
"""Extra tokens decoded before a stop string's worst-case span (4 byte tokens per character)."""

COMPACT_BELOW = 0.75
"""Once at most this fraction of a batch's rows is still running, the finished ones leave the batch
(their cache rows dropped), so later steps compute only rows that still generate."""


@dataclass(frozen=True)
class _RowResult:
    """What the decoding loop produced for one row of a chunk."""

    token_ids: list[int]
    logprobs: list[float]
    stopped: bool
    """True when the row ended at EOS or a stop string, False when cut at max_new_tokens."""


def cache_keyword(model: PreTrainedModel) -> str:
    """The name ``model.forward`` takes the KV cache by: ``cache`` since transformers 5.24, which
    deprecates ``past_key_values`` (and warns on every run); older releases and remote-code models
    know only ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(output: Any) -> Any:
    """The KV cache of a forward pass's output, under its current name (``cache``) or the old one."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the top-k, then outside the top-p nucleus; [B, V] -> [B, V].

    Top-k keeps ties of the k-th value. Top-p keeps, in order of decreasing probability, each token
    whose preceding mass is below ``top_p``: the smallest set that reaches it (never empty).
    """
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))  # [B, V]
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, V]
        sorted_probs = sorted_logits.softmax(dim=-1)  # [B, V]
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # [B, V]
        drop_sorted = mass_before >= top_p  # [B, V]
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # [B, V], vocab order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row and its log-prob under the distribution it was drawn from.

    logits: [B, V] raw next-token logits. Returns (tokens [B], logprobs [B]).
    """
    logits = logits.float()  # [B, V]
    if params.temperature == 0.0:
        tokens = logits.argmax(dim=-1)  # [B]
        logprobs = torch.log_softmax(logits, dim=-1)  # [B, V]
    else:
        filtered = filter_logits(logits / params.temperature, params.top_k, params.top_p)  # [B, V]
        logprobs = torch.log_softmax(filtered, dim=-1)  # [B, V]
        tokens = torch.multinomial(logprobs.exp(), 1, generator=generator).squeeze(-1)  # [B]
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


def left_pad(rows: Sequence[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into (input_ids [B, P], attention_mask [B, P])."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [B, P]
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, P]
    for b, row in enumerate(rows):
        input_ids[b, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[b, width - len(row) :] = 1
    return input_ids.to(device), attention_mask.to(device)


class HFEngine:
    """Rollout engine over a transformers causal LM; implements ``RolloutEngine``."""

    samples_from_policy = True

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int = 64,
        device: torch.device | None = None,
        eos_token_ids: Sequence[int] | None = None,
    ) -> None:
        """``device`` is where inputs go (default: the model's device; the model must already be there).

        ``eos_token_ids`` end a row; default: the tokenizer's ``eos_token_id``. Chat models whose turn
        ends with another token (e.g. ``<|im_end|>``) should list both.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if eos_token_ids is None:
            eos_token_ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = device if device is not None else model.device
        self.eos_token_ids = list(eos_token_ids)
        self.pad_token_id = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos_token_ids or [0])[0]
        )
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))  # follows torch.manual_seed
        accepts_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._last_logits_only: dict[str, int] = {"logits_to_keep": 1} if accepts_keep else {}
        self._cache_keyword = cache_keyword(model)

    def sync_weights(self) -> None:
        """Nothing to do: the engine samples from the very model object the trainer optimises."""

    def close(self) -> None:
        """Nothing to release: the model is the trainer's."""

    def generate(self, prompts: list[Prompt], params: SamplingParams, n: int = 1) -> list[list[Completion]]:
        """``n`` completions for each prompt: result[i][j] is completion j of prompts[i]."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        prompt_ids = [self.encode_prompt(prompt) for prompt in prompts]
        rows = [ids for ids in prompt_ids for _ in range(n)]  # row i * n + j is copy j of prompt i
        completions = self.generate_ids(rows, params)
        return [completions[i * n : (i + 1) * n] for i in range(len(prompts))]

    def generate_ids(self, rows: list[list[int]], params: SamplingParams) -> list[Completion]:
        """One completion continuing each row of token ids, taken as they are (an episode's next turn)."""
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        was_training = self.model.training
        self.model.train(False)  # eval mode: no dropout
        try:
            with torch.inference_mode():
                results = [
                    result
                    for start in range(0, len(rows), self.batch_size)
                    for result in self._generate_chunk(rows[start : start + self.batch_size], params)
                ]
        finally:
            self.model.train(was_training)
        return [self._completion(rows[r], result) for r, result in enumerate(results)]

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt (see ``rollout.base.encode_prompt``)."""
        return encode_prompt(self.tokenizer, prompt)

    def _forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, cache: object
    ) -> tuple[torch.Tensor, object]:
        """One cached forward pass; returns (last-position logits [B, V], updated cache)."""
        out = self.model(
            input_ids=input_ids,  # [B, P] at prefill, [B, 1] after
            attention_mask=attention_mask,  # [B, P + t]
            position_ids=position_ids,  # same shape as input_ids
            use_cache=True,
            **{self._cache_keyword: cache},
            **self._last_logits_only,
        )
        return out.logits[:, -1, :], returned_cache(out)

    def _generate_chunk(self, rows: list[list[int]], params: SamplingParams) -> list[_RowResult]:
        """Decode one chunk of left-padded rows, one token per step, until all finish or max_new_tokens."""
        input_ids, attention_mask = left_pad(rows, self.pad_token_id, self.device)  # [B, P]
        position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)  # [B, P]
        first, index = distinct_rows(rows)
        if len(first) < len(rows):  # the n copies of a prompt: prefill each once, copy its cache
            first_t = torch.tensor(first, device=self.device)  # [U]
            index_t = torch.tensor(index, device=self.device)  # [B]
            logits, cache = self._forward(input_ids[first_t], attention_mask[first_t], position_ids[first_t], None)
            cache.reorder_cache(index_t)  # type: ignore[attr-defined]  # [U, H, P, D] -> [B, H, P, D]
            logits = logits[index_t]  # [B, V]
        else:
            logits, cache = self._forward(input_ids, attention_mask, position_ids, None)  # [B, V]
        num_rows, max_new = len(rows), params.max_new_tokens
        tokens = torch.full((num_rows, max_new), self.pad_token_id, dtype=torch.long, device=self.device)  # [B, T]
        logprobs = torch.zeros((num_rows, max_new), dtype=torch.float32, device=self.device)  # [B, T]
        lengths = torch.zeros(num_rows, dtype=torch.long, device=self.device)  # [B]
        finished = torch.zeros(num_rows, dtype=torch.bool, device=self.device)  # [B]
        eos = torch.tensor(self.eos_token_ids, dtype=torch.long, device=self.device)
        generated: list[list[int]] = [[] for _ in rows]  # host copy, only kept for stop strings
        live = torch.arange(num_rows, device=self.device)  # [b] the chunk row each batch row decodes
        for step in range(max_new):
            next_tokens, next_logprobs = sample_next_tokens(logits, params, self.generator)  # [b], [b]
            active = ~finished[live]  # [b]
            tokens[live, step] = torch.where(active, next_tokens, self.pad_token_id)
            logprobs[live, step] = torch.where(active, next_logprobs, 0.0)
            lengths[live] += active.long()
            done = active & torch.isin(next_tokens, eos)  # [b]
            if params.stop:
                done |= self._stop_string_hits(generated, live.tolist(), next_tokens, active, params.stop)
            finished[live] |= done
            if step == max_new - 1 or bool(finished.all()):
                break
            running = ~finished[live]  # [b]
            if int(running.sum()) <= COMPACT_BELOW * len(live):  # drop finished rows from the batch
                keep = running.nonzero().squeeze(-1)  # [b']
                cache.reorder_cache(keep)  # type: ignore[attr-defined]
                attention_mask, position_ids, live = attention_mask[keep], position_ids[keep], live[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(live), 1))], dim=-1)
            position_ids = position_ids[:, -1:] + 1  # [b, 1]
            logits, cache = self._forward(tokens[live, step : step + 1], attention_mask, position_ids, cache)
        return [
            _RowResult(token_ids=ids[:length], logprobs=lps[:length], stopped=stop)
            for ids, lps, length, stop in zip(
                tokens.tolist(), logprobs.tolist(), lengths.tolist(), finished.tolist(), strict=True
            )
        ]

    def _stop_string_hits(
        self,
        generated: list[list[int]],
        rows: list[int],
        step_tokens: torch.Tensor,
        active: torch.Tensor,
        stop: tuple[str, ...],
    ) -> torch.Tensor:
        """Append this step's tokens to the active rows and flag those whose text now holds a stop string.

        ``rows[b]`` is the chunk row that batch row b decodes. Only the tail of a row is decoded: a stop
        string of c characters spans at most 4c byte tokens, and any earlier occurrence would already
        have finished the row. Returns [b] bool.
        """
        window = 4 * max(len(s) for s in stop) + STOP_WINDOW_SLACK
        hits = [False] * len(rows)
        for b, (row, token, is_active) in enumerate(zip(rows, step_tokens.tolist(), active.tolist(), strict=True)):
            if not is_active:
                continue
            generated[row].append(token)
            text = self._decode(generated[row][-window:])
            hits[b] = any(s in text for s in stop)
        return torch.tensor(hits, dtype=torch.bool, device=step_tokens.device)

    def _decode(self, token_ids: list[int]) -> str:
        """Text of token ids, special tokens removed."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        if not isinstance(text, str):
            raise TypeError(f"tokenizer.decode returned {type(text).__name__}, not str")
        return text

    def _completion(self, prompt_ids: list[int], result: _RowResult) -> Completion:
        """The public record of one row."""
        return Completion(
            prompt_ids=prompt_ids,
            token_ids=result.token_ids,
            text=self._decode(result.token_ids),
            logprobs=result.logprobs,
            finish_reason="stop" if result.stopped else "length",
        )
