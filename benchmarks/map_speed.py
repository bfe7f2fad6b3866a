"""Speed of `kdpvlpa.metrics.average_precision` against sklearn called per class.

5,000 images × 80 classes (COCO-LT's class count), seeded, with long-tailed
positives and scores rounded to create ties. Both sides run in this process,
alternating, and the medians are compared after checking both agree.

Usage:
    python benchmarks/map_speed.py [--images 5000] [--classes 80] [--repeats 11]
"""

import argparse
import time
import warnings

import numpy as np
from sklearn.metrics import average_precision_score

from kdpvlpa.metrics import average_precision


def make_data(num_images, num_classes, seed):
    rng = np.random.default_rng(seed)
    # Long-tailed positive rates, from ~30 % down to ~0.1 %.
    rates = 0.3 * np.geomspace(1.0, 0.003, num_classes)
    labels = (rng.random((num_images, num_classes)) < rates).astype(np.int64)
    # Every class keeps at least one positive, as on a real test list.
    labels[rng.integers(0, num_images, num_classes), np.arange(num_classes)] = 1
    logits = rng.normal(size=labels.shape) + 1.5 * labels
    # Rounding to 2 decimals makes many ties, which sklearn resolves by
    # treating each distinct score as one threshold.
    scores = np.round(1.0 / (1.0 + np.exp(-logits)), 2)
    return labels, scores


def sklearn_per_class(labels, scores):
    return np.array(
        [
            average_precision_score(labels[:, c], scores[:, c])
            for c in range(labels.shape[1])
        ]
    )


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    labels, scores = make_data(args.images, args.classes, args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = average_precision(labels, scores)
        reference = sklearn_per_class(labels, scores)
    max_diff = float(np.max(np.abs(ours - reference)))
    if not max_diff <= 1e-9:
        raise SystemExit(f"average_precision differs from sklearn by {max_diff:.2e}; "
                         "no timing is reported for wrong results.")

    ours_times, sklearn_times = [], []
    for _ in range(args.repeats):
        ours_times.append(timed(average_precision, labels, scores)[0])
        sklearn_times.append(timed(sklearn_per_class, labels, scores)[0])
    ours_median = float(np.median(ours_times))
    sklearn_median = float(np.median(sklearn_times))

    print(
        f"{args.images} images x {args.classes} classes, "
        f"{len(np.unique(scores))} distinct scores, {args.repeats} repeats"
    )
    print(f"max |AP difference| vs sklearn: {max_diff:.2e}")
    sklearn_label = f"sklearn per class (x{args.classes})"
    print(f"{'kdpvlpa average_precision':28s} median {1e3 * ours_median:8.2f} ms")
    print(f"{sklearn_label:28s} median {1e3 * sklearn_median:8.2f} ms")
    print(f"speed-up: {sklearn_median / ours_median:.1f}x")


if __name__ == "__main__":
    main()
