"""A seeded, procedurally drawn long-tailed multi-label set for the demo and tests.

Each class is one coloured shape ("red circle", "blue square", ...) drawn with
pillow at a random position and size over a noisy grey background. Class
frequencies fall geometrically (Pareto-like): at the defaults three classes
have >= 100 training images and four have fewer than 20. Some rarer classes
mostly appear together with a frequent "parent" class (as a rider appears with
a bicycle), so the labels carry real co-occurrence structure. Every image has a
plain original caption ("a photo of a red circle and a blue square.").

The set is written in the layout and JSON format of the packaged real splits,
so the real loading code reads it:

    root/synthetic_lt_train.json            split file (train)
    root/synthetic_lt_test.json             split file (test)
    root/synthetic_lt_train_captions.json   original captions (train)
    root/images/train/syn_train_00000.jpg   images (paths relative to root)
    root/images/test/syn_test_00000.jpg
"""

import contextlib
import fcntl
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from kdpvlpa.data.images import find_missing_images
from kdpvlpa.data.loading import load_split_dir
from kdpvlpa.data.splits import frequency_groups
from kdpvlpa.utils.files import atomic_write

PREFIX = "synthetic_lt"
# Bump when the drawing or sampling changes, so stale folders are rebuilt.
GENERATOR_VERSION = 1
SYNTHETIC_HOW_TO_GET = (
    "Regenerate the synthetic set with "
    "kdpvlpa.data.make_synthetic_lt(root) (the demo recipe does this itself)."
)

COLOURS = (
    ("red", (220, 30, 30)),
    ("blue", (30, 70, 230)),
    ("green", (20, 160, 40)),
    ("yellow", (245, 220, 30)),
    ("purple", (130, 40, 190)),
    ("orange", (250, 130, 10)),
    ("cyan", (30, 210, 230)),
    ("pink", (245, 100, 190)),
    ("white", (250, 250, 250)),
    ("black", (10, 10, 10)),
    ("brown", (130, 75, 25)),
    ("lime", (170, 245, 60)),
)
SHAPES = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "plus",
    "ring",
    "star",
    "hexagon",
    "bar",
    "cross",
    "half disc",
    "frame",
)
MAX_CLASSES = len(SHAPES) * len(COLOURS)
MAX_OBJECTS = 4  # per image; more would crowd a 64 px picture
CO_OCCURRENCE = 0.8  # share of a child class's images that hold its parent
_FILE_NAME = re.compile(r"^syn_(train|test)_\d+\.jpg$")
# In the set's folder; see `synthetic_lt_in_use`. Not ".lock": a run folder
# (`kdpvlpa fit --output`) may be the same folder and has its own lock.
_LOCK = ".synthetic_lt.lock"


class SyntheticSetInUseError(RuntimeError):
    """The folder holds a set another process is reading or drawing."""


