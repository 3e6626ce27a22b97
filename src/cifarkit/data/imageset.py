"""`ImageSet`: the one in-memory dataset type every later step consumes.

Pixels are a single uint8 array (N, H, W, 3) so that training can move them to the device once
and augment on tensors; provenance (which file, which row) travels with every image so that a
misclassified example can always be traced back to its source.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ImageSet:
    """The one in-memory dataset type: uint8 pixels, labels, class names and provenance.

    Attributes:
        images: (N, H, W, 3) uint8 RGB.
        labels: (N,) int64 class ids.
        classes: class names, indexed by id.
        sources: per image, the file it came from (a batch file or an image path).
        indices: per image, its row in that file.
        filenames: per image, the name the dataset gives it (the export's file name).
        origin: the path the user pointed at, for messages.
        split: "train", "test", ... or "" when the source has no splits.
        extra: anything else per image, e.g. CIFAR-100's coarse labels.
    """

    images: np.ndarray  # (N, H, W, 3) uint8, RGB
    labels: np.ndarray  # (N,) int64 class ids
    classes: list[str]  # id -> name
    sources: list[str]  # per image: batch file or image path it came from
    indices: np.ndarray  # (N,) int64 row inside `sources[i]` (0 for one-image files)
    filenames: list[str]  # per image: the name the dataset gives it
    origin: str = ""  # the path the user pointed at
    split: str = ""  # "train", "test", ... or "" when the source has no splits
    extra: dict = field(default_factory=dict)  # e.g. CIFAR-100 coarse labels

    def __post_init__(self) -> None:
        n = len(self.images)
        assert self.images.dtype == np.uint8 and self.images.ndim == 4 and self.images.shape[-1] == 3
        assert len(self.labels) == len(self.sources) == len(self.indices) == len(self.filenames) == n

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        """The number of classes (including classes with no image here)."""
        return len(self.classes)

    def class_counts(self) -> dict[str, int]:
        """Images per class name, in class-id order."""
        counts = Counter(int(x) for x in self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}

    def subset(self, idx: np.ndarray | list[int]) -> ImageSet:
        """A new `ImageSet` of the images at `idx`, in that order, provenance kept."""
        idx = np.asarray(idx, dtype=np.int64)
        return ImageSet(
            images=self.images[idx], labels=self.labels[idx], classes=list(self.classes),
            sources=[self.sources[i] for i in idx], indices=self.indices[idx],
            filenames=[self.filenames[i] for i in idx], origin=self.origin, split=self.split,
            extra={k: v[idx] for k, v in self.extra.items()},
        )

    def first_per_class(self, n: int | list[int]) -> ImageSet:
        """The first `n` images of each class (or the first `n[c]` of class c), in dataset order
        (the tutorial's 10x10 grid; a long-tail profile)."""
        keep: list[int] = []
        seen: Counter = Counter()
        limit = list(n) if isinstance(n, (list, tuple)) else [n] * self.num_classes
        for i, y in enumerate(self.labels.tolist()):
            if seen[y] < limit[y]:
                seen[y] += 1
                keep.append(i)
        return self.subset(keep)

    @staticmethod
    def concat(parts: list[ImageSet]) -> ImageSet:
        """One `ImageSet` of `parts` (same classes), in order; origin and split are the first part's."""
        first = parts[0]
        return ImageSet(
            images=np.concatenate([p.images for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            classes=list(first.classes),
            sources=[s for p in parts for s in p.sources],
            indices=np.concatenate([p.indices for p in parts]),
            filenames=[f for p in parts for f in p.filenames],
            origin=first.origin, split=first.split,
            extra={k: np.concatenate([p.extra[k] for p in parts]) for k in first.extra},
        )
