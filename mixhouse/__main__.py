"""``python -m mixhouse`` is the ``mixhouse`` command."""

from mixhouse.cli import app

app()
