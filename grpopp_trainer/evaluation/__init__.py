"""grpopp.evaluation: held-out evaluation of an engine on environments' test splits.

``evaluate`` generates, judges and summarises (avg@k, pass@k, maj@k with bootstrap intervals); the
trainer calls it during training and ``grpopp.jobs.eval_job`` for saved checkpoints. ``results``
holds the typed records it returns and results.json stores (``Summary``, ``EvalResults``).
"""
