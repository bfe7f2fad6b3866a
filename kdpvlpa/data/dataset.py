"""`LTDataset`: one split of a long-tailed multi-label dataset, in memory."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class LTDataset:
    """One split of a long-tailed multi-label dataset (no pixels, only paths).

    Args:
        name: str. Dataset key: "voc_lt", "coco_lt" or "synthetic".
        split: str. "train" or "test".
        root: `Path`. The dataset root the image paths were resolved against.
        class_names: list of str. Natural class names ("dining table").
        image_ids: list. Image ids as in the split file (str for VOC and the
            synthetic set, int for COCO).
        image_paths: list of `Path`. Absolute image paths, same order.
        labels: `np.ndarray` of shape `(N, C)`, float32, 0/1.
        captions: list of str or None. The original captions, same order.
        class_freq: `np.ndarray` of shape `(C,)`, int. TRAINING-set
            frequencies (also for the test split): the head / medium / tail
            groups and DQR's `n_c` are defined by them.
        head: list of int. Classes with training frequency >= 100.
        medium: list of int. Classes with training frequency 20..99.
        tail: list of int. Classes with training frequency < 20.

    Example:
    >>> from kdpvlpa.data import load_voc_lt
    >>> train = load_voc_lt("data/voc", split="train")  # doctest: +SKIP
    >>> train.num_images, train.num_classes, train.labels.shape  # doctest: +SKIP
    (1142, 20, (1142, 20))
    """

    name: str
    split: str
    root: Path
    class_names: list
    image_ids: list
    image_paths: list
    labels: np.ndarray
    captions: list = None
    class_freq: np.ndarray = None
    head: list = field(default_factory=list)
    medium: list = field(default_factory=list)
    tail: list = field(default_factory=list)

    def __post_init__(self):
        if self.split not in ("train", "test"):
            raise ValueError(
                f"split must be 'train' or 'test', got {self.split!r}."
            )
        self.root = Path(self.root)
        self.class_names = list(self.class_names)
        self.image_ids = list(self.image_ids)
        self.image_paths = [Path(p) for p in self.image_paths]
        self.labels = np.asarray(self.labels, dtype=np.float32)
        num_classes = len(self.class_names)
        n = len(self.image_ids)
        if self.labels.ndim != 2 or self.labels.shape[1] != num_classes:
            raise ValueError(
                f"labels must have shape (num_images, num_classes) = "
                f"({n}, {num_classes}), got {self.labels.shape}."
            )
        if not np.isin(self.labels, (0.0, 1.0)).all():
            raise ValueError("labels must contain only 0 and 1.")
        lengths = {
            "image_ids": n,
            "image_paths": len(self.image_paths),
            "labels": self.labels.shape[0],
        }
        if self.captions is not None:
            self.captions = list(self.captions)
            lengths["captions"] = len(self.captions)
        if len(set(lengths.values())) != 1:
            shown = ", ".join(f"{k}: {v}" for k, v in lengths.items())
            raise ValueError(f"Per-image fields differ in length ({shown}).")
        if self.class_freq is None:
            if self.split != "train":
                raise ValueError(
                    "class_freq (training frequencies) is required for the "
                    "test split."
                )
            self.class_freq = self.labels.sum(axis=0)
        self.class_freq = np.asarray(self.class_freq).astype(np.int64)
        if self.class_freq.shape != (num_classes,):
            raise ValueError(
                f"class_freq must have shape ({num_classes},), got "
                f"{self.class_freq.shape}."
            )
        for group in ("head", "medium", "tail"):
            indices = [int(c) for c in getattr(self, group)]
            bad = [c for c in indices if not 0 <= c < num_classes]
            if bad:
                raise ValueError(
                    f"{group} holds class indices outside 0..{num_classes - 1}: "
                    f"{bad}."
                )
            setattr(self, group, indices)

    @property
    def num_images(self):
        return len(self.image_ids)

    @property
    def num_classes(self):
        return len(self.class_names)

    def __len__(self):
        return self.num_images

    def subset(self, indices):
        """A new `LTDataset` with only the images at `indices`.

        Class frequencies and head / medium / tail groups are kept: they
        describe the training split, not the subset.

        Args:
            indices: sequence of int or a boolean mask of length N.

        Returns:
            `LTDataset`.

        Example:
        >>> small = train.subset(range(10))  # doctest: +SKIP
        """
        indices = np.asarray(indices)
        if indices.dtype == bool:
            if indices.shape != (self.num_images,):
                raise ValueError(
                    f"A boolean mask must have shape ({self.num_images},), "
                    f"got {indices.shape}."
                )
            indices = np.flatnonzero(indices)
        indices = indices.astype(np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_images):
            raise ValueError(
                f"subset indices must lie in 0..{self.num_images - 1}, got "
                f"min {indices.min()} and max {indices.max()}."
            )
        pick = indices.tolist()
        return LTDataset(
            name=self.name,
            split=self.split,
            root=self.root,
            class_names=list(self.class_names),
            image_ids=[self.image_ids[i] for i in pick],
            image_paths=[self.image_paths[i] for i in pick],
            labels=self.labels[indices],
            captions=None
            if self.captions is None
            else [self.captions[i] for i in pick],
            class_freq=self.class_freq.copy(),
            head=list(self.head),
            medium=list(self.medium),
            tail=list(self.tail),
        )

    def label_lists(self):
        """Each image's positive class indices (the split-file form).

        Returns:
            list of list of int.

        Example:
        >>> train.label_lists()[0]  # doctest: +SKIP
        [4, 14, 19]
        """
        return [np.flatnonzero(row).tolist() for row in self.labels]

    def __repr__(self):
        return (
            f"LTDataset(name={self.name!r}, split={self.split!r}, "
            f"num_images={self.num_images}, num_classes={self.num_classes}, "
            f"head/medium/tail={len(self.head)}/{len(self.medium)}/"
            f"{len(self.tail)}, captions={self.captions is not None})"
        )
