"""Pictures of ``poolft explain``: one PNG per input, drawn from an ``Explanation``.

Text: the tokenizer's pieces in wrapped rows, each shaded by its weight (darkest = the largest
weight, scale in the colour bar), excluded tokens (padding, skipped prefix tokens) grey and hatched;
a window head adds one strip per level under each row, a bar per window. Image: the weights as a
heatmap over the patch grid laid on the pixels the model saw, one more panel per window level with
its bins (or sliding windows) outlined; the prefix tokens' weights are listed beside it. The title
holds the input, the predicted label and its probability. Sizes are fixed by the content
(``picture_size``), so a picture is always the same number of pixels for the same input and head.

Needs matplotlib (``pip install 'poolft[report]'``).
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PoolftError
from .explain import Explanation

DPI = 100
#: text pictures: width, character cells per row of tokens, longest token label shown
TEXT_WIDTH_IN = 10.0
LINE_CELLS = 96
LABEL_CHARS = 18
#: text pictures: title characters per line, and heights in inches
TITLE_CHARS, TITLE_LINE_IN = 130, 0.175
TOKEN_ROW_IN, STRIP_IN, ROW_GAP_IN, PANEL_TITLE_IN, COLORBAR_IN = 0.3, 0.1, 0.14, 0.25, 0.55
#: image pictures: one square panel per weight map or window level, and a column of notes
PANEL_IN, IMAGE_FOOTER_IN, NOTES_IN, IMAGE_TITLE_LINE_IN = 2.6, 0.15, 2.6, 0.15
CMAP = "YlOrRd"
EXCLUDED_COLOR = "#d9d9d9"
WINDOW_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def picture_paths(out: str | Path, count: int) -> list[Path]:
    """Where ``count`` pictures go: ``out`` itself for one input, ``STEM-0.png``, ``STEM-1.png``... for several."""
    out = Path(out)
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def check_out_path(out: str | Path) -> None:
    """``--out`` must be a ``.png`` file in an existing, writable folder (checked before any model loads)."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise PoolftError(f"--out {out} must end in .png (poolft explain writes PNG pictures)")
    if out.is_dir():
        raise PoolftError(f"--out {out} is a folder; pass a file name such as {out / 'explain.png'}")
    folder = out.parent
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise PoolftError(f"cannot write --out {out}: {folder} {what}; pass a path in an existing folder")
    if not os.access(folder, os.W_OK):
        raise PoolftError(f"cannot write --out {out}: folder {folder} is not writable; pass another path")


def new_figure(width_in: float, height_in: float) -> Any:
    """A matplotlib ``Figure`` outside pyplot (no global state, no backend switch), or a one-line error.

    Raises:
        PoolftError: matplotlib is not installed (it is the ``report`` extra).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PoolftError(
            "poolft explain draws its pictures with matplotlib; pip install 'poolft[report]' (or use --json alone)"
        ) from None
    return Figure(figsize=(width_in, height_in), dpi=DPI)


def save_pictures(explanations: list[Explanation], out: str | Path) -> list[Path]:
    """Draw each explanation to its PNG (``picture_paths``) and return the paths."""
    paths = picture_paths(out, len(explanations))
    for explanation, path in zip(explanations, paths, strict=True):
        figure = draw_text(explanation) if explanation.kind == "text" else draw_image(explanation)
        try:
            figure.savefig(path, dpi=DPI)
        except OSError as error:
            raise PoolftError(f"cannot write {path} ({error}); pass another --out") from None
    return paths


def picture_size(explanation: Explanation) -> tuple[int, int]:
    """``(width, height)`` in pixels of the picture ``save_pictures`` draws for ``explanation``."""
    width, height = figure_inches(explanation)
    return round(width * DPI), round(height * DPI)


def figure_inches(explanation: Explanation) -> tuple[float, float]:
    """The figure's ``(width, height)`` in inches, from the content alone."""
    if explanation.kind == "image":
        panels = len(weight_maps(explanation)) + len(image_window_levels(explanation))
        width = PANEL_IN * panels + NOTES_IN
        return width, image_header_inches(explanation, width) + PANEL_IN + IMAGE_FOOTER_IN
    rows = len(token_rows(explanation.tokens, explanation.excluded))
    strips = sum(len(level_strips(level)) for level in explanation.windows or [])
    panel = PANEL_TITLE_IN + rows * (TOKEN_ROW_IN + strips * STRIP_IN + ROW_GAP_IN)
    return TEXT_WIDTH_IN, text_header_inches(explanation) + len(weight_maps(explanation)) * panel + COLORBAR_IN


