"""The `svdfaiss` command line: parses flags, calls the library, prints results.

`app` is the Typer application and `run` the console script (`svdfaiss.cli:run`, and
`python -m svdfaiss`). The command tree is registered here, in the order `svdfaiss --help`
lists it; each command lives in the module of its group.
"""

from svdfaiss.cli.build import build
from svdfaiss.cli.bundles import bundles_app
from svdfaiss.cli.evaluate import evaluate, tune
from svdfaiss.cli.experiment import experiment_app
from svdfaiss.cli.export import export_app
from svdfaiss.cli.main import app, run
from svdfaiss.cli.query import query_app
from svdfaiss.cli.serve import demo, serve
from svdfaiss.cli.synth import synth

app.add_typer(bundles_app, name="bundles")
app.add_typer(query_app, name="query")
app.add_typer(export_app, name="export")
app.add_typer(experiment_app, name="experiment")
for command in (synth, build, evaluate, tune, serve, demo):
    app.command()(command)

__all__ = ["app", "run"]
