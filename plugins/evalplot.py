"""What the evaluation commands' curves share (``eval cache``, ``eval compress``, ``eval
router``, ``eval cascade``): matplotlib without a display, and one way to finish a figure.
matplotlib is optional: ``pip install 'switchyard[eval]'``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MISSING = "matplotlib is not installed (pip install 'switchyard[eval]')"


def pyplot() -> Any | None:
    """``matplotlib.pyplot`` drawing off-screen (Agg), or None where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save(plt: Any, fig: Any, ax: Any, path: str | Path, title: str, *, dpi: int = 120) -> None:
    """Grid, title, tight layout; the PNG written to ``path``; the figure closed."""
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