def synthetic_class_names(num_classes):
    """The class names of a synthetic set: "red circle", "blue square", ...

    Class c is shape `c % 12` in a colour chosen so that every
    (shape, colour) pair is distinct; the first 12 classes differ in both.

    Args:
        num_classes: int. 2 to 144.

    Returns:
        list of str.

    Example:
    >>> synthetic_class_names(3)
    ['red circle', 'blue square', 'green triangle']
    """
    _check_int("num_classes", num_classes, 2, MAX_CLASSES)
    names = []
    for c in range(num_classes):
        shape = SHAPES[c % len(SHAPES)]
        colour = COLOURS[(c + 5 * (c // len(SHAPES))) % len(COLOURS)][0]
        names.append(f"{colour} {shape}")
    return names


def _class_style(c):
    shape = SHAPES[c % len(SHAPES)]
    colour = COLOURS[(c + 5 * (c // len(SHAPES))) % len(COLOURS)][1]
    return shape, colour


def _check_int(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be {bound}, got {value}.")


def _target_frequencies(num_classes, num_images, high, low, floor):
    # Geometric decay from `high * N` to `low * N` images over the ranks.
    top = high * num_images
    bottom = max(floor, low * num_images)
    ratio = (bottom / top) ** (1.0 / max(1, num_classes - 1))
    freq = [max(1, int(round(top * ratio**r))) for r in range(num_classes)]
    return [min(f, num_images) for f in freq]


def _parents(num_classes):
    # Rank -> parent rank: odd ranks in the lower two thirds follow one of
    # the three most frequent classes.
    top = min(3, num_classes)
    return {
        r: r % top
        for r in range(num_classes)
        if r >= num_classes / 3 and r % 2 == 1 and r % top != r
    }


def _assign_labels(rng, targets, parents, num_images):
    """Exact per-class counts, every image labelled, co-occurring children."""
    num_classes = len(targets)
    has = np.zeros((num_images, num_classes), dtype=bool)
    free = [r for r in range(num_classes) if r not in parents]
    # One "primary" label per image, shared among the non-child classes in
    # proportion to their targets (largest remainder), capped at the target.
    weights = np.array([targets[r] for r in free], dtype=float)
    quota = weights / weights.sum() * num_images
    primary = np.minimum(np.floor(quota).astype(int), [targets[r] for r in free])
    order = np.argsort(-(quota - np.floor(quota)))
    for i in order:
        if primary.sum() >= num_images:
            break
        if primary[i] < targets[free[i]]:
            primary[i] += 1
    primary[0] += num_images - primary.sum()  # only when the targets are too small
    owners = np.repeat(free, primary)
    has[rng.permutation(num_images), owners] = True

    for r in range(num_classes):
        needed = targets[r] - int(has[:, r].sum())
        if needed <= 0:
            continue
        count = has.sum(axis=1)
        open_ = (~has[:, r]) & (count < MAX_OBJECTS)
        pools = [np.flatnonzero(open_)]
        shares = [needed]
        if r in parents:
            with_parent = open_ & has[:, parents[r]]
            take = min(int(round(CO_OCCURRENCE * needed)), int(with_parent.sum()))
            pools = [np.flatnonzero(with_parent), np.flatnonzero(open_ & ~has[:, parents[r]])]
            shares = [take, needed - take]
        for pool, share in zip(pools, shares):
            share = min(share, pool.size)
            if share <= 0:
                continue
            # Prefer images with fewer objects, so scenes stay uncluttered.
            w = 1.0 / (1.0 + count[pool])
            chosen = rng.choice(pool, size=share, replace=False, p=w / w.sum())
            has[chosen, r] = True
    return has


def _polygon(cx, cy, radius, corners, start, inner=None):
    points = []
    steps = corners * (2 if inner else 1)
    for i in range(steps):
        angle = start + 2 * math.pi * i / steps
        rad = radius if not inner or i % 2 == 0 else radius * inner
        points.append((cx + rad * math.cos(angle), cy + rad * math.sin(angle)))
    return points


def _draw_shape(draw, shape, cx, cy, r, colour):
    box = (cx - r, cy - r, cx + r, cy + r)
    thick = max(2, int(round(r * 0.4)))
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        s = r * 0.8
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=colour)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, -math.pi / 2), fill=colour)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, r, 4, -math.pi / 2), fill=colour)
    elif shape == "plus":
        h = thick / 2
        draw.rectangle((cx - r, cy - h, cx + r, cy + h), fill=colour)
        draw.rectangle((cx - h, cy - r, cx + h, cy + r), fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(round(r * 0.35))))
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, r, 5, -math.pi / 2, inner=0.45), fill=colour)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, 0.0), fill=colour)
    elif shape == "bar":
        draw.rectangle((cx - r, cy - r * 0.3, cx + r, cy + r * 0.3), fill=colour)
    elif shape == "cross":
        d = r * 0.75
        draw.line((cx - d, cy - d, cx + d, cy + d), fill=colour, width=thick)
        draw.line((cx - d, cy + d, cx + d, cy - d), fill=colour, width=thick)
    elif shape == "half disc":
        draw.pieslice((cx - r, cy - r * 0.5, cx + r, cy + r * 1.5), 180, 360, fill=colour)
    elif shape == "frame":
        s = r * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), outline=colour,
                       width=max(2, int(round(r * 0.3))))
    else:  # pragma: no cover - SHAPES and this function go together
        raise ValueError(f"Unknown shape {shape!r}.")


