"""Reading images and checking that a dataset's images are all there."""

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from kdpvlpa.utils.progress import Progress

# Errors pillow raises for unreadable, truncated or absurd files.
_PIL_ERRORS = (
    OSError,
    UnidentifiedImageError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
)
MAX_LISTED = 5


class CorruptImageError(ValueError):
    """An image file exists but cannot be decoded."""


class MissingImagesError(FileNotFoundError):
    """Some images of a dataset split are not on disk."""


# Pillow modes of 16-bit, 32-bit and float grayscale images, which its RGB
# conversion would clip at 255 instead of scaling.
_HIGH_DEPTH_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _gray_to_rgb8(image):
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    if image.mode == "F":
        # Floats in [0, 1] are scaled; others are taken as 8-bit levels.
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0  # 16-bit samples
    gray = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def load_image(path):
    """Decode one image file to RGB pixels.

    Grayscale, RGBA, CMYK and palette images are converted to RGB (an alpha
    channel is dropped). 16-bit grayscale is scaled to 8 bits, and float
    grayscale in [0, 1] to [0, 255]. EXIF orientation is not applied, as in torchvision's
    and LMPT's loaders.

    Args:
        path: str or `Path`. The image file.

    Returns:
        `np.ndarray` of dtype uint8 and shape `(H, W, 3)`.

    Raises:
        FileNotFoundError: the file does not exist.
        CorruptImageError: the file exists but cannot be decoded.

    Example:
    >>> pixels = load_image("photo.jpg")  # doctest: +SKIP
    >>> pixels.shape, pixels.dtype  # doctest: +SKIP
    ((375, 500, 3), dtype('uint8'))
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in _HIGH_DEPTH_GRAY:
                return _gray_to_rgb8(image)
            if image.mode == "P" and "transparency" in image.info:
                # Going through RGBA avoids pillow's palette-transparency warning.
                image = image.convert("RGBA")
            if image.mode != "RGB":
                image = image.convert("RGB")
            return np.asarray(image, dtype=np.uint8).copy()
    except _PIL_ERRORS as error:
        raise CorruptImageError(
            f"Cannot read image {path}: {type(error).__name__}: {error}"
        ) from None


def is_readable_image(path):
    """Whether pillow can fully decode `path` (False for missing files too).

    Args:
        path: str or `Path`.

    Returns:
        bool.

    Example:
    >>> is_readable_image("broken.jpg")  # doctest: +SKIP
    False
    """
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except _PIL_ERRORS:
        return False


@dataclass
class ImageScan:
    """What `scan_images` found.

    Args:
        total: int. Number of paths scanned.
        missing: list of `Path`. Paths with no file.
        corrupt: list of `Path`. Files that could not be decoded (only
            filled when the scan verified images).
        verified: bool. Whether present files were decoded.
    """

    total: int
    missing: list = field(default_factory=list)
    corrupt: list = field(default_factory=list)
    verified: bool = False

    @property
    def present(self):
        return self.total - len(self.missing)

    @property
    def ok(self):
        return not self.missing and not self.corrupt


def _file_names(directory, cache):
    if directory not in cache:
        try:
            with os.scandir(directory) as entries:
                # is_file() follows symlinks: a dangling link or a folder
                # named like an image is not a file.
                cache[directory] = {e.name for e in entries if e.is_file()}
        except OSError:
            cache[directory] = set()
    return cache[directory]


def find_missing_images(paths):
    """Paths among `paths` that are not files (absent, a folder, or a
    symbolic link to nothing).

    Each folder is listed once, so this is fast for COCO's 118k-file
    `train2017/` too.

    Args:
        paths: iterable of str or `Path`.

    Returns:
        list of `Path`, in input order.

    Example:
    >>> find_missing_images(["/nonexistent/a.jpg"])
    [PosixPath('/nonexistent/a.jpg')]
    """
    cache = {}
    missing = []
    for p in paths:
        p = Path(p)
        if p.name not in _file_names(p.parent, cache):
            missing.append(p)
    return missing


def scan_images(paths, verify=False, progress=None, label="verifying"):
    """Count present, missing and (optionally) corrupt images.

    Args:
        paths: sequence of str or `Path`.
        verify: bool. Decode each present file to find corrupt ones.
        progress: bool or None. Print progress to stderr while verifying;
            None means "when verifying more than 500 images".
        label: str. Prefix of the progress line.

    Returns:
        An `ImageScan`.

    Example:
    >>> scan = scan_images(["a.jpg", "b.jpg"], verify=True)  # doctest: +SKIP
    >>> scan.present, scan.missing, scan.corrupt  # doctest: +SKIP
    (2, [], [])
    """
    paths = [Path(p) for p in paths]
    scan = ImageScan(total=len(paths), missing=find_missing_images(paths))
    if verify:
        scan.verified = True
        missing = set(scan.missing)
        present = [p for p in paths if p not in missing]
        show = len(present) > 500 if progress is None else progress
        with Progress(len(present), label, unit="images", hidden=not show) as bar:
            for p in present:
                if not is_readable_image(p):
                    scan.corrupt.append(p)
                bar.update()
    return scan


def _first_few(paths):
    shown = ", ".join(str(p) for p in paths[:MAX_LISTED])
    more = len(paths) - MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "")


def missing_images_message(missing, total, dataset_name, how_to_get):
    """The one message for missing images (shared by loaders and the CLI).

    Args:
        missing: list of `Path`.
        total: int. Images in the split.
        dataset_name: str. E.g. "VOC-LT train".
        how_to_get: str. Where to get the data.

    Returns:
        str.

    Example:
    >>> missing_images_message([Path("x/a.jpg")], 10, "demo", "Run make.")
    'demo: 1 of 10 images are missing. First missing: x/a.jpg. Run make.'
    """
    return (
        f"{dataset_name}: {len(missing)} of {total} images are missing. "
        f"First missing: {_first_few(missing)}. {how_to_get}"
    )


def corrupt_images_message(corrupt, total, dataset_name):
    """The message for images that exist but cannot be decoded.

    Args:
        corrupt: list of `Path`.
        total: int. Images in the split.
        dataset_name: str.

    Returns:
        str.

    Example:
    >>> corrupt_images_message([Path("a.jpg")], 3, "demo")
    'demo: 1 of 3 images cannot be decoded: a.jpg. Replace them with intact copies (re-download or re-extract the archive).'
    """
    return (
        f"{dataset_name}: {len(corrupt)} of {total} images cannot be decoded: "
        f"{_first_few(corrupt)}. Replace them with intact copies (re-download "
        "or re-extract the archive)."
    )


def check_images(paths, dataset_name, how_to_get, verify=False, progress=None):
    """Fail with one clear error unless every image is present (and readable).

    Args:
        paths: sequence of str or `Path`. Absolute image paths.
        dataset_name: str. Named in the message, e.g. "VOC-LT train".
        how_to_get: str. Where and how to get the data, appended to the
            message.
        verify: bool. Also decode every image to catch corrupt files.
        progress: bool or None. See `scan_images`.

    Returns:
        The `ImageScan` (with nothing missing or corrupt).

    Raises:
        MissingImagesError: how many are missing out of how many, the first
            few paths and `how_to_get`.
        CorruptImageError: with `verify=True`, the files that cannot be
            decoded.

    Example:
    >>> check_images(["/nonexistent/a.jpg"], "demo", "Get it from X.")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    kdpvlpa.data.images.MissingImagesError: demo: 1 of 1 images are missing. First missing: /nonexistent/a.jpg. Get it from X.
    """
    scan = scan_images(paths, verify=verify, progress=progress)
    if scan.missing:
        raise MissingImagesError(
            missing_images_message(scan.missing, scan.total, dataset_name, how_to_get)
        )
    if scan.corrupt:
        raise CorruptImageError(
            corrupt_images_message(scan.corrupt, scan.total, dataset_name)
        )
    return scan
