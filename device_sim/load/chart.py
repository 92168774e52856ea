"""The load report's chart: panels of lines over time, drawn by matplotlib.

matplotlib is the `sim` extra (`pip install 'fleetgate[sim]'`; the dev extra has it too): a load
report's reader wants real axes, readable tick labels ("6.4k", not raw 6380) and real text, which a
hand-made raster with a 3x5 font could not give ("msg/s" came out as "m59/5"). It is imported only
when a chart is drawn, so fleet-sim runs without it; asking for a chart then says what to install.

Figures are built on matplotlib's object API (Figure + the Agg canvas), never pyplot's global state,
so drawing is safe in a process that does other things, and tests read the titles and labels back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BLUE, ORANGE, RED = "#1f77b4", "#ff7f0e", "#d62728"
X_LABEL = "time since the first message (s)"
INSTALL = "the chart needs matplotlib: pip install 'fleetgate[sim]'"


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]
    color: str


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str  # the y axis label, e.g. "msg/s"
    series: Sequence[Series]


def build_chart(panels: Sequence[Panel], *, title: str, x_range: tuple[float, float] | None = None) -> Figure:
    """One figure, a panel per row sharing the time axis; raises RuntimeError without matplotlib."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import EngFormatter
    except ImportError:
        raise RuntimeError(INSTALL) from None
    figure = Figure(figsize=(8, 1.2 + 2.4 * len(panels)), dpi=100, layout="constrained")
    figure.suptitle(title)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        ax.set_title(panel.title, loc="left")
        ax.set_ylabel(panel.unit)
        ax.yaxis.set_major_formatter(EngFormatter(sep=""))  # 6380 -> 6.38k
        ax.grid(True, color="#dddddd")
        for series in panel.series:
            xs, ys = [x for x, _ in series.points], [y for _, y in series.points]
            ax.plot(xs, ys, label=series.label, color=series.color, linewidth=1.6)
        highest = max((y for series in panel.series for _, y in series.points), default=0.0)
        ax.set_ylim(0, highest * 1.15 or 1.0)  # head-room: a steady line is not drawn on the frame
        if any(series.points for series in panel.series):
            ax.legend(loc="lower right")
    if x_range is not None and x_range[1] > x_range[0]:
        axes[-1].set_xlim(*x_range)
    axes[-1].set_xlabel(X_LABEL)
    return figure


def save_chart(figure: Figure, path: Path) -> None:
    """PNG, or SVG when the name ends in .svg (with its text kept as text, not outlines)."""
    import matplotlib

    kind = "svg" if path.suffix.lower() == ".svg" else "png"
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(path, format=kind)