def text_header_inches(explanation: Explanation) -> float:
    """Height of a text picture's title block: its lines (3 to 5) and a margin."""
    return 0.3 + TITLE_LINE_IN * len(title_lines(explanation, TITLE_CHARS).splitlines())


def image_title_chars(width_in: float) -> int:
    """Characters per title line of an image picture ``width_in`` inches wide."""
    return int(width_in * 15)


def image_header_inches(explanation: Explanation, width_in: float) -> float:
    """Height of an image picture's title block: its lines (3 to 5), the panel titles and a margin."""
    lines = len(title_lines(explanation, image_title_chars(width_in)).splitlines())
    return 0.35 + IMAGE_TITLE_LINE_IN * lines


def weight_maps(explanation: Explanation) -> list[tuple[str, list[float]]]:
    """The weight maps drawn: one per attention query with ``per_query``, else the combined weights."""
    if explanation.query_weights is not None:
        return [(f"query {i}", weights) for i, weights in enumerate(explanation.query_weights)]
    return [("", explanation.weights)]


def title_lines(explanation: Explanation, width: int) -> str:
    """Input and prediction (one line), head and rule (two lines each at most), wrapped to ``width`` characters."""
    first = textwrap.shorten(f"{explanation.input}  ->  {explanation.label} ({explanation.probability:.2f})", width)
    head = textwrap.wrap(f"head: {explanation.head}", width, max_lines=2, subsequent_indent="  ")
    rule = textwrap.wrap(f"weights: {explanation.rule}", width, max_lines=2, subsequent_indent="  ")
    return "\n".join([first, *head, *rule])


def scale_max(explanation: Explanation) -> float:
    """The weight drawn darkest: the largest weight of any map (at least a tiny positive number)."""
    return max([max(weights) for _, weights in weight_maps(explanation)] + [1e-12])


# ---------------------------------------------------------------------------------------------- text


def token_label(token: str) -> str:
    """A token as drawn: at most ``LABEL_CHARS`` characters, an empty piece shown as ``·``."""
    token = token or "·"
    return token if len(token) <= LABEL_CHARS else token[: LABEL_CHARS - 1] + "…"


def drawn_tokens(tokens: list[str], excluded: list[bool]) -> list[tuple[list[int], str]]:
    """The boxes drawn, ``(positions, label)``: one per token, but a run of 3 or more identical
    excluded tokens (the padding of a short text in a batch) shares one box labelled ``[PAD] ×n``."""
    boxes: list[tuple[list[int], str]] = []
    start = 0
    while start < len(tokens):
        end = start + 1
        while end < len(tokens) and excluded[start] and excluded[end] and tokens[end] == tokens[start]:
            end += 1
        if end - start >= 3:
            boxes.append((list(range(start, end)), f"{token_label(tokens[start])} ×{end - start}"))
        else:
            boxes += [([position], token_label(tokens[position])) for position in range(start, end)]
        start = end
    return boxes


def token_rows(tokens: list[str], excluded: list[bool]) -> list[list[tuple[list[int], str, float, float]]]:
    """The boxes wrapped into rows of ``LINE_CELLS`` cells: per row ``(positions, label, x start, width)``."""
    rows: list[list[tuple[list[int], str, float, float]]] = [[]]
    x = 0.0
    for positions, label in drawn_tokens(tokens, excluded):
        width = len(label) + 1.0
        if rows[-1] and x + width > LINE_CELLS:
            rows.append([])
            x = 0.0
        rows[-1].append((positions, label, x, width))
        x += width
    return rows


def level_strips(level: list[list[int]]) -> list[list[int]]:
    """Window indices of one level placed in strips so windows of a strip never overlap (sliding windows do)."""
    strips: list[list[int]] = []
    ends: list[int] = []
    for index in sorted(range(len(level)), key=lambda i: level[i][0]):
        start, end = level[index][:2]
        if end <= start:
            continue
        for strip, last in enumerate(ends):
            if last <= start:
                strips[strip].append(index)
                ends[strip] = end
                break
        else:
            strips.append([index])
            ends.append(end)
    return strips


