"""grpopp.jobs: what the CLI commands run over run folders.

``run`` starts or resumes a training run (model, engine, run folder); ``eval_job`` evaluates a run's
checkpoints or models (``grpopp eval``, ``grpopp reverify``); ``report`` writes ``grpopp report``'s
figures and tables. They sit above the training loop and evaluation, which import nothing from here.
"""
