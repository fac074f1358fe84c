"""rewards: verifiers and reward shaping (math verification, sandboxed code, overlong punishment).

Empty in this release: verifiers and reward shaping are the next piece of work (see the project's
issue on environments and verifiable rewards). Nothing here is importable yet on purpose.
"""
