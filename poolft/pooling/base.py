"""The ``Pooler`` contract every head follows, and the registry that builds heads by name."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import nn


class Pooler(nn.Module):
    """Reduces token states ``(batch, tokens, hidden)`` to one vector ``(batch, output_dim)``.

    A head is fully described by ``name`` and ``options``: ``build_pooler(head.name,
    hidden_size, **head.options)`` rebuilds it, which is what ``PoolftConfig`` stores.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: heads that can pool a patch grid into 2-D windows accept a ``grid`` option.
    supports_grid: ClassVar[bool] = False

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be positive, got {hidden_size}")
        self.hidden_size = hidden_size

    @property
    def output_dim(self) -> int:
        """Width of the pooled vector."""
        return self.hidden_size

    @property
    def uses_grid(self) -> bool:
        """Whether ``forward`` pools a patch grid and so needs ``grid_size`` (``window`` with ``grid=True``)."""
        return False

    @property
    def options(self) -> dict[str, Any]:
        """The constructor options (besides ``hidden_size``) that rebuild this head."""
        raise NotImplementedError

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        num_prefix_tokens: int = 0,
        grid_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Pool ``hidden_states`` ``(batch, tokens, hidden)`` to ``(batch, output_dim)``.

        ``attention_mask`` ``(batch, tokens)`` is 1 for real tokens (None: all real); the first
        ``num_prefix_tokens`` real tokens of each row are special tokens (CLS, registers), counted
        from the row's first real token so left padding is respected; ``grid_size=(h, w)`` says the
        tokens after them form an h x w patch grid. A head whose result does not depend on the
        token order (cls, mean, max, meanmax, gem, attention) ignores ``grid_size``; a head that
        does uses it (``uses_grid``) or refuses it, never drops it.
        """
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.options.items())


POOLERS: dict[str, type[Pooler]] = {}


def register_pooler(cls: type[Pooler]) -> type[Pooler]:
    """Class decorator adding a head to the registry under ``cls.name``."""
    if not cls.name or cls.name in POOLERS:
        raise ValueError(f"pooler name {cls.name!r} is empty or already registered")
    POOLERS[cls.name] = cls
    return cls


def available_poolers() -> list[str]:
    """Names accepted by ``build_pooler``, in registration order."""
    return list(POOLERS)


def pooler_option_defaults(name: str) -> dict[str, Any]:
    """The options of head ``name`` with their default values."""
    cls = _pooler_class(name)
    parameters = inspect.signature(cls.__init__).parameters
    return {
        key: param.default
        for key, param in parameters.items()
        if key not in ("self", "hidden_size") and param.kind is param.KEYWORD_ONLY
    }


def build_pooler(name: str, hidden_size: int, **options: Any) -> Pooler:
    """Build the head registered as ``name`` for states of width ``hidden_size``.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or unknown option.
    """
    cls = _pooler_class(name)
    allowed = pooler_option_defaults(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for pooler {name!r}; valid options: {valid}")
    return cls(hidden_size, **options)


def _pooler_class(name: str) -> type[Pooler]:
    if name not in POOLERS:
        raise ValueError(f"unknown pooler {name!r}; choose one of: {', '.join(POOLERS)}")
    return POOLERS[name]
