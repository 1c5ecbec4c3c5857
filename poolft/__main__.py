"""``python -m poolft`` runs the command line."""

from .cli import main

if __name__ == "__main__":  # not again in a worker process that imports this module
    raise SystemExit(main())
