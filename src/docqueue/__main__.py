"""`python -m docqueue` runs the command line."""

from docqueue.cli import app

app()
