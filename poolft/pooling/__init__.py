"""Pooling heads: reduce token states ``(batch, tokens, hidden)`` to ``(batch, output_dim)``.

Importing this package registers every head (the import order below is the listing order);
build one with ``build_pooler(name, hidden_size, **options)``.
"""

from . import cls, reductions, attention, window, flatten  # noqa: F401
from .base import POOLERS, Pooler, available_poolers, build_pooler, pooler_option_defaults, register_pooler

__all__ = ["POOLERS", "Pooler", "available_poolers", "build_pooler", "pooler_option_defaults", "register_pooler"]
