"""On-disk cache of the frozen image encoder's outputs.

The CLIP encoder never trains, so its token sequence for an image (and for
the image's horizontal flip) is computed once and read back in every later
epoch and run. A cache entry is keyed by

- the encoder's configuration and a hash of its weights,
- the preprocessing (image size, crop, mean, std, interpolation),
- the image file (resolved path, size, modification time),

so a changed encoder, preprocessing or image is never served stale
features. Features live in one `.npy` array per dataset, written in place
through a memory map; a separate completion map records which rows are
finished and is replaced atomically after every flushed chunk, so a run
killed half-way leaves a cache whose finished rows are valid and whose
missing rows are computed by the next run, never read as garbage. One
process fills a cache at a time (a file lock); another waits for it.
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from kdpvlpa.data.images import load_image
from kdpvlpa.utils.files import atomic_write
from kdpvlpa.utils.progress import Progress

CACHE_FORMAT_VERSION = 1


def load_training_image(path, image_size, crop_to_aspect_ratio=True):
    """Loads an image as uint8 RGB, `image_size` square (PIL's bicubic).

    This is the one image loader of training and evaluation, with and
    without the cache, so both paths feed identical pixels to the encoder.

    Args:
        path: the image file.
        image_size: int. Side of the square result.
        crop_to_aspect_ratio: bool. True crops the centred square first (as
            CLIP); False resizes the whole image (as LMPT and DBL).
    """
    from PIL import Image

    array = load_image(path)
    height, width = array.shape[:2]
    if crop_to_aspect_ratio:
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        array = array[top : top + side, left : left + side]
        height = width = side
    if (height, width) != (image_size, image_size):
        array = np.asarray(
            Image.fromarray(array).resize((image_size, image_size), Image.BICUBIC)
        )
    return array


def _hash_json(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def encoder_fingerprint(model):
    """Hash of the encoder's config, its weights and the preprocessing."""
    digest = hashlib.sha256()
    # The layer's name is not part of what it computes: two equal encoders
    # built in one process ("clip_vision_encoder", "..._1") share a cache.
    config = dict(model.image_encoder.get_config())
    config.pop("name", None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    pre = model.preprocessor.get_config()
    pre = {k: pre[k] for k in ("image_size", "mean", "std", "interpolation")}
    if not model.preprocessor.crop_to_aspect_ratio:  # keys of older caches stay valid
        pre["crop_to_aspect_ratio"] = False
    digest.update(json.dumps(pre, sort_keys=True).encode())
    digest.update(str(CACHE_FORMAT_VERSION).encode())
    for weight in model.image_encoder.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(np.asarray(weight.numpy())).tobytes())
    return digest.hexdigest()[:16]


def images_fingerprint(paths):
    entries = []
    for path in paths:
        path = Path(path).resolve()
        stat = path.stat()
        entries.append([str(path), stat.st_size, stat.st_mtime_ns])
    return _hash_json(entries)[:16]


def _atomic_save(path, array):
    atomic_write(path, lambda tmp: np.save(tmp, array))


_HELD = set()  # lock files this process holds


@contextlib.contextmanager
def _exclusive(lock_path):
    """Holds an exclusive lock on `lock_path`: one process fills a cache at a
    time; another waits, then finds the rows done. The lock is not re-entrant:
    a second `load` of the same cache inside one process is an error, where
    waiting would never end."""
    key = str(Path(lock_path).resolve())
    if key in _HELD:
        raise RuntimeError(
            f"This process is already filling the cache {lock_path.parent}; a "
            "nested load of the same cache would wait for itself."
        )
    try:
        handle = open(lock_path, "a")
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        # A read-only cache folder: nobody can fill it, so nothing to wait
        # for; a complete cache is read, an incomplete one fails to write.
        handle = None
    _HELD.add(key)
    try:
        if handle is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"Waiting for another run that is filling {lock_path.parent}",
                      file=sys.stderr, flush=True)
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        _HELD.discard(key)
        if handle is not None:
            handle.close()  # releases the lock


def _reserve_disk_space(path):
    """Allocates the whole (sparse) features file now: a full disk is then an
    error here, not a crash (SIGBUS) when a later row is written."""
    if not hasattr(os, "posix_fallocate"):
        return  # macOS: rows are written as they come
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, size)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                return  # a file system without fallocate: rows are written as they come
            handle.close()
            Path(path).unlink(missing_ok=True)
            raise OSError(
                errno.ENOSPC,
                f"Not enough disk space for the feature cache {path} "
                f"({size / 1e9:.2f} GB). Free some space or give another --cache-dir.",
            ) from None