def draw_text(explanation: Explanation) -> Any:
    """The text picture of one explanation (a matplotlib ``Figure``)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

    width_in, height_in = figure_inches(explanation)
    figure = new_figure(width_in, height_in)
    title = title_lines(explanation, TITLE_CHARS)
    figure.text(0.02, 1 - 0.12 / height_in, title, va="top", fontsize=9, linespacing=1.4)
    norm = Normalize(0, scale_max(explanation))
    cmap = colormaps[CMAP]
    rows = token_rows(explanation.tokens, explanation.excluded)
    levels = explanation.windows or []
    strips = [level_strips(level) for level in levels]
    row_in = TOKEN_ROW_IN + sum(len(s) for s in strips) * STRIP_IN + ROW_GAP_IN
    panel_in = PANEL_TITLE_IN + len(rows) * row_in
    left, right = 0.06, 0.97
    top = height_in - text_header_inches(explanation)
    for title, weights in weight_maps(explanation):
        axes = figure.add_axes((left, (top - panel_in) / height_in, right - left, panel_in / height_in))
        axes.set_xlim(0, LINE_CELLS)
        axes.set_ylim(panel_in, 0)  # inches from the panel's top
        axes.axis("off")
        if title:
            axes.text(0, PANEL_TITLE_IN * 0.5, title, va="center", fontsize=9, fontweight="bold")
        for r, row in enumerate(rows):
            y = PANEL_TITLE_IN + r * row_in
            for positions, label, x, width in row:
                excluded = explanation.excluded[positions[0]]
                weight = weights[positions[0]]
                face = EXCLUDED_COLOR if excluded else cmap(norm(weight))
                axes.add_patch(
                    Rectangle(
                        (x + 0.1, y),
                        width - 0.2,
                        TOKEN_ROW_IN * 0.9,
                        facecolor=face,
                        edgecolor="#999999" if excluded else "none",
                        hatch="////" if excluded else None,
                        linewidth=0.5,
                    )
                )
                dark = not excluded and norm(weight) > 0.6
                axes.text(
                    x + width / 2,
                    y + TOKEN_ROW_IN * 0.45,
                    label,
                    ha="center",
                    va="center",
                    family="monospace",
                    fontsize=10,
                    color="#777777" if excluded else ("white" if dark else "black"),
                )
            draw_window_strips(axes, levels, strips, row, y + TOKEN_ROW_IN)
        top -= panel_in
    colorbar_axes = figure.add_axes((left, 0.25 / height_in, 0.3, 0.12 / height_in))
    colorbar = figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=colorbar_axes, orientation="horizontal")
    colorbar.ax.tick_params(labelsize=8)
    colorbar.locator = MaxNLocator(5)
    figure.text(left + 0.32, 0.3 / height_in, "weight; grey hatched: excluded (weight 0)", fontsize=8, va="center")
    return figure


def draw_window_strips(
    axes: Any, levels: list[list[list[int]]], strips: list[list[list[int]]], row: list, y: float
) -> None:
    """Under one row of tokens, a strip per level (and overlap), with a bar over each window's tokens on it."""
    x_of = {position: (x, width) for positions, _, x, width in row for position in positions}
    for level_index, (level, level_strip) in enumerate(zip(levels, strips, strict=True)):
        for strip in level_strip:
            for order, window in enumerate(strip):
                start, end = level[window][:2]
                on_row = [p for p in range(start, end) if p in x_of]
                if not on_row:
                    continue
                x0 = x_of[on_row[0]][0]
                x1 = x_of[on_row[-1]][0] + x_of[on_row[-1]][1]
                axes.plot(
                    [x0 + 0.3, x1 - 0.3],
                    [y + STRIP_IN * 0.5] * 2,
                    color=WINDOW_COLORS[(level_index * 2 + order) % len(WINDOW_COLORS)],
                    linewidth=2.5,
                    solid_capstyle="butt",
                )
            if strip is level_strip[0]:
                axes.text(-0.5, y + STRIP_IN * 0.5, f"L{level_index + 1}", ha="right", va="center", fontsize=6)
            y += STRIP_IN


# --------------------------------------------------------------------------------------------- image


def image_window_levels(explanation: Explanation) -> list[list[list[int]]]:
    """The 2-D window levels drawn as panels (1-D windows over a patch sequence are not drawn)."""
    levels = explanation.windows or []
    return [level for level in levels if level and len(level[0]) == 4]


