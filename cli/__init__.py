"""grpopp.cli (folder ``cli/``): the ``grpopp`` command line (Typer). Entry point: ``grpopp.cli.main:app``."""

if __name__ != "grpopp.cli":  # imported by its folder name, e.g. from a checkout on sys.path
    raise ImportError(
        f"{__name__} is grpopp's cli/ folder, installed as grpopp.cli:"
        " import grpopp.cli.main instead of cli.main"
        " (python -m pip install -e . in a checkout)"
    )
