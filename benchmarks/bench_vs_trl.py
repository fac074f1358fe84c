"""Benchmark: grpopp against TRL's GRPOTrainer on the same tiny model, task and hyper-parameters, on CPU.

What is compared, and how:

1. Same starting model: the cached tiny model of ``grpopp.recipes.tiny.load_or_create_tiny_model()``
   (built before anything is timed).
2. Same task: ``arithmetic`` with ``TINY_ARITHMETIC_ENV``; both trainers read train-split tasks 0, 1, 2, ...
   in order (TRL: a dataset of those prompts, ``shuffle_dataset=False``); same reward, 1 if
   ``env.verify(task, completion).status == "correct"`` else 0 (TRL: a reward function that maps each
   prompt back to its task through a ``task_index`` column).
3. Same held-out evaluation, by the same code in this process for every model: greedy accuracy on test
   tasks 0..399 with grpopp's ``HFEngine`` (max 8 new tokens) and ``env.verify``.
4. Same hyper-parameters: 32 prompts x G=8 per step, one optimizer step per 256 completions, max 8 new
   tokens, temperature 1, AdamW lr 1e-4 constant, betas (0.9, 0.99), no weight decay, grad clip 1.0,
   fp32, the recipe's attention kernel (eager) in both models, no KL, clip 0.2/0.28, token-level loss
   (TRL ``loss_type="dapo"``), unscaled advantages (TRL ``scale_rewards="none"``), mu=1.
   grpopp runs the tiny-arithmetic recipe with dynamic sampling,
   TIS, dual clip and the soft overlong punishment switched off (``MATCHED_OVERRIDES``); the row
   "grpopp (preset)" runs the recipe as shipped (dynamic sampling on: its completions per second count
   every generated completion, kept or dropped).
5. Each training run is its own subprocess (own thread pool, ``torch.set_num_threads(--threads)``);
   grpopp runs in this interpreter's environment, TRL in ``--trl-python`` (a separate venv). Timing runs
   alternate trainers, repeat after repeat, so load from other processes hits all of them alike; each
   first waits (up to --max-wait s) until other processes use under 0.3 cores, and records the cores
   they used during the run (two torch threads on two cores slow down many times when anything else
   runs). Accuracy runs do not depend on speed and may use fewer threads (--accuracy-threads).
6. Measured: seconds per step = wall time between the ends of consecutive steps (the whole loop: data,
   generation, scoring, update, logging), median over steps 2..N (step 1 is warm-up), then median over
   --repeats runs of --timing-steps steps; completions per second = completions generated in a step /
   its seconds (median likewise); the split between generation, scoring, training (forward, backward,
   clip, optimizer step) and the rest (grpopp: ``time/*`` of metrics.jsonl; TRL: timers around
   ``_generate``, ``_calculate_rewards``, ``_generate_and_score_completions``, ``training_step`` and
   the optimizer step); held-out accuracy before and after one longer run of --steps steps per trainer
   (the preset row: --steps / 2 steps, as it generates about 512 completions per step); a cProfile of a
   short run of each (--profile-steps) for where the time goes inside.

    /work/main/.venv/bin/python benchmarks/bench_vs_trl.py --trl-python /tmp/trl-venv/bin/python \
        --steps 100 --timing-steps 30 --repeats 5 --accuracy-seeds 3 --accuracy-threads 1 \
        --profile-steps 10 --max-wait 60 --out /tmp/bench_vs_trl.json

Set-up of the TRL venv (for this benchmark only; never a project dependency):

    python3 -m venv /tmp/trl-venv && /tmp/trl-venv/bin/pip install torch==2.13.0
    /tmp/trl-venv/bin/pip install trl==1.16.0 transformers==5.23.0 torch==2.13.0
    /tmp/trl-venv/bin/pip install -e /work/main torch==2.13.0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

PROMPTS_PER_STEP = 32
GROUP_SIZE = 8
COMPLETIONS_PER_STEP = PROMPTS_PER_STEP * GROUP_SIZE
MAX_NEW_TOKENS = 8
EVAL_TASKS = 400
LEARNING_RATE = 1e-4

MATCHED_OVERRIDES = [
    "algorithm.dynamic_sampling.enabled=false",
    "algorithm.tis=off",  # the learner also samples: nothing to correct (TRL without vLLM has none)
    "algorithm.dual_clip=null",  # TRL has no dual clip
    "algorithm.overlong.soft_punishment=false",  # TRL has no overlong punishment
]
"""grpopp's tiny-arithmetic recipe (grpopp preset) turned into what TRL's GRPOTrainer computes."""

TRAINERS = ("grpopp", "trl", "grpopp-preset")
LABELS = {"grpopp": "grpopp (matched)", "trl": "TRL GRPOTrainer", "grpopp-preset": "grpopp (preset)"}
SPLIT_KEYS = ("generation", "scoring", "training", "other")


@dataclass
class WorkerResult:
    """What one training subprocess measured (written as JSON by ``--worker``)."""

    trainer: str
    versions: dict[str, str]
    steps: int
    step_seconds: list[float]
    """Wall time of each step: between the ends of consecutive steps (step 1: from the loop's start)."""
    step_completions: list[int]
    """Completions generated in each step (256, or more under dynamic sampling)."""
    split: list[dict[str, float]]
    """Per step: seconds of generation, scoring, training, other."""
    model_dir: str | None = None
    own_accuracy: dict[str, float] = field(default_factory=dict)
    """The trainer's own evaluation, where it has one (grpopp), as a cross-check of the shared one."""
    profile: dict[str, Any] = field(default_factory=dict)
    load_average: tuple[float, float] = (0.0, 0.0)
    """1-minute load average of the machine before and after the run (set by the orchestrator)."""
    others_cores: float = 0.0
    """CPU cores other processes used on average during the run (all CPU time minus this job's)."""


# -- shared pieces ---------------------------------------------------------------------------------


def make_env() -> Any:
    from grpopp.envs.registry import make_env as registry_make_env
    from grpopp.recipes.tiny import TINY_ARITHMETIC_ENV

    return registry_make_env("arithmetic", **TINY_ARITHMETIC_ENV)


def held_out_accuracy(model_dir: str | Path) -> float:
    """Greedy accuracy on test tasks 0..EVAL_TASKS-1: grpopp's HFEngine + env.verify, for every model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpopp.rollout.base import SamplingParams
    from grpopp.rollout.hf import HFEngine

    env = make_env()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    engine = HFEngine(model, tokenizer, batch_size=256)
    tasks = [env.task(i, "test") for i in range(EVAL_TASKS)]
    params = SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, seed=0)
    completions = engine.generate([t.prompt for t in tasks], params, n=1)
    correct = sum(env.verify(t, c[0].text).status == "correct" for t, c in zip(tasks, completions, strict=True))
    return correct / len(tasks)


def accuracy_gap(ours: list[float], theirs: list[float]) -> tuple[float, float]:
    """(mean(ours) - mean(theirs), its standard error from the seed-to-seed spread; 0 with one seed each)."""
    gap = statistics.fmean(ours) - statistics.fmean(theirs)
    if len(ours) < 2 or len(theirs) < 2:
        return gap, 0.0
    return gap, (statistics.variance(ours) / len(ours) + statistics.variance(theirs) / len(theirs)) ** 0.5


def recipe_attention() -> str:
    """The attention kernel of grpopp's recipe, which TRL's model gets too (one kernel for both)."""
    from grpopp.training.config import load_train_config

    return load_train_config().model.attn_implementation or "sdpa"


def versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def profile_summary(profiler: Any, wanted: dict[str, tuple[str, str]], total: float) -> dict[str, Any]:
    """Cumulative seconds of the ``wanted`` functions ({label: (file suffix, function name)}) and the top
    25 functions by own time, from a cProfile run of ``total`` seconds."""
    import pstats

    stats = pstats.Stats(profiler).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    cumulative: dict[str, float] = {}
    for label, (suffix, name) in wanted.items():
        matches = [v[3] for (file, _, func), v in stats.items() if func == name and file.endswith(suffix)]
        cumulative[label] = round(max(matches, default=0.0), 3)
    top = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:25]
    own = [
        {"function": f"{Path(file).name}:{line}:{name}", "calls": v[1], "tottime": round(v[2], 3)}
        for (file, line, name), v in top
    ]
    return {"total_seconds": round(total, 3), "cumulative": cumulative, "top_own_time": own}


# -- worker: grpopp --------------------------------------------------------------------------------


GRPOPP_PROFILE = {
    "Trainer.train_step": ("training/trainer.py", "train_step"),
    "HFEngine.generate": ("rollout/hf.py", "generate"),
    "HFEngine._forward (model calls)": ("rollout/hf.py", "_forward"),
    "sample_next_tokens": ("rollout/hf.py", "sample_next_tokens"),
    "HFEngine._completion (decode)": ("rollout/hf.py", "_completion"),
    "score_groups": ("rollout/groups.py", "score_groups"),
    "Trainer.update": ("training/trainer.py", "update"),
    "completion_logprobs (forward)": ("learner/policy.py", "completion_logprobs"),
    "policy_loss": ("objective/losses.py", "policy_loss"),
    "Tensor.backward": ("torch/_tensor.py", "backward"),
    "Policy.step (clip + AdamW)": ("learner/policy.py", "step"),
    "Trainer._step_metrics": ("training/trainer.py", "_step_metrics"),
    "RunLog.metrics + samples": ("training/run_log.py", "_append"),
    "Trainer.save (final checkpoint, in the loop)": ("training/trainer.py", "save"),
}


def run_grpopp(args: argparse.Namespace) -> WorkerResult:
    import cProfile

    import torch

    from grpopp.jobs import run as grpopp_run
    from grpopp.learner import checkpoint as ckpt
    from grpopp.training.config import load_train_config
    from grpopp.training.trainer import Trainer

    torch.set_num_threads(args.threads)
    out = Path(args.worker_out)
    overrides = [
        f"model.name_or_path={args.model_dir}",
        f"steps={args.worker_steps}",
        f"seed={args.seed}",
        f"optim.lr={LEARNING_RATE}",
        "logging.progress=false",
        "logging.samples_per_step=0",
        f"logging.run_dir={out / 'run'}",
        "checkpoint.keep_last=1",
        f"eval.tasks_per_env={EVAL_TASKS}",
    ]
    if args.worker == "grpopp":
        overrides += MATCHED_OVERRIDES
    config = load_train_config(overrides=overrides)

    # Timers: the end of every step, and the completions generated in it (dynamic sampling makes more).
    loop_start: list[float] = []
    step_ends: list[float] = []
    generated = [0]
    step_completions: list[int] = []
    original_run_steps, original_train_step = grpopp_run._run_steps, Trainer.train_step
    original_generate_and_score = Trainer._generate_and_score

    profiler = cProfile.Profile() if args.profile else None

    def run_steps(*a: Any, **k: Any) -> None:
        loop_start.append(time.perf_counter())
        if profiler is not None:  # the step loop only, not the evaluations before and after it
            profiler.enable()
        try:
            original_run_steps(*a, **k)
        finally:
            if profiler is not None:
                profiler.disable()
            loop_start.append(time.perf_counter())

    def train_step(self: Trainer) -> Any:
        result = original_train_step(self)
        step_ends.append(time.perf_counter())
        step_completions.append(generated[0])
        generated[0] = 0
        return result

    def generate_and_score(self: Trainer, tasks: list[Any], *a: Any, **k: Any) -> Any:
        generated[0] += len(tasks) * self.config.rollout.completions_per_prompt
        return original_generate_and_score(self, tasks, *a, **k)

    grpopp_run._run_steps = run_steps
    Trainer.train_step = train_step  # type: ignore[method-assign]
    Trainer._generate_and_score = generate_and_score  # type: ignore[method-assign]

    summary = grpopp_run.train(config)
    loop_seconds = loop_start[1] - loop_start[0]
    profile = profile_summary(profiler, GRPOPP_PROFILE, loop_seconds) if profiler is not None else {}

    step_seconds = [b - a for a, b in zip(loop_start[:1] + step_ends[:-1], step_ends, strict=True)]
    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    per_step = {m["step"]: m for m in metrics if m.get("time/generation") is not None}
    split = []
    for step, seconds in enumerate(step_seconds, start=1):
        m = per_step[step]
        parts = {"generation": m["time/generation"], "scoring": m["time/scoring"], "training": m["time/training"]}
        split.append({**parts, "other": seconds - sum(parts.values())})
    checkpoint = ckpt.latest_checkpoint(out / "run")
    return WorkerResult(
        trainer=args.worker,
        versions=versions("grpopp", "torch", "transformers"),
        steps=len(step_seconds),
        step_seconds=step_seconds,
        step_completions=step_completions,
        split=split,
        model_dir=str(checkpoint) if checkpoint else None,
        own_accuracy={"before": summary.accuracy_before, "after": summary.accuracy_after},
        profile=profile,
    )


# -- worker: TRL -----------------------------------------------------------------------------------


TRL_PROFILE = {
    "Trainer.training_step (incl. generation)": ("trl/trainer/grpo_trainer.py", "training_step"),
    "_generate_and_score_completions": ("trl/trainer/grpo_trainer.py", "_generate_and_score_completions"),
    "_generate": ("trl/trainer/grpo_trainer.py", "_generate"),
    "GenerationMixin.generate": ("transformers/generation/utils.py", "generate"),
    "GenerationMixin._sample": ("transformers/generation/utils.py", "_sample"),
    "_calculate_rewards": ("trl/trainer/grpo_trainer.py", "_calculate_rewards"),
    "_compute_loss": ("trl/trainer/grpo_trainer.py", "_compute_loss"),
    "_get_per_token_logps_and_entropies": ("trl/trainer/grpo_trainer.py", "_get_per_token_logps_and_entropies"),
    "Accelerator.backward": ("accelerate/accelerator.py", "backward"),
    "Trainer._clip_grad_norm": ("transformers/trainer.py", "_clip_grad_norm"),
    "AcceleratedOptimizer.step": ("accelerate/optimizer.py", "step"),
    "Trainer._maybe_log_save_evaluate": ("transformers/trainer.py", "_maybe_log_save_evaluate"),
}


def trl_config(args: argparse.Namespace, output_dir: Path) -> Any:
    """GRPOConfig set to grpopp's matched settings; every value that differs from TRL's default is named."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(output_dir),
        max_steps=args.worker_steps,
        seed=args.seed,
        use_cpu=True,
        bf16=False,  # TRL's default is bf16 on
        fp16=False,
        gradient_checkpointing=False,  # TRL's default is on
        # batch: 32 prompts x 8 = 256 completions, generated at once, one optimizer step over all of them
        num_generations=GROUP_SIZE,
        per_device_train_batch_size=COMPLETIONS_PER_STEP,
        gradient_accumulation_steps=1,
        generation_batch_size=COMPLETIONS_PER_STEP,
        num_iterations=1,
        shuffle_dataset=False,  # train tasks 0, 1, 2, ... in order, as grpopp's mixture reads them
        # sampling
        max_completion_length=MAX_NEW_TOKENS,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        use_vllm=False,
        # algorithm
        beta=0.0,
        epsilon=0.2,
        epsilon_high=0.28,
        loss_type="dapo",
        scale_rewards="none",
        mask_truncated_completions=False,
        disable_dropout=True,
        # optimizer: torch AdamW as grpopp's Policy (TRL's defaults: beta2 0.999, a linear schedule)
        optim="adamw_torch",
        learning_rate=LEARNING_RATE,
        adam_beta1=0.9,
        adam_beta2=0.99,
        adam_epsilon=1e-8,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        # logging off
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )


def run_trl(args: argparse.Namespace) -> WorkerResult:
    import cProfile

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.worker_out)
    env = make_env()
    tasks = [env.task(i, "train") for i in range(args.worker_steps * PROMPTS_PER_STEP)]
    dataset = Dataset.from_dict({"prompt": [t.prompt for t in tasks], "task_index": list(range(len(tasks)))})

    batches_scored = [0]

    def correctness(prompts: list[str], completions: list[str], task_index: list[int], **_: Any) -> list[float]:
        first = batches_scored[0] * PROMPTS_PER_STEP  # step k must score tasks 32k .. 32k+31, as grpopp reads them
        if sorted(set(task_index)) != list(range(first, first + PROMPTS_PER_STEP)):
            raise ValueError(f"TRL batch {batches_scored[0]} holds tasks {sorted(set(task_index))}, not {first}..")
        batches_scored[0] += 1
        rewards = []
        for prompt, completion, index in zip(prompts, completions, task_index, strict=True):
            task = tasks[index]
            if prompt != task.prompt:
                raise ValueError(f"prompt {prompt!r} is not the prompt of task {index} ({task.prompt!r})")
            rewards.append(1.0 if env.verify(task, completion).status == "correct" else 0.0)
        return rewards

    model = AutoModelForCausalLM.from_pretrained(
        args.model_dir, dtype=torch.float32, attn_implementation=recipe_attention()
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=correctness,
        args=trl_config(args, out / "trl"),
        train_dataset=dataset,
        processing_class=tokenizer,
    )

    # Timers: instance attributes shadow the methods the training loop calls.
    bucket: dict[str, float] = dict.fromkeys(("generation", "scoring", "generate_and_score", "training_step"), 0.0)
    marks: dict[str, float] = {}

    def timed(name: str, method: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*a, **k)
            finally:
                bucket[name] += time.perf_counter() - started
                marks[f"{name}_end"] = time.perf_counter()

        return wrapper

    trainer._generate = timed("generation", trainer._generate)
    trainer._calculate_rewards = timed("scoring", trainer._calculate_rewards)
    trainer._generate_and_score_completions = timed("generate_and_score", trainer._generate_and_score_completions)
    trainer.training_step = timed("training_step", trainer.training_step)
    step_ends: list[float] = []
    split: list[dict[str, float]] = []

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            marks["start"] = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            now = time.perf_counter()
            seconds = now - (step_ends[-1] if step_ends else marks["start"])
            step_ends.append(now)
            optimizer = now - marks["training_step_end"]  # clip, optimizer step, scheduler, zero_grad
            training = bucket["training_step"] - bucket["generate_and_score"] + optimizer
            parts = {"generation": bucket["generation"], "scoring": bucket["scoring"], "training": training}
            split.append({**parts, "other": seconds - sum(parts.values())})
            bucket.update(dict.fromkeys(bucket, 0.0))

    trainer.add_callback(StepTimer())
    profile: dict[str, Any] = {}
    if args.profile:
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.runcall(trainer.train)
        profile = profile_summary(profiler, TRL_PROFILE, time.perf_counter() - started)
    else:
        trainer.train()
    model_dir = out / "model"
    trainer.save_model(str(model_dir))
    step_seconds = [b - a for a, b in zip([marks["start"], *step_ends[:-1]], step_ends, strict=True)]
    return WorkerResult(
        trainer="trl",
        versions=versions("trl", "torch", "transformers", "accelerate", "datasets"),
        steps=len(step_seconds),
        step_seconds=step_seconds,
        step_completions=[COMPLETIONS_PER_STEP] * len(step_seconds),
        split=split,
        model_dir=str(model_dir),
        profile=profile,
    )