def _draw_image(rng, classes, image_size):
    """Noisy grey background plus one shape per class; returns image, x order."""
    base = rng.uniform(90, 170) + rng.uniform(-15, 15, size=3)
    noise = rng.normal(0.0, 18.0, size=(image_size, image_size, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    placed = []
    for c in rng.permutation(classes):
        r = rng.uniform(0.12, 0.2) * image_size
        for _ in range(20):  # try to keep objects apart; accept the last try
            cx, cy = rng.uniform(r, image_size - r, size=2)
            if all(math.hypot(cx - x, cy - y) > 0.9 * (r + pr) for x, y, pr, _ in placed):
                break
        shape, colour = _class_style(int(c))
        _draw_shape(draw, shape, cx, cy, r, colour)
        placed.append((cx, cy, r, int(c)))
    left_to_right = [c for _, _, _, c in sorted(placed)]
    return image, left_to_right


def _article(word):
    return "an" if word[0] in "aeiou" else "a"


def synthetic_caption(names):
    """The plain original caption of a synthetic image.

    Args:
        names: list of str. Class names of its objects, left to right.

    Returns:
        str.

    Example:
    >>> synthetic_caption(["red circle", "blue square", "orange plus"])
    'a photo of a red circle, a blue square and an orange plus.'
    """
    parts = [f"{_article(n)} {n}" for n in names]
    if not parts:
        return "a photo of an empty grey background."
    if len(parts) == 1:
        listed = parts[0]
    else:
        listed = ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"a photo of {listed}."


def _condition_prob(labels):
    counts = labels.T @ labels
    freq = np.diag(counts).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        prob = np.where(freq[:, None] > 0, counts / freq[:, None], 0.0)
    return np.round(prob, 6).tolist()


def _write_json(path, data):
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data), encoding="utf-8"))


def _generate_split(rng, part, num_images, targets, parents, rank_to_class, names,
                    root, image_size):
    has_rank = _assign_labels(rng, targets, parents, num_images)
    num_classes = len(names)
    labels = np.zeros((num_images, num_classes), dtype=np.int64)
    labels[:, rank_to_class] = has_rank
    folder = root / "images" / part
    folder.mkdir(parents=True, exist_ok=True)
    ids, paths, captions = [], [], []
    for i in range(num_images):
        image_id = f"syn_{part}_{i:05d}"
        classes = np.flatnonzero(labels[i]).tolist()
        image, order = _draw_image(rng, classes, image_size)
        image.save(folder / f"{image_id}.jpg", quality=95)
        ids.append(image_id)
        paths.append(f"images/{part}/{image_id}.jpg")
        captions.append(synthetic_caption([names[c] for c in order]))
    return ids, paths, labels, captions


def _params(num_classes, num_train, num_test, image_size, seed):
    return {
        "generator_version": GENERATOR_VERSION,
        "num_classes": num_classes,
        "num_train": num_train,
        "num_test": num_test,
        "image_size": image_size,
        "seed": seed,
    }


def _is_complete(root, params):
    files = [root / f"{PREFIX}_{n}.json" for n in ("train", "test", "train_captions")]
    if not all(f.is_file() for f in files):
        return False
    image_paths = []
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
            return False
        if not isinstance(data, dict) or data.get("generator") != params:
            return False
        image_paths += [root / p for p in data.get("image_paths", [])]
    return not find_missing_images(image_paths)


def _remove_stale_images(root):
    # Only files this generator names; anything else in the folder stays.
    for part in ("train", "test"):
        folder = root / "images" / part
        if folder.is_dir():
            for entry in folder.iterdir():
                if _FILE_NAME.match(entry.name) and entry.is_file():
                    entry.unlink()


