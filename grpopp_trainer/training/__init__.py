"""grpopp.training: the training loop.

``config`` the run's config (``TrainConfig``) and how it is resolved from files, flags and presets;
``trainer`` the loop itself, as numbered steps in one file; ``batch`` groups, filters and loss
tensors of a step; ``run_log`` metrics.jsonl, samples.jsonl and the optional trackers.
"""
