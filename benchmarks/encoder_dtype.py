"""Image-encoder time under `mixed_bfloat16` against `float32`.

The frozen encoder is most of an epoch without the feature cache, and all of
filling it and of inference. One process, one ViT-B/16-sized encoder (12
layers, width 768, 224 px, random weights, which cost the same as real ones)
built under each Keras policy with the same weights; the two sides alternate
for `--rounds` rounds of one batch each. The script prints the median time an
image takes on each side, the ratio, and how far the bfloat16 features are
from the float32 ones (relative to the features' standard deviation).

On CPUs, bfloat16 is fast only with bfloat16 matrix units (Intel AMX,
`avx512_bf16`); elsewhere it can be slower than float32.

    python benchmarks/encoder_dtype.py
    python benchmarks/encoder_dtype.py --device cuda --batch-size 64
"""

import argparse
import statistics
import time

import kdpvlpa  # noqa: F401
import keras
import numpy as np
import torch

from kdpvlpa.models import CLIPVisionEncoder


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = np.random.default_rng(0).normal(size=(args.batch_size, 224, 224, 3))
    images = images.astype("float32")
    with keras.device(args.device):
        reference = CLIPVisionEncoder(dtype="float32")
        mixed = CLIPVisionEncoder(dtype="mixed_bfloat16")
        mixed.set_weights(reference.get_weights())
        sides = {"float32": reference, "mixed_bfloat16": mixed}
        times = {name: [] for name in sides}
        outputs = {}
        with torch.no_grad():
            for name, encoder in sides.items():  # warm-up
                encoder(images[:2])
            for _ in range(args.rounds):
                for name, encoder in sides.items():
                    start = time.perf_counter()
                    out = encoder(images)
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    times[name].append((time.perf_counter() - start) / len(images))
                    outputs[name] = keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))
    median = {name: statistics.median(t) * 1000 for name, t in times.items()}
    diff = np.abs(outputs["mixed_bfloat16"] - outputs["float32"])
    scale = outputs["float32"].std()
    print(f"ViT-B/16 encoder to the penultimate layer, batch {args.batch_size}, "
          f"{args.threads} threads, device {args.device}, {args.rounds} rounds")
    print(f"float32        median {median['float32']:.1f} ms an image")
    print(f"mixed_bfloat16 median {median['mixed_bfloat16']:.1f} ms an image")
    print(f"speed-up of mixed_bfloat16: {median['float32'] / median['mixed_bfloat16']:.2f}x")
    print(f"features: max |difference| {diff.max() / scale:.3f}, mean "
          f"{diff.mean() / scale:.4f} (in standard deviations of the float32 features)")


if __name__ == "__main__":
    main()