def make_synthetic_lt(root, num_classes=12, num_train=400, num_test=200,
                      image_size=64, seed=42):
    """Write (or reuse) a synthetic long-tailed multi-label set under `root`.

    Training frequencies fall geometrically from half the training images to
    about 1.5 % of them (at least 6), so at the defaults 3 classes are head
    (>= 100), 5 medium and 4 tail (< 20). The test split is flatter (35 % down
    to 8 % of the test images) so that every class has test positives.
    Children (odd ranks in the lower two thirds) appear with their parent
    (one of the three most frequent classes) in 80 % of their images. Class
    ranks are shuffled over class indices, as in real datasets. Calling it
    again with the same arguments on a complete folder does nothing; a folder
    that another process holds with other settings (`synthetic_lt_in_use`)
    is not redrawn.

    Args:
        root: str or `Path`. Output folder (created).
        num_classes: int. 2 to 144.
        num_train: int. Training images (>= 10).
        num_test: int. Test images (>= 10).
        image_size: int. Square image side in pixels (>= 16).
        seed: int. Seeds everything; same arguments, same files.

    Returns:
        `Path` of `root`.

    Raises:
        SyntheticSetInUseError: another process holds the folder with other
            settings.

    Example:
    >>> from kdpvlpa.data import make_synthetic_lt, load_synthetic_lt
    >>> root = make_synthetic_lt("runs/data/synthetic")  # doctest: +SKIP
    >>> load_synthetic_lt(root, "train").num_images  # doctest: +SKIP
    400
    """
    root, params = _checked(root, num_classes, num_train, num_test, image_size, seed)
    if _is_complete(root, params):
        return root
    with synthetic_lt_in_use(root, num_classes, num_train, num_test, image_size, seed):
        return root


def _checked(root, num_classes, num_train, num_test, image_size, seed):
    _check_int("num_classes", num_classes, 2, MAX_CLASSES)
    _check_int("num_train", num_train, 10)
    _check_int("num_test", num_test, 10)
    _check_int("image_size", image_size, 16)
    _check_int("seed", seed, 0)
    root = Path(root).expanduser().resolve()
    return root, _params(num_classes, num_train, num_test, image_size, seed)


