"""grpopp.rollout: rollout engines behind one protocol (``base.RolloutEngine``): ``hf`` (transformers)
and ``vllm`` (colocated vLLM, GPU or its CPU build)."""
