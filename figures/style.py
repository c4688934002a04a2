"""The house style: paper-ready sizes, one font size scale, a colourblind-safe palette, and
PNG + PDF output with embedded (Type 42) fonts.

Figures are pure functions from results to a :class:`matplotlib.figure.Figure`; they never
call ``show()`` and never write files. Only :func:`save` writes, and only where it is told.

>>> figure = new_figure(columns=1, height=2.0)
>>> float(figure.get_figwidth()), PALETTE["flow"]
(3.4, '#0072B2')
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files: no display needed, none opened

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# Okabe & Ito (2008), the palette most journals point to for colour-vision deficiency
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
             "#000000")
PALETTE = {
    "flow": OKABE_ITO[0], "control": "#7F7F7F", "fusion": OKABE_ITO[1], "review": OKABE_ITO[3],
    "highlight": OKABE_ITO[4],
}
SERIES_COLORS = OKABE_ITO  # one per flow, in order
SEQUENTIAL = "viridis"  # heatmaps of magnitudes
DIVERGING = "RdBu_r"  # heatmaps of signed changes, centred on zero

COLUMN_WIDTH = 3.4  # inches: one column of a two-column paper
PAGE_WIDTH = 7.0  # inches: the full text width
DPI = 200

RC = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "pdf.fonttype": 42,  # embed TrueType fonts: editable text, accepted by every publisher
    "ps.fonttype": 42,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
}


@contextlib.contextmanager
def house_style() -> Iterator[None]:
    """The house rc parameters for the duration of the block (global state left as it was)."""
    with plt.rc_context(RC):
        yield


def new_figure(columns: int = 1, height: float = 2.2, ncols: int = 1, nrows: int = 1,
               **kwargs) -> Figure:
    """An empty figure one column (3.4 in) or the page (7.0 in) wide, in the house style,
    with ``nrows x ncols`` axes. Not attached to pyplot's global figure list."""
    with house_style():
        figure = Figure(figsize=(COLUMN_WIDTH if columns == 1 else PAGE_WIDTH, height),
                        layout="constrained")
        figure.subplots(nrows, ncols, squeeze=False, **kwargs)
    return figure


def save(figure: Figure, directory: str | Path, name: str) -> list[Path]:
    """Write ``name.png`` and ``name.pdf`` into ``directory``; returns the two paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.png", directory / f"{name}.pdf"]
    with house_style():
        figure.savefig(paths[0], dpi=DPI)
        figure.savefig(paths[1])
    return paths


def note_empty(axes, reason: str) -> None:
    """Mark a panel with nothing to draw (its rows have n = 0): ``reason`` in its middle."""
    axes.text(0.5, 0.5, reason, ha="center", va="center", transform=axes.transAxes,
              fontsize="small", color="0.4", wrap=True)