def draw_image(explanation: Explanation) -> Any:
    """The image picture of one explanation (a matplotlib ``Figure``)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

    width_in, height_in = figure_inches(explanation)
    figure = new_figure(width_in, height_in)
    title = title_lines(explanation, image_title_chars(width_in))
    figure.text(0.01, 1 - 0.08 / height_in, title, va="top", fontsize=8.5)
    grid_h, grid_w = explanation.grid_size
    prefix = explanation.num_prefix_tokens
    picture = explanation.image if explanation.image is not None else np.full((grid_h, grid_w, 3), 128, np.uint8)
    gray = picture.astype(np.float32).mean(axis=2)
    height, width = gray.shape
    norm = Normalize(0, scale_max(explanation))
    cmap = colormaps[CMAP]
    panels = [(title or "weights", weights) for title, weights in weight_maps(explanation)]
    window_levels = image_window_levels(explanation)
    bottom = IMAGE_FOOTER_IN / height_in

    def panel_axes(index: int) -> Any:
        axes = figure.add_axes(
            (index * PANEL_IN / width_in + 0.005, bottom, PANEL_IN / width_in * 0.96, PANEL_IN / height_in)
        )
        axes.imshow(gray, cmap="gray", vmin=0, vmax=255, extent=(0, grid_w, grid_h, 0))
        axes.set_xticks([])
        axes.set_yticks([])
        return axes

    for index, (title, weights) in enumerate(panels):
        axes = panel_axes(index)
        cells = np.asarray(weights[prefix:], dtype=np.float32).reshape(grid_h, grid_w)
        # opacity grows with the weight: a patch read little (or not at all) shows the image through
        shade = cmap(norm(cells))
        shade[..., 3] = 0.85 * np.clip(norm(cells), 0, 1)
        axes.imshow(shade, extent=(0, grid_w, grid_h, 0), interpolation="nearest")
        for cell, excluded in enumerate(explanation.excluded[prefix:]):
            if excluded:
                row, col = divmod(cell, grid_w)
                axes.add_patch(Rectangle((col, row), 1, 1, facecolor=EXCLUDED_COLOR, hatch="////", edgecolor="#999999"))
        axes.set_title(f"{title} ({grid_h}x{grid_w} patches, {width}x{height} px)", fontsize=8)
    for offset, level in enumerate(window_levels):
        axes = panel_axes(len(panels) + offset)
        bounds = {(r0, r1, c0, c1) for r0, r1, c0, c1 in level}
        overlapping = len(bounds) > 1 and sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in bounds) > grid_h * grid_w
        for index, (r0, r1, c0, c1) in enumerate(level):
            inset = 0.08 + (0.12 * (index % 3) if overlapping else 0.0)
            axes.add_patch(
                Rectangle(
                    (c0 + inset, r0 + inset),
                    c1 - c0 - 2 * inset,
                    r1 - r0 - 2 * inset,
                    fill=False,
                    edgecolor=WINDOW_COLORS[index % len(WINDOW_COLORS)],
                    linewidth=1.6,
                )
            )
        side = math.isqrt(len(level))
        kind = f"{len(level)} sliding windows" if overlapping else f"{side}x{side} bins"
        axes.set_title(f"level {offset + 1}: {kind}", fontsize=8)
    notes_left = (len(panels) + len(window_levels)) * PANEL_IN / width_in + 0.01
    figure.text(notes_left, bottom + PANEL_IN / height_in, image_notes(explanation), va="top", fontsize=8)
    colorbar_axes = figure.add_axes((notes_left, bottom + 0.1 / height_in, 0.12 / width_in, 1.0 / height_in))
    colorbar = figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=colorbar_axes)
    colorbar.ax.tick_params(labelsize=7)
    colorbar.locator = MaxNLocator(5)
    return figure


def image_notes(explanation: Explanation) -> str:
    """The notes column: each prefix token's weight (or that it is excluded), and the patches' total."""
    lines = ["prefix tokens:"] if explanation.num_prefix_tokens else ["no prefix tokens"]
    for position in range(explanation.num_prefix_tokens):
        state = "excluded" if explanation.excluded[position] else f"{explanation.weights[position]:.3f}"
        lines.append(f"  {explanation.tokens[position]}: {state}")
    patches = sum(explanation.weights[explanation.num_prefix_tokens :])
    lines.append(f"patches: {patches:.3f} of the weight")
    if explanation.windows and not image_window_levels(explanation):
        lines.append(f"{sum(len(level) for level in explanation.windows)} 1-D windows")
        lines.append("over the patch sequence")
    return "\n".join(lines)
