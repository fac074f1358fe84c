"""Rollout engines behind one protocol (``base.RolloutEngine``): ``hf`` (transformers) and, on GPUs, ``vllm``."""
