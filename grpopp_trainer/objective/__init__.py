"""grpopp.objective: the math of GRPO++ as pure functions over tensors.

``advantages`` group-relative advantages; ``losses`` the policy loss with its variants (objective,
aggregation, truncated importance sampling, KL); ``algorithms`` the algorithm config and its named
presets (``grpopp``, ``dapo``, ``dr_grpo``, ...). Usable on its own in a hand-written loop::

    from grpopp.objective.advantages import compute_advantages
    from grpopp.objective.algorithms import get_preset
    from grpopp.objective.losses import policy_loss
"""
