"""grpopp.objective: the math of GRPO++ as pure functions over tensors.

``advantages`` group-relative advantages; ``losses`` the policy loss and its variants, each a member
of a config union (objective, aggregation, truncated importance sampling), and the KL;
``algorithms`` the algorithm config and its named presets (``grpopp``, ``dapo``, ``dr_grpo``, ...).
Usable on its own in a hand-written loop::

    from grpopp.objective import compute_advantages, get_preset, policy_loss
"""

from grpopp.objective.advantages import compute_advantages
from grpopp.objective.algorithms import PRESETS, AlgorithmConfig, get_preset
from grpopp.objective.losses import LossConfig, LossOutput, policy_loss

__all__ = ["PRESETS", "AlgorithmConfig", "LossConfig", "LossOutput", "compute_advantages", "get_preset", "policy_loss"]
