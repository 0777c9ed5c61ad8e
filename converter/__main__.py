"""``python -m converter`` runs the ``edgeconv`` command line."""

from .cli import main

main()
