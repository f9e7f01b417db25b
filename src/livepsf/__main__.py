"""``python -m livepsf`` runs the command line."""

from livepsf.cli import main

main()
