"""The one way a flow's statistics figures are finished and written (features runs log them as artifacts)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any


def save_figure(fig: Any, path: Path, title: str | None = None, blank: Iterable[Any] = (), fontsize: int = 10) -> Path:
    """Finish a statistics figure the one way every flow does: unused grid cells blank, the title, a tight layout,
    a 110 dpi PNG at `path`; the figure is closed (pyplot keeps every open figure alive otherwise)."""
    import matplotlib.pyplot as plt

    for ax in blank:
        ax.axis("off")
    if title is not None:
        fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
