"""`cifarkit data show`: sample grids with the class name under each image.

32 px images are drawn with nearest-neighbour upscaling so they stay sharp at a readable size.
The output is the file the user named; class names only appear as titles, never in paths.
"""

from __future__ import annotations

from pathlib import Path

from cifarkit.data.imageset import ImageSet
from cifarkit.errors import DataError
from cifarkit.safepath import output_file, temp_beside


def show_grid(ds: ImageSet, out: str | Path, first: int | None = None, per_class: int | None = None,
              cols: int = 10, cell_inches: float = 1.1, title: str | None = None) -> Path:
    """Save a grid of images with the class name under each one.

    Args:
        ds: the images to draw.
        out: the image file to write (.png, .jpg, .pdf or .svg).
        first: draw the first N images in dataset order, in rows of `cols` (default 20).
        per_class: draw N images of each class instead, one row per class.
        cols: images per row with `first`.
        cell_inches: size of one image in the figure [inches].
        title: an optional title above the grid.

    Returns:
        `out`, as a Path.

    Raises:
        DataError: a count below 1, an unsupported file type, or nothing to draw.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    for flag, v in (("--first", first), ("--per-class", per_class)):
        if v is not None and v < 1:
            raise DataError(f"{flag} {v}: use 1 or more images")
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".pdf", ".svg"):
        raise DataError(f"{out}: unsupported image type; use .png, .jpg, .pdf or .svg")
    output_file(out, overwrite=True)  # replaced when a regular file; a device, FIFO, folder or link is refused
    if per_class:
        sub = ds.first_per_class(per_class)
        order = sorted(range(len(sub)), key=lambda i: (int(sub.labels[i]), i))
        rows = [[i for i in order if sub.labels[i] == c] for c in range(sub.num_classes)]
        rows = [r for r in rows if r]
        ncols = max(len(r) for r in rows)
    else:
        n = min(first or 20, len(ds))
        sub = ds
        ncols = min(cols, n)
        rows = [list(range(k, min(k + ncols, n))) for k in range(0, n, ncols)]
    if not rows:
        raise DataError(f"{ds.origin}: no images to show")
    fig, axes = plt.subplots(len(rows), ncols, figsize=(ncols * cell_inches, len(rows) * (cell_inches + 0.25)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, idx in enumerate(rows):
        for c, i in enumerate(idx):
            ax = axes[r][c]
            ax.imshow(sub.images[i], interpolation="nearest")
            ax.set_title(sub.classes[int(sub.labels[i])], fontsize=8, y=-0.22)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(out)  # beside and renamed: a FIFO or device named --out is never opened
    try:
        fig.savefig(tmp, dpi=100)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return out
