"""Plot files for the suites: matplotlib on its file-only backend, and one way to write a figure.

matplotlib comes with the ``bench`` extra; it is imported on first use, so a suite module imports without it
(the gpu suite, which runs on machines without matplotlib, draws its plot with OpenCV instead).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (writes files, needs no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path | str, dpi: int = 110) -> Path:
    """Lay out ``fig``, write it to ``path`` (PNG at ``dpi``) and free it; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)
