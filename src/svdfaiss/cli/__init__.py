"""The `svdfaiss` command line: parses flags, calls the library, prints results.

`app` is the Typer application and `run` the console script (`svdfaiss.cli:run`, and
`python -m svdfaiss`).
"""

from svdfaiss.cli.main import app, run

__all__ = ["app", "run"]
