"""Recipes stage: many runs and their record.

``sweep`` runs a recipe's (head x seed) grid with a per-head rate search, resumably; ``report``
turns the recorded results into ``recipes/README.md`` and the README's results block; ``significance``
encodes each run's per-example predictions and tells real differences between heads from noise
(paired bootstrap intervals, the best head and its ties, Kendall's τ between rankings); ``compare``
runs the same grid on the user's own config; ``workers`` trains a grid's pending runs on several
processes at once (one per core for probe heads).

May import: ``poolft.training`` and everything below it (models, data, metrics, config, errors,
pooling); never the CLI.
"""
