"""``python -m converter`` runs the ``edgeconv`` command line."""

from converter.cli.main import program

program()
