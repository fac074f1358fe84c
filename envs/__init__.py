"""grpopp.envs (folder ``envs/``): task sources with verifiable rewards.

``base`` holds the contract (``Task``, ``EnvConfig``, ``Environment``); ``registry`` the registry
(``register_env``, ``make_env``, plugins from a file or the ``grpopp.envs`` entry points); ``mixture``
weighted mixtures with exact quotas; ``check`` the ``grpopp envs check`` diagnostics. Built-ins:
``arithmetic``, ``countdown``, ``gsm8k`` and ``math`` (``math_data``, with the data-file helpers data
environments share), ``code`` (run in the sandbox), ``reasoning_gym:<task>``. Imports only
``grpopp.rewards`` and ``grpopp.config_tools``: no torch.
"""

if __name__ != "grpopp.envs":  # imported by its folder name, e.g. from a checkout on sys.path
    raise ImportError(
        f"{__name__} is grpopp's envs/ folder, installed as grpopp.envs:"
        " import grpopp.envs.base instead of envs.base"
        " (python -m pip install -e . in a checkout)"
    )
