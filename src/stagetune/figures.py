"""One way to make a figure: matplotlib's object API drawn by Agg, never pyplot's global state.

Pyplot keeps every open figure in a process-wide registry (leaks in long sweeps, races in worker
processes, a GUI backend picked at import); a bare ``Figure`` with an Agg canvas has none of that.
"""

from __future__ import annotations

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure


def new_figure(width: float, height: float, constrained: bool = False) -> Figure:
    """A figure of ``width`` x ``height`` inches with its own Agg canvas: works headless and in workers."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def colormap(name: str, bad: str | None = None) -> Colormap:
    """A registered colormap, with ``bad`` (NaN cells: a failed job) in that colour when given."""
    return colormaps[name].with_extremes(bad=bad) if bad else colormaps[name]


def text_color(rgb) -> str:
    """Black on a light cell, white on a dark one (relative luminance of the cell's colour, ITU-R BT.709)."""
    r, g, b = rgb[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"