# -- orchestration ---------------------------------------------------------------------------------


def busy_cpu_seconds() -> float:
    """CPU seconds all processes of the machine have run since boot (/proc/stat: user to steal)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children."""
    import resource

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def wait_for_quiet(max_wait: float, threshold: float = 0.3, window: float = 3.0) -> float:
    """Wait (at most ``max_wait`` s) until other processes use less than ``threshold`` cores over a
    ``window``; return the cores they used in the last window."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = busy_cpu_seconds()
        time.sleep(window)
        others = (busy_cpu_seconds() - busy) / window
        if others < threshold or time.monotonic() > deadline:
            return others


def launch(
    args: argparse.Namespace, trainer: str, steps: int, out: Path, *, seed: int, timed: bool, profile: bool = False
) -> WorkerResult:
    """Run one training job in a subprocess and read its result, with how busy other processes kept the
    machine meanwhile. A ``timed`` run uses --threads and first waits (up to --max-wait s) for the machine
    to be idle; an accuracy run uses --accuracy-threads."""
    threads = args.threads if timed else args.accuracy_threads
    python = args.trl_python if trainer == "trl" else sys.executable
    command = [
        python,
        str(Path(__file__).resolve()),
        "--worker", trainer,
        "--worker-steps", str(steps),
        "--worker-out", str(out),
        "--model-dir", str(args.model_dir),
        "--threads", str(threads),
        "--seed", str(seed),
    ]  # fmt: skip
    if profile:
        command.append("--profile")
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
    }
    shutil.rmtree(out, ignore_errors=True)  # a fresh run directory every time
    out.mkdir(parents=True)
    if timed and args.max_wait:
        wait_for_quiet(args.max_wait)
    load_before, busy_before, own_before = os.getloadavg()[0], busy_cpu_seconds(), own_cpu_seconds()
    started = time.perf_counter()
    with (out / "worker.log").open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=REPO, check=False)
    if done.returncode != 0:
        tail = (out / "worker.log").read_text()[-3000:]
        raise RuntimeError(f"{trainer} worker failed (exit {done.returncode}); log tail:\n{tail}")
    seconds, load_after = time.perf_counter() - started, os.getloadavg()[0]
    others = max(0.0, (busy_cpu_seconds() - busy_before) - (own_cpu_seconds() - own_before)) / seconds
    data = json.loads((out / "result.json").read_text())
    result = WorkerResult(**{**data, "load_average": (load_before, load_after), "others_cores": others})
    median = statistics.median(result.step_seconds[1:]) if result.steps > 1 else float("nan")
    print(
        f"  {LABELS[trainer]:<18} seed {seed} {steps:>3} steps: {median:.3f} s/step median, process {seconds:.0f}s, "
        f"other processes used {others:.2f} cores",
        flush=True,
    )
    return result


def run_stats(result: WorkerResult) -> dict[str, Any]:
    """Medians over steps 2..N of one run: s/step, completions/s and the split."""
    steps = range(1, result.steps)  # step 1 is warm-up
    if not steps:
        raise ValueError("a run needs at least 2 steps to leave out the warm-up step")
    seconds = [result.step_seconds[i] for i in steps]
    rates = [result.step_completions[i] / result.step_seconds[i] for i in steps]
    split = {key: statistics.median(result.split[i][key] for i in steps) for key in SPLIT_KEYS}
    return {
        "s_per_step": statistics.median(seconds),
        "completions_per_s": statistics.median(rates),
        "completions_per_step": statistics.median(result.step_completions[i] for i in steps),
        "split": split,
    }


def summarise(timing: list[WorkerResult]) -> dict[str, Any]:
    """Medians over repeats of the per-run medians."""
    runs = [run_stats(r) for r in timing]
    return {
        "s_per_step": statistics.median(r["s_per_step"] for r in runs),
        "completions_per_s": statistics.median(r["completions_per_s"] for r in runs),
        "completions_per_step": statistics.median(r["completions_per_step"] for r in runs),
        "split": {k: statistics.median(r["split"][k] for r in runs) for k in SPLIT_KEYS},
        "per_repeat_s_per_step": [round(r["s_per_step"], 3) for r in runs],
    }


def table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'trainer':<18} {'version':<8} {'s/step':>7} {'compl/s':>8}  "
        f"{'gen / score / train / other (s)':<32} {'accuracy':<14} {'samples':>8}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        split = " / ".join(f"{row['split'][k]:.2f}" for k in SPLIT_KEYS)
        accuracy = f"{row['accuracy_before']:.3f} -> {row['accuracy_after']:.3f}"
        lines.append(
            f"{row['label']:<18} {row['version']:<8} {row['s_per_step']:>7.2f} {row['completions_per_s']:>8.1f}  "
            f"{split:<32} {accuracy:<14} {row['samples']:>8}"
        )
    return "\n".join(lines)


def main_orchestrate(args: argparse.Namespace) -> None:
    from grpopp.recipes.tiny import load_or_create_tiny_model

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    args.model_dir = str(load_or_create_tiny_model())  # built (once) before anything is timed
    trainers = [t for t in TRAINERS if t != "grpopp-preset" or not args.no_preset]
    started = time.perf_counter()
    print(f"model {args.model_dir}; load average before: {os.getloadavg()}", flush=True)
    accuracy_before = held_out_accuracy(args.model_dir)
    print(f"held-out greedy accuracy of the starting model: {accuracy_before:.3f}", flush=True)

    timing: dict[str, list[WorkerResult]] = {t: [] for t in trainers}
    for repeat in range(args.repeats):
        print(f"timing repeat {repeat + 1}/{args.repeats} ({args.timing_steps} steps each)", flush=True)
        order = trainers if repeat % 2 == 0 else trainers[::-1]  # alternate who goes first
        for trainer in order:
            out = work / f"timing-{trainer}-{repeat}"
            timing[trainer].append(launch(args, trainer, args.timing_steps, out, seed=args.seed, timed=True))

    seeds = [args.seed + k for k in range(args.accuracy_seeds)]
    print(f"accuracy runs ({args.steps} steps; the preset {args.steps // 2}), seeds {seeds}", flush=True)
    accuracy_runs: dict[str, list[WorkerResult]] = {t: [] for t in trainers}
    accuracy_after: dict[str, list[float]] = {t: [] for t in trainers}
    for seed in seeds:
        for trainer in trainers:
            steps = args.steps // 2 if trainer == "grpopp-preset" else args.steps
            result = launch(args, trainer, steps, work / f"accuracy-{trainer}-seed{seed}", seed=seed, timed=False)
            if result.model_dir is None:
                raise RuntimeError(f"{trainer} saved no model")
            accuracy_runs[trainer].append(result)
            accuracy_after[trainer].append(held_out_accuracy(result.model_dir))

    profiles: dict[str, dict[str, Any]] = {}
    if args.profile_steps:
        print(f"cProfile runs ({args.profile_steps} steps)", flush=True)
        for trainer in ("grpopp", "trl"):
            out = work / f"profile-{trainer}"
            result = launch(args, trainer, args.profile_steps, out, seed=args.seed, timed=True, profile=True)
            profiles[trainer] = {**result.profile, "split_per_step": result.split}

    rows = []
    for trainer in trainers:
        stats = summarise(timing[trainer])
        runs = accuracy_runs[trainer]
        version_key = "trl" if trainer == "trl" else "grpopp"
        rows.append(
            {
                "trainer": trainer,
                "label": LABELS[trainer],
                "version": runs[0].versions[version_key],
                **stats,
                "accuracy_before": accuracy_before,
                "accuracy_after": statistics.fmean(accuracy_after[trainer]),
                "accuracy_after_per_seed": accuracy_after[trainer],
                "accuracy_steps": runs[0].steps,
                "samples": round(statistics.fmean(sum(r.step_completions) for r in runs)),
                "samples_per_seed": [sum(r.step_completions) for r in runs],
                "accuracy_runs_s_per_step": [round(run_stats(r)["s_per_step"], 3) for r in runs],
                "own_accuracy_per_seed": [r.own_accuracy for r in runs],
                "others_cores_per_repeat": [round(r.others_cores, 2) for r in timing[trainer]],
                "versions": runs[0].versions,
            }
        )
    speedup = rows[0]["completions_per_s"] / rows[1]["completions_per_s"]
    gap, gap_se = accuracy_gap(rows[0]["accuracy_after_per_seed"], rows[1]["accuracy_after_per_seed"])
    # Equal accuracy per sample: the matched runs compute the same objective, so what separates them is
    # seed noise; equal means a gap within two standard errors (with one seed: no lower at all).
    accuracy_ok = gap >= -2.0 * gap_se
    goal_met = speedup >= 2.0 and accuracy_ok
    print()
    print(table(rows))
    for row in rows:
        repeats = zip(row["per_repeat_s_per_step"], row["others_cores_per_repeat"], strict=True)
        cells = ", ".join(f"{seconds:.3f} ({others:.2f})" for seconds, others in repeats)
        print(f"  {row['label']:<18} s/step per repeat (cores used by other processes): {cells}")
    print(
        f"\ngrpopp (matched) / TRL completions per second: {speedup:.2f}x; held-out accuracy after "
        f"{rows[0]['samples']} samples (mean of seeds {seeds}): grpopp {rows[0]['accuracy_after']:.3f} "
        f"{[round(a, 3) for a in rows[0]['accuracy_after_per_seed']]}, "
        f"TRL {rows[1]['accuracy_after']:.3f} {[round(a, 3) for a in rows[1]['accuracy_after_per_seed']]}"
    )
    if len(rows) > 2:
        print(
            f"grpopp (preset): {rows[2]['samples']} generated samples in {rows[2]['accuracy_steps']} steps, "
            f"accuracy {rows[2]['accuracy_after']:.3f} {[round(a, 3) for a in rows[2]['accuracy_after_per_seed']]}"
        )
    print(
        f"accuracy gap grpopp - TRL: {gap:+.3f} (standard error {gap_se:.3f} from the seeds' spread): "
        f"{'equal within noise or better' if accuracy_ok else 'LOWER beyond noise'}"
    )
    print(f"goal (>= 2x completions/s with equal or better accuracy per sample): {'MET' if goal_met else 'NOT met'}")
    for trainer, profile in profiles.items():
        print(f"\ncProfile of {LABELS[trainer]} ({args.profile_steps} steps, {profile['total_seconds']:.1f}s in all):")
        for label, seconds in profile["cumulative"].items():
            print(f"  {label:<44} {seconds:8.2f}s")
    report = {
        "command": " ".join([sys.executable, *sys.argv]),
        "git": git_revision(),
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average_after": os.getloadavg()},
        "settings": {
            "steps": args.steps,
            "timing_steps": args.timing_steps,
            "repeats": args.repeats,
            "threads": args.threads,
            "accuracy_threads": args.accuracy_threads,
            "max_wait": args.max_wait,
            "seed": args.seed,
            "accuracy_seeds": args.accuracy_seeds,
            "grpopp_overrides": MATCHED_OVERRIDES,
            "trl_config": trl_settings(args),
        },
        "rows": rows,
        "speedup_completions_per_s": speedup,
        "accuracy_gap": gap,
        "accuracy_gap_standard_error": gap_se,
        "goal_met": goal_met,
        "profiles": profiles,
        "timing_runs": {t: [asdict(r) for r in results] for t, results in timing.items()},
        "wall_seconds": time.perf_counter() - started,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out} ({report['wall_seconds']:.0f}s in all)")


def git_revision() -> dict[str, Any]:
    """HEAD and the files that differ from it (read-only git commands; others edit this tree)."""

    def git(*command: str) -> str:
        done = subprocess.run(["git", *command], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {"head": git("rev-parse", "--short", "HEAD"), "changed_files": git("diff", "--name-only", "HEAD").split()}


def trl_settings(args: argparse.Namespace) -> str:
    """The TRL config's source text, so the JSON records exactly what was set."""
    import inspect

    return inspect.getsource(trl_config)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="steps of the accuracy run of each trainer")
    parser.add_argument("--timing-steps", type=int, default=20, help="steps of each timing run")
    parser.add_argument("--repeats", type=int, default=3, help="timing runs per trainer")
    parser.add_argument("--profile-steps", type=int, default=6, help="steps of the cProfile runs; 0 skips them")
    parser.add_argument("--out", default="bench_vs_trl.json", help="JSON report")
    parser.add_argument("--trl-python", default="/tmp/trl-venv/bin/python", help="interpreter of the TRL venv")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the timing and profile runs")
    parser.add_argument(
        "--accuracy-threads",
        type=int,
        default=2,
        help="torch threads of the accuracy runs (1 keeps them usable on a machine other jobs share)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the timing runs and first accuracy run")
    parser.add_argument("--accuracy-seeds", type=int, default=1, help="accuracy runs per trainer: seed, seed+1, ...")
    parser.add_argument("--no-preset", action="store_true", help="skip the grpopp-preset row")
    parser.add_argument(
        "--max-wait", type=float, default=120, help="seconds to wait for an idle machine before each run; 0: none"
    )
    parser.add_argument("--work-dir", default="/tmp/bench_vs_trl", help="run directories and worker logs")
    # internal: one training job in this process
    parser.add_argument("--worker", choices=TRAINERS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker is None:
        main_orchestrate(args)
        return
    result = run_trl(args) if args.worker == "trl" else run_grpopp(args)
    (Path(args.worker_out) / "result.json").write_text(json.dumps(asdict(result)) + "\n")


if __name__ == "__main__":
    main()
