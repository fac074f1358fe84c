"""envs: task sources with verifiable rewards (typed tasks, registry, mixtures).

``envs.base`` holds the contract (``Task``, ``EnvConfig``, ``Environment``); ``envs.registry`` the
registry (``register_env``, ``make_env``, plugins, the ``grpopp.envs`` entry points);
``envs.mixture`` weighted mixtures with exact quotas. Built-ins: ``arithmetic``, ``countdown``,
``gsm8k`` and ``math`` (``math_data``), ``code`` (run in the sandbox), ``reasoning_gym:<task>``.
"""
