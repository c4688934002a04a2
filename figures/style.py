"""The house style: paper-ready sizes, one font size scale, a colourblind-safe palette, and
PNG + PDF output with embedded (Type 42) fonts.

Figures are pure functions from results to a :class:`matplotlib.figure.Figure`; they never
call ``show()`` and never write files. Only :func:`save` writes, and only where it is told.
Importing them picks no matplotlib backend: in Jupyter a figure returned by a cell shows as an
image; a command-line program calls :func:`use_file_backend` before it draws.

>>> figure = new_figure(columns=1, height=2.0)
>>> float(figure.get_figwidth()), PALETTE["flow"]
(3.4, '#0072B2')
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

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
# the backend ipykernel names in MPLBACKEND for every Jupyter kernel (unless the user named one)
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"

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


def use_file_backend() -> None:
    """Draw into files only (Agg): what every command-line program that draws calls first, so
    that it never opens, or needs, a display. Never called on import: a notebook keeps its own
    backend."""
    matplotlib.use("Agg")


def _show_in_notebook() -> None:
    """In a Jupyter kernel whose backend is the inline one, load that backend's module: that
    registers IPython's image display of figures, which pyplot does at its first figure but a
    figure made without pyplot (all of ours) never triggers. Chooses no backend: the module
    activates itself only when it is the backend in force (not after ``matplotlib.use``)."""
    if os.environ.get("MPLBACKEND") in (INLINE_BACKEND, "inline"):
        importlib.import_module(INLINE_BACKEND.removeprefix("module://"))


@contextlib.contextmanager
def house_style() -> Iterator[None]:
    """The house rc parameters for the duration of the block (global state left as it was)."""
    with plt.rc_context(RC):
        yield


def new_figure(columns: int = 1, height: float = 2.2, ncols: int = 1, nrows: int = 1,
               **kwargs) -> Figure:
    """An empty figure one column (3.4 in) or the page (7.0 in) wide, in the house style,
    with ``nrows x ncols`` axes. Not attached to pyplot's global figure list; in Jupyter it
    shows as an image when a cell returns it."""
    _show_in_notebook()
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


def log_y(axes) -> None:
    """A log y axis labelled in plain numbers at 1, 2 and 5 of each decade (no 10^k, no
    crowded minor labels)."""
    axes.set_yscale("log")
    axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    axes.yaxis.set_minor_formatter(NullFormatter())
