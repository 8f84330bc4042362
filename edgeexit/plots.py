"""Matplotlib for the host-side reports: imported on demand (where it is not installed there are
no plots, and a warning), figures written atomically as PNGs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from edgeexit.fileio import atomic_write

log = logging.getLogger(__name__)


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None (with a warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return None
    return plt


def save_png(fig, path: str | os.PathLike) -> Path:
    """Lay ``fig`` out, write it to ``path`` as a PNG (atomically) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return out


def fraction_axes(ax, xlabel: str, ylabel: str) -> None:
    """An axis of fractions (0 to 1) against ``xlabel``, with a light grid."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
