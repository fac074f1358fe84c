"""grpopp.learner: the model being trained and its state.

``policy`` the learner's log-probs, entropy and optimizer step; ``distributed`` torchrun ranks,
FSDP2 and the collective helpers; ``checkpoint`` checkpoints with their manifests and resume.
"""