class FeatureCache:
    """Frozen-encoder features of a list of images, computed once, on disk.

    Args:
        cache_dir: folder for cache files (shared by runs).
        model: a `DPVLPA` model; its `image_encoder` and `preprocessor`
            define the features and the cache key.
        image_paths: list of image files, in dataset order.
        flips: bool. Also cache each image's horizontal flip (view 1).
        batch_size: int. Images per encoder call.
        dtype: `"float32"` (exact) or `"float16"` (half the disk).
        progress: bool. Show a progress bar while computing.

    Example:
    ```python
    cache = FeatureCache("runs/cache", model, dataset.image_paths, flips=True)
    features = cache.load()  # (N, 2, 197, 768) memory map
    ```
    """

    def __init__(self, cache_dir, model, image_paths, flips=False, batch_size=32,
                 dtype="float32", progress=True):
        if dtype not in ("float32", "float16"):
            raise ValueError(f"`dtype` must be 'float32' or 'float16'. Received: {dtype!r}")
        self.model = model
        self.image_paths = [Path(p) for p in image_paths]
        if not self.image_paths:
            raise ValueError("FeatureCache needs at least one image.")
        self.flips = bool(flips)
        self.batch_size = int(batch_size)
        self.dtype = dtype
        self.progress = progress
        self.image_size = model.preprocessor.image_size
        self.crop_to_aspect_ratio = model.preprocessor.crop_to_aspect_ratio
        self.key = encoder_fingerprint(model)
        self.images_key = images_fingerprint(self.image_paths)
        folder = Path(cache_dir) / f"encoder-{self.key}"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"images-{self.images_key}-{'flip' if self.flips else 'noflip'}-{dtype}"
        self.features_path = folder / f"{stem}.features.npy"
        self.done_path = folder / f"{stem}.done.npy"
        self.meta_path = folder / f"{stem}.json"
        self.lock_path = folder / f"{stem}.lock"

    @property
    def shape(self):
        encoder = self.model.image_encoder
        return (len(self.image_paths), 2 if self.flips else 1, encoder.num_tokens,
                encoder.hidden_dim)

    def _open(self):
        shape = self.shape
        if self.features_path.exists() and self.done_path.exists():
            try:
                # Read-only first: a file shorter than its header says fails
                # here, where "r+" would silently extend it with zeros.
                check = np.load(self.features_path, mmap_mode="r")
                done = np.load(self.done_path)
                usable = (check.shape == shape and check.dtype == np.dtype(self.dtype)
                          and done.shape == (shape[0],))
                if usable and done.all():
                    # Complete: the read-only map, so that a cache on a
                    # read-only file system or shared by others is read.
                    return check, done.astype(bool)
                del check  # closed before the file is reopened or recreated
                if usable:
                    return np.load(self.features_path, mmap_mode="r+"), done.astype(bool)
            except (ValueError, EOFError):
                pass  # unreadable: rebuilt below
        # Forget the finished rows before the features file is recreated (and
        # zeroed): a run killed in between must not find old rows marked done.
        self.done_path.unlink(missing_ok=True)
        features = np.lib.format.open_memmap(
            self.features_path, mode="w+", dtype=self.dtype, shape=shape
        )
        _reserve_disk_space(self.features_path)
        done = np.zeros(shape[0], bool)
        _atomic_save(self.done_path, done)
        meta = json.dumps({
            "format_version": CACHE_FORMAT_VERSION,
            "encoder": self.model.image_encoder.get_config(),
            "num_images": shape[0], "flips": self.flips, "dtype": self.dtype,
        }, indent=1, default=str)
        atomic_write(self.meta_path, lambda tmp: tmp.write_text(meta))
        return features, done

    def status(self):
        """`(finished, total)` rows of the cache as it is on disk."""
        if not self.done_path.exists():
            return 0, len(self.image_paths)
        return int(np.load(self.done_path).sum()), len(self.image_paths)

    def load(self):
        """Completes the cache if needed; returns the features (read-only map)."""
        with _exclusive(self.lock_path):
            features, done = self._open()
            todo = np.flatnonzero(~done)
            if len(todo):
                self._compute(features, done, todo)
            del features
        return np.load(self.features_path, mmap_mode="r")

    def _compute(self, features, done, todo):
        from keras import ops

        chunks = [todo[i : i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        with Progress(len(todo), "Caching encoder features", stream=sys.stdout,
                      unit="images", hidden=not self.progress) as bar:
            for rows in chunks:
                images = np.stack(
                    [load_training_image(self.image_paths[r], self.image_size,
                                         self.crop_to_aspect_ratio) for r in rows]
                )
                views = [images, images[:, :, ::-1]] if self.flips else [images]
                for v, batch in enumerate(views):
                    out = self.model.encode_images(np.ascontiguousarray(batch))
                    features[rows, v] = ops.convert_to_numpy(out).astype(self.dtype)
                features.flush()
                done[rows] = True
                _atomic_save(self.done_path, done)
                bar.update(len(rows))
