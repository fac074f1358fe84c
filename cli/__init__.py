"""cli: the ``grpopp`` command line (Typer). Entry point: ``cli.main:app``."""
