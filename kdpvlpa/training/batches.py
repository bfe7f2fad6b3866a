"""Training batches for `fit`: cached encoder features or raw images.

Shuffling and flip choices depend only on `(seed, epoch)`, so a run resumed
at epoch `e` sees exactly the batches an uninterrupted run sees, and the
cached and uncached paths see the same images in the same order.
"""

import keras
import numpy as np

from kdpvlpa.training.feature_cache import load_training_image


class TrainingBatches(keras.utils.PyDataset):
    """A `keras.utils.PyDataset` of DP-VLPA training batches.

    Args:
        token_ids: `(N, L)` int caption tokens.
        padding_mask: `(N, L)` bool.
        features: `(N, V, S, E)` cached encoder tokens (`V` = 2 with flips),
            or None to read images.
        image_paths: image files, when `features` is None.
        image_size: int, when reading images.
        crop_to_aspect_ratio: bool, when reading images: as
            `load_training_image` (the model's `preprocessor` has it).
        labels: `(N, C)` multi-hot targets, or None (pretraining).
        batch_size: int.
        shuffle: bool. A new order every epoch.
        flip: bool. Random horizontal flips (view 1 of the cache).
        seed: int.
    """

    def __init__(self, token_ids, padding_mask, features=None, image_paths=None,
                 image_size=None, labels=None, batch_size=32, shuffle=True, flip=False,
                 seed=42, crop_to_aspect_ratio=True):
        super().__init__(workers=1, use_multiprocessing=False)
        self.num_examples = len(token_ids)
        if self.num_examples == 0:
            raise ValueError("The training set is empty: there is nothing to train on.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1. Received: {batch_size}")
        if features is None and image_paths is None:
            raise ValueError("TrainingBatches needs `features` or `image_paths`.")
        sizes = {"token_ids": len(token_ids), "padding_mask": len(padding_mask)}
        if features is not None:
            sizes["features"] = len(features)
            if flip and features.shape[1] < 2:
                raise ValueError("flip=True needs a feature cache built with flips.")
        if image_paths is not None:
            sizes["image_paths"] = len(image_paths)
        if labels is not None:
            sizes["labels"] = len(labels)
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Inputs disagree on the number of examples: {sizes}")
        self.token_ids = np.asarray(token_ids, "int32")
        self.padding_mask = np.asarray(padding_mask, bool)
        self.features = features
        self.image_paths = image_paths
        self.image_size = image_size
        self.crop_to_aspect_ratio = crop_to_aspect_ratio
        self.labels = None if labels is None else np.asarray(labels, "float32")
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.flip = flip
        self.seed = int(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        rng = np.random.default_rng([self.seed, self.epoch])
        n = self.num_examples
        self.order = rng.permutation(n) if self.shuffle else np.arange(n)
        self.views = rng.integers(0, 2, n) if self.flip else np.zeros(n, "int64")

    def __len__(self):
        return -(-self.num_examples // self.batch_size)

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        views = self.views[rows]
        # Columns that are padding in every row of the batch change no output:
        # dropping them saves the text path their cost.
        mask = self.padding_mask[rows]
        length = max(int(mask.sum(1).max()), 1)
        x = {"token_ids": self.token_ids[rows, :length], "padding_mask": mask[:, :length]}
        if self.features is not None:
            x["image_features"] = np.stack(
                [np.asarray(self.features[r, v], "float32") for r, v in zip(rows, views)]
            )
        else:
            images = []
            for r, v in zip(rows, views):
                image = load_training_image(self.image_paths[r], self.image_size,
                                            self.crop_to_aspect_ratio)
                images.append(image[:, ::-1] if v else image)
            x["images"] = np.ascontiguousarray(np.stack(images))
        if self.labels is None:
            return (x,)
        return x, self.labels[rows]


class EpochSeed(keras.callbacks.Callback):
    """Seeds data order and dropout from `(seed, epoch)` at each epoch start.

    With it a resumed run reproduces an uninterrupted one exactly (on CPU).
    """

    def __init__(self, batches, seed):
        super().__init__()
        self.batches = batches
        self.seed = int(seed)

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)
        keras.utils.set_random_seed(self.seed * 1000 + epoch)
