"""The GRPO++ training loop.

One training step, as numbered in ``Trainer.train_step``:

1. Sample prompts from the environment mixture (exact quotas over trained prompts, deterministic).
2. Generate G completions per prompt with the rollout engine, recording the sampler's log-probs.
3. Verify and shape rewards with each prompt's environment (the same code evaluation uses).
4. Mask samples the verifier could not judge (timeout, error), or whose reward is not a finite
   number (status error), and count them by status.
5. Dynamic sampling (DAPO, arXiv 2503.14476, sec. 3.2): drop groups whose rewards are all equal and
   generate again until the batch is full or ``max_generation_rounds`` is reached; each round asks
   for what is expected to fill the batch, and groups with signal beyond it are carried to the next
   step with their pi_old (``grpopp.training.dynamic_sampling``).
6. Overlong filtering (DAPO sec. 3.4): optionally mask the loss of truncated completions.
7. Advantages from the group statistics of valid samples (``compute_advantages``).
8. mu epochs over mini-batches of whole groups; micro-batches accumulate gradients with the
   mini-batch's ``num_items`` normaliser, so the gradient equals a single pass over the mini-batch.
9. Optimizer step with gradient clipping; a non-finite loss or gradient skips the step (counted).
   The rollout engine then takes the new weights (vLLM; the hf engine samples from the policy itself).
10. Metrics (with ``time``, the run's wall-clock seconds so far, and ``completions_generated``);
    periodic evaluation and checkpoints.

A reference model is built only when ``kl_coef > 0``. On-policy updates (one mini-batch, one epoch)
reuse the training forward pass for pi_old, as the ratio is then 1 by construction; a group carried
from an earlier step brings the pi_old stored when it was generated.
"""

from __future__ import annotations

import copy
import math
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from grpopp.envs.base import Environment, Task
from grpopp.envs.mixture import Mixture, build_mixture
from grpopp.evaluation.evaluate import EvalSettings, episode_summary, evaluate_engine
from grpopp.learner import checkpoint as ckpt
from grpopp.learner import lora
from grpopp.learner.distributed import barrier, gather_objects, gather_shares, my_share
from grpopp.learner.policy import Policy, TokenBatch, completion_logprobs
from grpopp.objective.advantages import compute_advantages
from grpopp.objective.losses import policy_loss
from grpopp.progress import quiet_transformers_bars
from grpopp.rewards.shaping import LengthLimits
from grpopp.rewards.types import VERIFY_STATUSES
from grpopp.rollout.base import EpisodeStats, RolloutEngine, SamplingParams
from grpopp.rollout.episodes import episode_record, rollout
from grpopp.rollout.groups import Group, Sample, score_groups
from grpopp.training.batch import CollectStats, TrainTensors, pad, to_tensors, token_budget_micro_batches
from grpopp.training.config import TrainConfig
from grpopp.training.dynamic_sampling import Batch, BatchFiller, OldLogprobs
from grpopp.training.run_log import RunLog, truncate_log


@dataclass
class StepResult:
    """What one training step did."""

    metrics: dict[str, float]
    groups: list[Group] = field(default_factory=list)
    """The groups trained on."""
    generated: list[Group] = field(default_factory=list)
    """Every group generated, also those dynamic sampling dropped."""


