"""Matplotlib setup shared by every figure: headless backend, a CJK-capable font when the
machine has one (the tutorial's class names and titles were Chinese), and missing glyphs
degrading to boxes instead of crashing or spamming warnings."""

from __future__ import annotations

import warnings
from functools import lru_cache


@lru_cache(maxsize=1)
def pyplot():
    """`matplotlib.pyplot` on the headless Agg backend, with a CJK font when one is installed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    cjk = [f.name for f in font_manager.fontManager.ttflist
           if any(k in f.name for k in ("Noto Sans CJK", "WenQuanYi", "SimHei", "Source Han Sans",
                                        "Droid Sans Fallback"))]
    if cjk:
        plt.rcParams["font.sans-serif"] = [cjk[0], "DejaVu Sans"]
        plt.rcParams["font.family"] = "sans-serif"
    plt.rcParams["axes.unicode_minus"] = False
    warnings.filterwarnings("ignore", message="Glyph .* missing from font")
    warnings.filterwarnings("ignore", message="Matplotlib currently does not support")
    return plt


def save(fig, out, dpi: int = 110) -> None:
    """Write `fig` to `out` (parent folders created; through a temporary file and a rename) at `dpi` and close it."""
    from pathlib import Path

    from cifarkit.safepath import temp_beside

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(out)  # written beside and renamed: never opened in place (a FIFO or device there
    try:                    # would block or be fed), and a reader never sees half a figure
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
        pyplot().close(fig)
