"""grpopp.rewards (folder ``rewards/``): verifiers and reward shaping.

``types`` the verdict and reward records (``VerifyResult``, ``Reward``, the status vocabulary);
``extract`` answer extraction; ``math_verify_pool`` math-verify in worker processes; ``sandbox`` and
``code_judge`` code run in bubblewrap containers; ``shaping`` reward composition and DAPO's overlong
punishment. Imports nothing else of grpopp.
"""

if __name__ != "grpopp.rewards":  # imported by its folder name, e.g. from a checkout on sys.path
    raise ImportError(
        f"{__name__} is grpopp's rewards/ folder, installed as grpopp.rewards:"
        " import grpopp.rewards.types instead of rewards.types"
        " (python -m pip install -e . in a checkout)"
    )