class Trainer:
    """Runs ``TrainConfig.steps`` GRPO++ steps on a policy with a rollout engine and a mixture."""

    def __init__(
        self,
        config: TrainConfig,
        policy: Policy,
        engine: RolloutEngine,
        run_dir: Path,
        reference: PreTrainedModel | None = None,
        mixture: Mixture | None = None,
        started: float | None = None,
    ) -> None:
        """``mixture``: the environments of ``config.envs``, when the caller has built them already.
        ``started``: when this process began the run (``time.perf_counter()``; default now)."""
        self.config = config
        self.policy = policy
        self.engine = engine
        self.run_dir = run_dir
        self.reference = reference
        self.mixture: Mixture = mixture if mixture is not None else build_mixture(config.envs, seed=config.seed)
        self.envs: dict[str, Environment[Any]] = {env.name: env for env in self.mixture.envs}
        self.limits: LengthLimits = config.derived().length_limits
        self.filler = BatchFiller(config.algorithm.dynamic_sampling, [env.name for env in self.mixture.envs])
        self.step = 0
        self.skipped_updates = 0
        self.started = time.perf_counter() if started is None else started
        self.time_before = 0.0
        """Wall-clock seconds of the run before this process (a resumed run: its checkpoint's)."""
        self.dist = policy.dist
        self.log = RunLog(run_dir, config.logging, config.model_dump(mode="json"), enabled=self.dist.is_main)

    # -- the loop --------------------------------------------------------------------------------------

    def run_seconds(self, now: float | None = None) -> float:
        """Wall-clock seconds the run has taken until ``now`` (``time.perf_counter()``, default: now),
        summed over the processes that produced its steps (a resumed run continues from its
        checkpoint's count)."""
        return self.time_before + (time.perf_counter() if now is None else now) - self.started

    def train_step(self) -> StepResult:
        cfg, algorithm, step_started = self.config, self.config.algorithm, time.perf_counter()
        if self.policy.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.policy.device)  # the step's peak, logged at its end
        # 1-6. Prompts, completions, rewards, masks, dynamic sampling, overlong filtering.
        batch, stats = self.collect_groups()
        groups = batch.groups
        if not groups:  # every group had equal rewards in every round: nothing to learn from
            self.skipped_updates += 1
            return StepResult(self._step_metrics(batch, stats, {}, 0.0, step_started), groups, batch.generated)
        tensors = to_tensors(groups, algorithm.overlong.filter_truncated, batch.old_logprobs)
        # 7. Advantages over the valid samples of each group.
        advantages = compute_advantages(
            tensors.rewards,
            cfg.rollout.completions_per_prompt,
            scale=algorithm.advantage_scale,
            eps=algorithm.advantage_eps,
            valid=tensors.valid,
        ).float()
        # 8-9. mu epochs x mini-batches x micro-batches, then clipped optimizer steps.
        started = time.perf_counter()
        update_metrics = self.update(tensors, advantages)
        metrics = self._step_metrics(batch, stats, update_metrics, time.perf_counter() - started, step_started)
        return StepResult(metrics, groups, batch.generated)

    def collect_groups(self) -> tuple[Batch, CollectStats]:
        """Steps 1-6: fill the batch with groups, over several generation rounds under dynamic sampling."""
        cfg, stats = self.config, CollectStats()
        names = [env.name for env in self.mixture.envs]
        quotas = dict.fromkeys(names, 0)
        for env_index in self.mixture.quotas(cfg.batch.prompts_per_step):  # 1. this step's share of each
            quotas[names[env_index]] += 1

        def generate(round_index: int, counts: dict[str, int]) -> list[Group]:
            tasks = [task for env, count in counts.items() for task in self.mixture.draw(names.index(env), count)]
            params = cfg.rollout.sampling_params(seed=self._seed("rollout", round_index))
            groups = self._generate_and_score(tasks, params, stats)  # 2-3.
            for group in groups:
                for sample in group.samples:  # 4. statuses, counted; invalid ones are masked later
                    stats.statuses[sample.reward.status] += 1
            return groups

        filter_truncated = cfg.algorithm.overlong.filter_truncated
        batch = self.filler.fill(  # 5.
            self.step, quotas, generate, lambda group: group.has_signal(filter_truncated), self._old_logprobs
        )
        return batch, stats

    def _old_logprobs(self, groups: list[Group]) -> list[OldLogprobs]:
        """The learner's log-probs of ``groups`` now, before this step's update: the pi_old of groups
        carried to a later step. Every rank computes its share and all get every group's."""
        tensors = to_tensors(groups, filter_truncated=False)
        computed = self._logprobs_no_grad(self.policy.model, tensors)
        plan, _ = self._micro_batches(tensors, list(range(len(computed))))
        mine = [row for micro in plan for row in micro]  # the rows this rank computed
        whole: dict[int, list[float]] = {}
        for share in gather_objects(self.dist, {row: computed[row].tolist() for row in mine}):
            whole.update(share)
        size = self.config.rollout.completions_per_prompt
        return [[whole[row] for row in range(g * size, (g + 1) * size)] for g in range(len(groups))]

    def _generate_and_score(self, tasks: list[Task], params: SamplingParams, stats: CollectStats) -> list[Group]:
        """Generate and score ``tasks``; with several ranks each takes tasks rank, rank + world, ...
        (whole groups, its own sampling seed) and the scored groups are gathered in task order."""
        mine, params = my_share(self.dist, tasks), params.for_rank(self.dist.rank)
        started = time.perf_counter()
        with self._sampling():
            completions = rollout(self.engine, mine, self.envs, params, n=self.config.rollout.completions_per_prompt)
        stats.generation_seconds += time.perf_counter() - started
        started = time.perf_counter()
        scored = score_groups(mine, completions, self.envs, self.limits)
        stats.scoring_seconds += time.perf_counter() - started
        groups = gather_shares(self.dist, scored)
        stats.generated_tokens += sum(len(s.completion.token_ids) for group in groups for s in group.samples)
        return groups

    def _sampling(self) -> AbstractContextManager[None]:
        """Around generation: under FSDP an engine that decodes with the policy module itself needs
        its whole parameters (without collectives in each forward pass, as ranks decode different
        lengths); vLLM holds its own copy."""
        return self.policy.full_parameters() if self.engine.samples_from_policy else nullcontext()

    def update(self, tensors: TrainTensors, advantages: torch.Tensor) -> dict[str, float]:
        """Steps 8-9: policy-gradient updates on one rollout batch."""
        cfg = self.config
        group_size = cfg.rollout.completions_per_prompt
        num_groups = len(tensors.prompts) // group_size
        on_policy = cfg.batch.mini_batches == 1 and cfg.batch.epochs == 1
        old = self._old_rows(tensors, on_policy)
        reference = self._reference_logprobs(tensors)
        # Mini-batches of whole groups, as equal as possible; fewer when dynamic sampling came back short.
        chunks = min(cfg.batch.mini_batches, num_groups)
        slots_per_step = cfg.derived().optimizer_steps_per_step
        collected: dict[str, list[float]] = defaultdict(list)
        order_rng = random.Random(self._seed("minibatch", 0))
        self.policy.model.train()
        for epoch in range(cfg.batch.epochs):
            group_order = list(range(num_groups))
            order_rng.shuffle(group_order)
            for chunk in range(chunks):
                chosen = group_order[chunk * num_groups // chunks : (chunk + 1) * num_groups // chunks]
                rows = [g * group_size + k for g in chosen for k in range(group_size)]
                # The schedule advances by planned optimizer steps, so skipped updates never shift it.
                self.policy.set_schedule_position((self.step * slots_per_step) + epoch * cfg.batch.mini_batches + chunk)
                for key, value in self._update_mini_batch(tensors, advantages, rows, old, reference).items():
                    collected[key].append(value)
        sync_started = time.perf_counter()
        self.engine.sync_weights()  # 9b. the sampler follows the new weights (nothing to do for hf)
        summary = {key: statistics.fmean(values) for key, values in collected.items() if values}
        probe: dict[str, float] = getattr(self.engine, "last_probe", {})  # vllm's integrity probe, when on
        if probe:
            summary["time/weight_sync"] = time.perf_counter() - sync_started
            summary["time/weight_sync_probe"] = probe["seconds"]
            summary["vllm/probe_gap_mean"] = probe["gap_mean"]
            summary["vllm/probe_gap_max"] = probe["gap_max"]
        if "train_tokens" in collected:
            summary["train_tokens"] = float(sum(collected["train_tokens"]))
        return summary

    def _old_rows(self, tensors: TrainTensors, on_policy: bool) -> list[torch.Tensor | None] | None:
        """pi_old per row: a carried group's stored log-probs; for this step's groups None on-policy (the
        training forward pass is pi_old then), else the learner's log-probs before the first update.
        None when every row is on-policy."""
        carried = [row for row, stored in enumerate(tensors.old_logprobs) if stored is not None]
        if on_policy and not carried:
            return None
        old: list[torch.Tensor | None] = (
            [None] * len(tensors.prompts) if on_policy else list(self._logprobs_no_grad(self.policy.model, tensors))
        )
        for row in carried:
            old[row] = torch.tensor(tensors.old_logprobs[row])
        return old

    def _update_mini_batch(
        self,
        tensors: TrainTensors,
        advantages: torch.Tensor,
        rows: list[int],
        old: list[torch.Tensor | None] | None,
        reference: list[torch.Tensor] | None,
    ) -> dict[str, float]:
        """One optimizer step over ``rows``, accumulated over micro-batches with a shared normaliser."""
        cfg, loss_cfg = self.config, self.config.algorithm.loss
        trained = tensors.trained[rows]
        lengths = torch.tensor([tensors.model_tokens(r) for r in rows])  # [B] completion tokens the model sampled
        num_items = loss_cfg.aggregation.items(lengths * trained)  # the normaliser of the whole mini-batch
        lr = self.policy.lr
        if num_items == 0:  # every sample of the mini-batch masked: no update
            self.skipped_updates += 1
            return {"skipped_update": 1.0, "lr": lr}
        stats = _MetricAccumulator()
        tokens, padded, positions = 0, 0, 0  # trained tokens; padded and all positions of the passes
        active = self._rows_with_gradient(tensors, advantages, rows)
        plan, passes = self._micro_batches(tensors, active)  # passes beyond plan are padding, with loss x 0
        finite = True
        for index in range(passes):
            micro, weight = (plan[index], 1.0) if index < len(plan) else (active[:1], 0.0)  # padding: no gradient
            batch = self.policy.token_batch(
                [tensors.prompts[r] for r in micro], [tensors.completions[r] for r in micro], tensors.masks_of(micro)
            )
            logprobs, entropy = self._completion_logprobs(self.policy.model, batch, with_entropy=True)
            mask = batch.completion_mask  # [b, T]: the tokens the model sampled; every row here is trained
            length = batch.completion_length
            current = logprobs.detach()  # [b, T]: pi_old on-policy, and the stand-in on padding passes
            device, filler = logprobs.device, weight == 0.0
            old_rows = current if old is None or filler else pad(_or_rows(old, micro, current), length, device)
            ref_rows = (
                None if reference is None else current if filler else pad([reference[r] for r in micro], length, device)
            )
            out = policy_loss(
                logprobs,
                old_rows,
                advantages[micro].to(device),
                mask,
                loss_cfg,
                sampler_logprobs=pad([tensors.sampler_logprobs[r] for r in micro], length, device),
                ref_logprobs=ref_rows,
                num_items=num_items,
            )
            (out.loss * weight).backward()
            if weight == 0.0:
                continue
            finite = finite and bool(torch.isfinite(out.loss))
            micro_tokens = int(mask.sum())
            tokens += micro_tokens
            real = int(batch.attention_mask.sum())
            passed = real if cfg.batch.packing else batch.input_ids.numel()  # a packed pass holds the real ones
            positions += passed
            padded += passed - real
            entropy_mean = float((entropy * mask).sum() / mask.sum()) if entropy is not None else math.nan
            stats.add({**out.metrics, "entropy": entropy_mean}, weight=micro_tokens)
        if self.dist.enabled:  # every rank decides alike, and reports the whole mini-batch
            finite = all(gather_objects(self.dist, finite))
            tokens = sum(gather_objects(self.dist, tokens))
            padded, positions = map(sum, zip(*gather_objects(self.dist, (padded, positions)), strict=True))
            stats = _MetricAccumulator.merged(gather_objects(self.dist, stats))
        if not finite:  # a non-finite loss: the gradients are dropped, the step skipped and counted
            self.policy.zero_grad()
            self.skipped_updates += 1
            return {"skipped_update": 1.0, "lr": lr}
        grad_norm, applied = self.policy.step()
        if not applied:
            self.skipped_updates += 1
        summary = stats.result()
        summary.update(
            {"grad_norm": grad_norm, "skipped_update": 0.0 if applied else 1.0, "train_tokens": tokens, "lr": lr}
        )
        # Padding: the share of the learner's [b, P + T] positions that are padding (flat layout).
        summary["padding_fraction"] = padded / positions if positions else math.nan
        return summary

    def _completion_logprobs(
        self, model: PreTrainedModel, batch: TokenBatch, with_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``completion_logprobs`` with the shared-prompt pass when ``batch.share_prompts``.

        Under FSDP every forward pass is a collective, so every rank must run as many as the others:
        the shared path (a prompt pass, then a completion pass) runs on every rank when every rank's
        completions are longer than one token, even on a rank whose prompts do not repeat; otherwise
        the flat pass (one) runs everywhere."""
        packed = self.config.batch.packing
        share, force = self.config.batch.share_prompts and not packed, False
        if share and self.dist.enabled:
            share = force = min(gather_objects(self.dist, batch.completion_length)) > 1
        return completion_logprobs(
            model,
            batch,
            self.config.rollout.temperature,
            with_entropy=with_entropy,
            share_prompts=share,
            force_shared=force,
            packed=packed,
        )

    def _micro_batches(self, tensors: TrainTensors, rows: list[int]) -> tuple[list[list[int]], int]:
        """(this rank's micro-batches, the number of passes every rank runs).

        Each rank takes the rows of the groups g with g % world == rank (all of them on one process)
        and splits them into micro-batches: ``batch.micro_batch_size`` rows each, or by
        ``batch.max_tokens_per_micro_batch`` (``token_budget_micro_batches``). Every rank runs as many
        passes as the rank with the most micro-batches: under FSDP each pass is a collective, so the
        counts must match; ranks with fewer pad with passes that do not count. Every rank holds every
        row's lengths, so each computes the others' splits without a collective."""
        group_size, world = self.config.rollout.completions_per_prompt, self.dist.world_size
        shares = [[r for r in rows if (r // group_size) % world == q] for q in range(world)]
        budget, size = self.config.batch.max_tokens_per_micro_batch, self.config.batch.micro_batch_size
        plans = []
        for share in shares:
            if budget is None:
                plans.append([share[i : i + size] for i in range(0, len(share), size)])
            else:  # in row order first, so that rows of equal length stay with their group (one prompt pass)
                ordered = sorted(share)
                lengths = [(len(tensors.prompts[r]), len(tensors.completions[r])) for r in ordered]
                batches = token_budget_micro_batches(lengths, budget, packed=self.config.batch.packing)
                plans.append([[ordered[i] for i in batch] for batch in batches])
        return plans[self.dist.rank], max(len(plan) for plan in plans)

    def _rows_with_gradient(self, tensors: TrainTensors, advantages: torch.Tensor, rows: list[int]) -> list[int]:
        """The trained rows whose forward and backward passes can change the update.

        Without a KL term a sample with advantage 0 has a policy gradient of exactly 0 under every
        objective here (each multiplies the advantage), so ``batch.skip_zero_advantage`` leaves it
        out: the update is unchanged, as the normaliser ``num_items`` still counts it. Groups whose
        rewards are all equal (without dynamic sampling, a fifth of them on tiny-arithmetic) then cost
        nothing. If no row is left, one is kept so that the optimizer sees the same zero gradients
        (AdamW's momentum and weight decay still act on them).
        """
        trained = [r for r in rows if bool(tensors.trained[r])]
        if not (self.config.batch.skip_zero_advantage and self.config.algorithm.loss.kl_coef == 0):
            return trained
        active = [r for r in trained if float(advantages[r]) != 0.0]
        return active or trained[:1]

    def _reference_logprobs(self, tensors: TrainTensors) -> list[torch.Tensor] | None:
        """Reference log-probs for the KL term: from the reference model, or for a LoRA policy from the
        policy with its adapters off (its base model; no second copy). None without a KL term."""
        if self.reference is not None:
            return self._logprobs_no_grad(self.reference, tensors)
        if self.config.derived().reference_model and lora.has_lora(self.policy.model):
            with lora.adapters_disabled(self.policy.model):
                return self._logprobs_no_grad(self.policy.model, tensors)
        return None

    def _logprobs_no_grad(self, model: PreTrainedModel | None, tensors: TrainTensors) -> list[torch.Tensor]:
        """Per-sample log-probs [T_i] of the completions under ``model`` (pi_old or the reference).

        With several ranks each computes the rows of its own groups (those it trains on; the other
        entries hold empty tensors), in the same number of passes on every rank (padding passes on
        one row, discarded), as FSDP's collectives require."""
        assert model is not None
        count = len(tensors.prompts)
        plan, passes = self._micro_batches(tensors, list(range(count)))
        out: list[torch.Tensor] = [torch.empty(0) for _ in range(count)]
        with torch.no_grad():
            for index in range(passes):
                rows = plan[index] if index < len(plan) else [0]  # padding pass: row 0, discarded
                batch = self.policy.token_batch(
                    [tensors.prompts[r] for r in rows], [tensors.completions[r] for r in rows]
                )
                logprobs, _ = self._completion_logprobs(model, batch)
                if index < len(plan):
                    for i, r in enumerate(rows):
                        out[r] = logprobs[i, : len(tensors.completions[r])].detach()
        return out

    # -- evaluation, metrics, checkpoints --------------------------------------------------------------

    def evaluate(self, progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
        """Held-out accuracy per environment on its test split (greedy by default), computed by
        ``evaluate.evaluate_engine`` as ``grpopp eval`` computes avg@1. ``progress(done, total)``:
        told the tasks done as generation advances."""
        cfg = self.config
        params = cfg.rollout.sampling_params(seed=cfg.seed, greedy=cfg.eval.greedy)
        tasks = dict.fromkeys(self.envs, cfg.eval.tasks_per_env)
        with self._sampling():  # each rank evaluates its share of the tasks; every rank gets the results
            run = evaluate_engine(
                self.engine, self.envs, tasks, params, self.limits, EvalSettings(bootstrap=0), self.dist, progress
            )
        results: dict[str, float] = {}
        for name, summary in run.per_env.items():
            results[f"{name}/accuracy"] = summary.avg.value
            results[f"{name}/unjudged"] = float(summary.unjudged)
            if summary.episodes is not None:  # a multi-turn environment
                results[f"{name}/turns"] = summary.episodes.turns_mean
        results["accuracy"] = run.overall.avg.value
        return results

    def _step_metrics(
        self,
        batch: Batch,
        stats: CollectStats,
        update: dict[str, float],
        train_seconds: float,
        step_started: float,
    ) -> dict[str, float]:
        """Rewards, accuracy and lengths over every completion generated this step (also those of groups
        dynamic sampling dropped); the update's statistics over the trained ones; wall-clock times."""
        samples = [s for g in batch.generated for s in g.samples]
        lengths = [len(s.completion.token_ids) for s in samples]
        now = time.perf_counter()
        metrics: dict[str, float] = {
            "time": self.run_seconds(now),
            "time/step": now - step_started,
            "completions_generated": float(len(samples)),
            "reward": _mean([s.reward.total for s in samples if s.reward.valid]),
            "accuracy": _mean([float(s.correct) for s in samples if s.reward.valid]),
            "length/mean": _mean(lengths),
            "length/max": float(max(lengths, default=0)),
            "truncated": _mean([float(s.truncated) for s in samples]),
            **self._filling_metrics(batch),
            "groups": float(len(batch.groups)),
            "time/generation": stats.generation_seconds,
            "time/scoring": stats.scoring_seconds,
            "time/training": train_seconds,
            "tokens_per_second/generation": stats.generated_tokens / max(stats.generation_seconds, 1e-9),
            "tokens_per_second/training": update.get("train_tokens", 0.0) / max(train_seconds, 1e-9),
            "skipped_updates_total": float(self.skipped_updates),
        }
        total_statuses = sum(stats.statuses.values())
        for status in (s for s in VERIFY_STATUSES if s not in ("correct", "incorrect")):  # the failed samples
            metrics[f"masked/{status}" if status != "unparseable" else "unparseable"] = stats.statuses.get(
                status, 0
            ) / max(total_statuses, 1)
        metrics.update(episode_metrics(batch.generated))
        for env_name in self.envs:
            env_samples = [s for g in batch.generated if g.task.env == env_name for s in g.samples if s.reward.valid]
            metrics[f"{env_name}/accuracy"] = _mean([float(s.correct) for s in env_samples])
            metrics[f"{env_name}/reward"] = _mean([s.reward.total for s in env_samples])
            for name, component in env_samples[0].reward.components.items() if env_samples else ():
                values = [s.reward.components[name].value for s in env_samples]
                group = "reward" if component.weight != 0 else "reward_inactive"  # weight 0: logged, not in the reward
                metrics[f"{env_name}/{group}/{name}"] = _mean(values)
        metrics.update({k: v for k, v in update.items() if k != "train_tokens"})
        if self.policy.device.type == "cuda":  # this rank's GPU (rank 0's under torchrun)
            device = self.policy.device
            metrics["memory/peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            free, total = torch.cuda.mem_get_info(device)
            metrics["memory/device_used_gib"] = (total - free) / 2**30  # all processes, vLLM's pools included
        return metrics

    def _filling_metrics(self, batch: Batch) -> dict[str, float]:
        """What filling the batch took (``dynamic_sampling``): rounds, groups generated, trained, carried
        in and out, dropped for age or wasted, the estimates p, and the staleness of the trained groups."""
        generated = len(batch.generated)
        metrics = {
            "dynamic_sampling/rounds": float(batch.rounds),
            "dynamic_sampling/zero_variance_fraction": batch.groups_without_signal / max(generated, 1),
            "dynamic_sampling/groups_generated": float(generated),
            "dynamic_sampling/groups_carried_in": float(batch.carried_in),
            "dynamic_sampling/groups_carried_out": float(batch.carried_out),
            "dynamic_sampling/groups_dropped_stale": float(batch.dropped_stale),
            "dynamic_sampling/groups_wasted": float(batch.wasted),
            "dynamic_sampling/groups_waiting": float(len(self.filler.carried)),
            "dynamic_sampling/staleness_mean": _mean(batch.staleness),
            "completions_trained": float(sum(len(group.samples) for group in batch.groups)),
        }
        if self.config.algorithm.dynamic_sampling.enabled:
            for env_name, estimate in self.filler.estimates.items():
                metrics[f"{env_name}/zero_variance_estimate"] = estimate
        return metrics

    def save(self) -> Path | None:
        """Write a checkpoint (rank 0; every rank takes part in gathering the shards). Returns its path
        on rank 0, None on the others."""
        state = {
            "step": self.step,
            "policy": self.policy.state_dict(),
            "mixture": self.mixture.state_dict(),
            "dynamic_sampling": self.filler.state_dict(),
            "skipped_updates": self.skipped_updates,
            "world_size": self.dist.world_size,
            "time": self.run_seconds(),
        }
        lora_settings = self.config.model.lora
        merged = lora_settings is not None and lora_settings.save_merged
        gathered = self.policy.gathered_state(merged) if self.dist.enabled else None
        path = None
        if self.dist.is_main:
            with quiet_transformers_bars():  # no "Writing model shards" bar between the step lines
                path = ckpt.save_checkpoint(
                    self.run_dir,
                    self.step,
                    lambda folder: self.policy.save_pretrained(folder, gathered, merged),
                    state,
                    self.config.checkpoint.keep_last,
                )
        barrier(self.dist)
        return path

    def restore(self, checkpoint: Path) -> None:
        """Continue from ``checkpoint`` (its model weights must already be in the policy)."""
        state = ckpt.load_state(checkpoint)
        self.step = int(state["step"])
        self.policy.load_state_dict(state["policy"])
        self.mixture.load_state_dict(state["mixture"])
        if "dynamic_sampling" in state:  # checkpoints before carried groups have none
            self.filler.load_state_dict(state["dynamic_sampling"])
        self.skipped_updates = int(state["skipped_updates"])
        self.time_before = float(state.get("time", 0.0))  # checkpoints before this record lack it
        ckpt.restore_rng(state["rng"])
        if self.dist.is_main:
            for name in ("metrics.jsonl", "samples.jsonl", "eval.jsonl"):
                truncate_log(self.run_dir, name, self.step)
        barrier(self.dist)

    def sample_records(self, groups: list[Group], generated: Sequence[Group] = ()) -> list[dict[str, Any]]:
        """Records for samples.jsonl: the first completion of each of the first
        ``logging.samples_per_step`` trained groups, then up to as many masked samples (status
        timeout or error) of ``generated``, so the reason a sample was masked is on record."""
        limit = self.config.logging.samples_per_step
        chosen = [(group, group.samples[0]) for group in groups[:limit]]
        logged = {id(sample) for _, sample in chosen}
        masked = [(g, s) for g in generated for s in g.samples if not s.reward.valid and id(s) not in logged]
        return [_sample_record(group, sample) for group, sample in chosen + masked[:limit]]

    def _seed(self, purpose: str, index: int) -> int:
        """A seed for (step, purpose, index): the same on a resumed run as on an uninterrupted one."""
        return random.Random(f"{self.config.seed}|{self.step}|{purpose}|{index}").getrandbits(31)


def _sample_record(group: Group, sample: Sample) -> dict[str, Any]:
    record = {
        "task_id": group.task.id,
        "prompt": group.task.prompt if isinstance(group.task.prompt, str) else str(group.task.prompt),
        "completion": sample.completion.text,
        "finish_reason": sample.completion.finish_reason,
        "reward": sample.reward.model_dump(mode="json", exclude={"verification"}),
        "verification": sample.reward.verification.model_dump(mode="json") if sample.reward.verification else None,
    }
    return record | episode_record(sample.completion)


def make_reference(model: PreTrainedModel) -> PreTrainedModel:
    """A frozen copy of the initial policy, for the KL penalty."""
    reference: PreTrainedModel = copy.deepcopy(model)
    reference.eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference


class _MetricAccumulator:
    """Combines per-micro-batch loss metrics into one per mini-batch: losses are summed (each micro-batch
    loss is already divided by the mini-batch's num_items), maxima and minima taken, and the rest
    averaged weighted by completion tokens."""

    _SUMMED = ("loss", "pg_loss", "kl_loss")
    _SKIPPED = ("num_tokens", "num_sequences", "denominator")

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.weights: dict[str, float] = defaultdict(float)
        self.extremes: dict[str, float] = {}

    def add(self, metrics: dict[str, float], weight: float) -> None:
        for key, value in metrics.items():
            if key in self._SKIPPED or not math.isfinite(value):
                continue
            if key in self._SUMMED:
                self.sums[key] += value
                self.weights[key] = 1.0
            elif key.endswith("_max"):
                self.extremes[key] = max(self.extremes.get(key, -math.inf), value)
            elif key.endswith("_min"):
                self.extremes[key] = min(self.extremes.get(key, math.inf), value)
            else:
                self.sums[key] += value * weight
                self.weights[key] += weight

    @classmethod
    def merged(cls, parts: list[_MetricAccumulator]) -> _MetricAccumulator:
        """One accumulator holding what ``parts`` (e.g. every rank's) saw."""
        whole = cls()
        for part in parts:
            for key, value in part.sums.items():
                whole.sums[key] += value
                whole.weights[key] = part.weights[key] if key in cls._SUMMED else whole.weights[key] + part.weights[key]
            for key, value in part.extremes.items():
                pick = max if key.endswith("_max") else min
                whole.extremes[key] = pick(whole.extremes[key], value) if key in whole.extremes else value
        return whole

    def result(self) -> dict[str, float]:
        out = {
            key: self.sums[key] / self.weights[key] if key not in self._SUMMED else self.sums[key]
            for key in self.sums
            if self.weights[key] > 0
        }
        out.update(self.extremes)
        return out


def _or_rows(old: list[torch.Tensor | None], rows: list[int], current: torch.Tensor) -> list[torch.Tensor]:
    """pi_old of ``rows``: the given one, or the row of ``current`` [b, T] (pi_old on-policy) where None."""
    chosen = []
    for i, r in enumerate(rows):
        stored = old[r]
        chosen.append(current[i] if stored is None else stored)
    return chosen


def episode_metrics(groups: Sequence[Group]) -> dict[str, float]:
    """Per multi-turn environment, means over its episodes: assistant turns, tool calls, failed tool
    calls, the share ended by the turn limit, by the token limit and by an environment error; and
    ``time/environment``, the seconds of every ``respond`` summed over episodes (they run in parallel)."""
    by_env: dict[str, list[EpisodeStats]] = defaultdict(list)
    for group in groups:
        for sample in group.samples:
            if sample.completion.episode is not None:
                by_env[group.task.env].append(sample.completion.episode)
    metrics: dict[str, float] = {}
    for env_name, episodes in by_env.items():
        summary = episode_summary(episodes)  # evaluation's summary of the same episodes
        assert summary is not None
        metrics[f"{env_name}/turns"] = summary.turns_mean
        metrics[f"{env_name}/tool_calls"] = summary.tool_calls_mean
        metrics[f"{env_name}/tool_errors"] = summary.tool_errors_mean
        metrics[f"{env_name}/ended_max_turns"] = summary.ended_by_turn_limit
        metrics[f"{env_name}/ended_max_tokens"] = summary.ended_by_token_limit
        metrics[f"{env_name}/ended_env_error"] = summary.ended_by_env_error
    if by_env:
        metrics["time/environment"] = sum(e.env_seconds for episodes in by_env.values() for e in episodes)
    return metrics


def _mean(values: list[float] | list[int]) -> float:
    return float(statistics.fmean(values)) if values else math.nan
