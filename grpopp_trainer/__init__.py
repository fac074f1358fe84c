"""grpopp: reinforcement learning from verifiable rewards for reasoning language models (GRPO++).

The package is the card's four folders under one installed name (pyproject's ``package-dir``):
``grpopp_trainer/`` is this root package, and ``envs/``, ``rewards/`` and ``cli/`` are ``grpopp.envs``,
``grpopp.rewards`` and ``grpopp.cli``. Sub-packages, each importing only those listed after it:

- ``grpopp.cli``: the ``grpopp`` command line.
- ``grpopp.jobs``: training runs, checkpoint evaluation and reports over run folders.
- ``grpopp.training``: the run config and the training loop.
- ``grpopp.evaluation``: held-out evaluation.
- ``grpopp.learner``: the policy, distributed set-up and checkpoints.
- ``grpopp.recipes``: built-in run configs and the tiny model.
- ``grpopp.rollout``: rollout engines, and completions scored into groups.
- ``grpopp.objective``: advantages, the loss and algorithm presets.
- ``grpopp.envs``: environments; ``grpopp.rewards``: verifiers and reward shaping.
- ``grpopp.config_tools`` (config errors, validation, overrides, file loading) and ``grpopp.progress``
  (progress lines): leaf modules everything may use.

This module imports nothing, so ``import grpopp.envs.registry`` does not load torch.
"""

if __name__ != "grpopp":  # the folder imported by its own name, e.g. from a checkout on sys.path
    raise ImportError(
        f"{__name__} is grpopp's root package, installed as grpopp: import grpopp.objective.losses (not"
        " grpopp_trainer.losses) after python -m pip install -e . in a checkout"
    )
