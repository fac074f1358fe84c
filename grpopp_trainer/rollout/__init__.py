"""grpopp.rollout: rollout engines behind one protocol (``base.RolloutEngine``), each in its own file
with its config: ``hf`` (transformers; ``hf.HFEngineConfig``) and ``vllm`` (colocated vLLM, GPU or its
CPU build; ``vllm_engine.VLLMEngineConfig``). ``config.RolloutConfig`` chooses one through the
``EngineConfig`` union, and the chosen config builds its engine (``build``). ``groups`` scores
completions into groups for training and evaluation."""
