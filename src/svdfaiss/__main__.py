"""`python -m svdfaiss` runs the command line."""

from svdfaiss.cli import run

run()
