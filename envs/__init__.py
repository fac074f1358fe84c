"""envs: task sources with verifiable rewards (typed tasks, registry, mixtures).

Empty in this release: the environment contract and the built-in environments are the next piece
of work (see the project's issue on environments). Nothing here is importable yet on purpose.
"""
