"""Flatten: every patch token concatenated, the "no pooling" control of the image probe.

A linear classifier on ``flatten`` sees each patch's state at its own position, so it can tell
what pooling throws away (position) from what resolution adds (more patches): when a pooling head
beats the class token, the flatten row says how much of the gain any position-aware read-out
would get. Only a fixed patch grid can be flattened (images at one size); text has no fixed length.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Pooler, register_pooler


@register_pooler
class FlattenPooler(Pooler):
    """Patch tokens ``(batch, prefix + h * w, hidden)`` -> ``(batch, h * w * hidden)``, in grid order.

    ``grid_size=(h, w)`` is the patch grid the head is built for (the run fills it in from the
    image size); the prefix tokens (CLS, registers) are left out. A different grid at run time,
    an attention mask with padding, or text states are a ``ValueError``: a linear map of a fixed
    number of positions cannot read another number.
    """

    name = "flatten"
    summary = "every patch token concatenated (images at a fixed size; the no-pooling control; h*w x hidden)"

    def __init__(self, hidden_size: int, *, grid_size: list[int] | tuple[int, int] | None = None) -> None:
        super().__init__(hidden_size)
        if grid_size is None:
            raise ValueError(
                "flatten needs grid_size=[h, w], the patch grid it concatenates; poolft train fills it in "
                "from data.image_size for image backbones (text has no fixed number of tokens)"
            )
        grid = tuple(int(side) for side in grid_size)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"flatten option grid_size must be two positive sides [h, w], got {list(grid_size)}")
        self.grid_size = grid

    @property
    def output_dim(self) -> int:
        return self.grid_size[0] * self.grid_size[1] * self.hidden_size

    @property
    def uses_grid(self) -> bool:
        return True

    @property
    def options(self) -> dict[str, Any]:
        return {"grid_size": list(self.grid_size)}

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        num_prefix_tokens: int = 0,
        grid_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """The patch states after the ``num_prefix_tokens`` prefix, row-major, as one vector per row."""
        if grid_size is None or tuple(grid_size) != self.grid_size:
            raise ValueError(
                f"flatten was built for a {self.grid_size[0]}x{self.grid_size[1]} patch grid but got "
                f"{'no grid (text states?)' if grid_size is None else f'{grid_size[0]}x{grid_size[1]}'}; "
                "run it on images of the size it was trained at"
            )
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("flatten reads every position; it cannot take padded rows (an attention mask with zeros)")
        patches = hidden_states[:, num_prefix_tokens:]
        if patches.size(1) != self.grid_size[0] * self.grid_size[1]:
            raise ValueError(
                f"flatten expected {self.grid_size[0] * self.grid_size[1]} patch tokens after "
                f"{num_prefix_tokens} prefix tokens, got {patches.size(1)}"
            )
        return patches.reshape(patches.size(0), -1)