def _try_lock(handle, kind):
    try:
        fcntl.flock(handle, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _in_use_message(root):
    return (
        f"The synthetic set in {root} is held with other settings (seed, sizes) by "
        "another `kdpvlpa fit` or `evaluate` (or a `synthetic_lt_in_use` block); "
        "redrawing it would change that run's images. Give this run its own folder "
        "(--data-dir), or wait for the other to finish."
    )


@contextlib.contextmanager
def synthetic_lt_in_use(root, num_classes=12, num_train=400, num_test=200,
                        image_size=64, seed=42):
    """Draws the set as `make_synthetic_lt` does and keeps it for the block.

    While the block runs, no other process can redraw the folder with other
    settings (`make_synthetic_lt` and this function refuse to); processes
    that ask for the same settings share it, and one that finds it being
    drawn waits for the drawing. The lock is the operating system's (`flock`
    on `root/.synthetic_lt.lock`), so a killed process leaves none. A
    complete set in a folder this process cannot write is read unlocked.

    Yields:
        `Path` of `root`.

    Raises:
        SyntheticSetInUseError: another process holds the folder with other
            settings.
        OSError: the set must be drawn and the folder cannot be written.

    Example:
    >>> with synthetic_lt_in_use("data/synthetic", seed=43) as root:  # doctest: +SKIP
    ...     train = load_synthetic_lt(root, "train")
    """
    root, params = _checked(root, num_classes, num_train, num_test, image_size, seed)
    root.mkdir(parents=True, exist_ok=True)
    writable = True
    try:
        handle = open(root / _LOCK, "a")
    except OSError as error:
        # A read-only copy, another user's folder: the set can be read, not drawn.
        if not _is_complete(root, params):
            raise error
        writable = False
        try:
            handle = open(root / _LOCK)  # a shared flock needs no write access
        except OSError:
            yield root  # no lock file, and none can be made
            return
    with handle:
        # Up to three rounds: a drawer that died leaves an incomplete set,
        # which the next round draws.
        for _ in range(3):
            if (writable and _try_lock(handle, fcntl.LOCK_EX)
                    and not _is_complete(root, params)):
                _draw(root, params)
            # Shared from here on, so readers of the same set can join; this
            # waits while another process draws (seconds).
            if not _try_lock(handle, fcntl.LOCK_SH):
                print(f"Waiting for another process to finish drawing the synthetic "
                      f"set in {root} ...", file=sys.stderr, flush=True)
                fcntl.flock(handle, fcntl.LOCK_SH)
            # Checked under the shared lock: the set another holder drew, or
            # a redraw that slipped in when the exclusive lock was given up.
            if _is_complete(root, params):
                break
        else:
            raise SyntheticSetInUseError(_in_use_message(root))
        yield root


def _draw(root, params):
    """Writes the set of `params` into `root` (whose lock the caller holds)."""
    num_classes, num_train, num_test, image_size, seed = (
        params[k] for k in ("num_classes", "num_train", "num_test", "image_size", "seed"))
    _remove_stale_images(root)

    names = synthetic_class_names(num_classes)
    rng = np.random.default_rng(seed)
    rank_to_class = rng.permutation(num_classes)
    parents = _parents(num_classes)
    train_targets = _target_frequencies(num_classes, num_train, 0.5, 0.015, 6)
    test_targets = _target_frequencies(num_classes, num_test, 0.35, 0.08, 5)

    train = _generate_split(np.random.default_rng([seed, 1]), "train", num_train,
                            train_targets, parents, rank_to_class, names, root,
                            image_size)
    test = _generate_split(np.random.default_rng([seed, 2]), "test", num_test,
                           test_targets, parents, rank_to_class, names, root,
                           image_size)

    train_ids, train_paths, train_labels, train_captions = train
    class_freq = train_labels.sum(axis=0)
    head, medium, tail = frequency_groups(class_freq.tolist())
    common = {
        "image_source": "procedurally drawn by kdpvlpa.data.synthetic",
        "num_classes": num_classes,
        "class_names": names,
    }
    test_ids, test_paths, test_labels, _ = test
    _write_json(root / f"{PREFIX}_test.json", {
        "dataset": "Synthetic-LT", "split": "test", **common,
        "num_images": num_test,
        "image_ids": test_ids,
        "image_paths": test_paths,
        "labels": [np.flatnonzero(row).tolist() for row in test_labels],
        "test_pos_count": test_labels.sum(axis=0).tolist(),
        "num_images_without_labels": int((test_labels.sum(axis=1) == 0).sum()),
        "train_class_freq": class_freq.tolist(),
        "head": head, "medium": medium, "tail": tail,
        "generator": params,
    })
    _write_json(root / f"{PREFIX}_train_captions.json", {
        "dataset": "Synthetic-LT", "split": "train",
        "note": "plain template captions naming every object, left to right",
        "image_ids": train_ids,
        "captions": train_captions,
        "generator": params,
    })
    # The train file goes last: its presence marks a finished set.
    _write_json(root / f"{PREFIX}_train.json", {
        "dataset": "Synthetic-LT", "split": "train", **common,
        "num_images": num_train,
        "image_ids": train_ids,
        "image_paths": train_paths,
        "labels": [np.flatnonzero(row).tolist() for row in train_labels],
        "class_freq": class_freq.tolist(),
        "neg_class_freq": (num_train - class_freq).tolist(),
        "head": head, "medium": medium, "tail": tail,
        "condition_prob": _condition_prob(train_labels),
        "generator": params,
    })


def load_synthetic_lt(root, split="train", allow_missing=False, verify_images=False,
                      image_ids=None, captions=None, progress=None):
    """Load a set written by `make_synthetic_lt` through the generic loader.

    Args:
        root: str or `Path`. The folder given to `make_synthetic_lt`.
        split: str. "train" or "test".
        allow_missing, verify_images, image_ids, progress: as in
            `kdpvlpa.data.load_lt_split`.
        captions: str, `Path` or None. A caption file replacing the
            default (the plain original captions, train split only).

    Returns:
        `LTDataset` with `name="synthetic"`.

    Example:
    >>> test = load_synthetic_lt("runs/data/synthetic", "test")  # doctest: +SKIP
    """
    return load_split_dir(
        root,
        split,
        prefix=PREFIX,
        name="synthetic",
        captions=captions,
        allow_missing=allow_missing,
        verify_images=verify_images,
        image_ids=image_ids,
        how_to_get=SYNTHETIC_HOW_TO_GET,
        progress=progress,
    )
