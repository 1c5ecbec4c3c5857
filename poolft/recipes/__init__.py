"""Recipes stage: many runs and their record.

``sweep`` runs a recipe's (head x seed) grid with a per-head rate search, resumably; ``report``
turns the recorded results into ``recipes/README.md`` and the README's results block.

May import: ``poolft.training`` and everything below it (models, data, metrics, config, errors,
pooling); never the CLI.
"""
