"""`python -m onceforall` is the `ofa` command."""

from onceforall.cli import app

app()
