"""Epoch time with the frozen-feature cache against recomputing the encoder.

One process, one model: a CLIP ViT-B/16-sized image encoder (12 layers,
width 768, 224 px; random weights, which cost the same as real ones) and a
Q-Former, phase-1 training (GCL + QCL) on 64 generated images with captions,
batch 32 (the VOC-LT and COCO-LT recipes' batch). Each side trains
`--epochs` epochs with `model.fit`; the first cached epoch also fills the
cache. The script prints the median time of the second and later epochs of
each side and the ratio.

The Q-Former's train step is what the cache cannot remove, so the ratio
depends on its size and on the captions' length:

- `--qformer minilm` (default): the demo's MiniLM (6 layers, width 384);
  `--qformer bert-base`: BERT-base sizes (12 layers, width 768; random
  weights), the Q-Former of the VOC-LT and COCO-LT recipes and the paper.
- `--captions stag` (default): STAG-length captions (llm_gen's template
  descriptions of VOC-LT training images, 50-80 words) at the recipes'
  sequence length of 64 tokens; `--captions short`: one short sentence
  (about 14 tokens) at length 40.

`--dtype mixed_bfloat16` runs both sides under that Keras policy (the
recipes' `model.dtype`).

The script also counts the floating-point operations of both parts
(`torch.utils.flop_counter`) and prints the speed-up they allow at equal
efficiency, (encoder + step) / step.

    python benchmarks/feature_cache.py --epochs 3
    python benchmarks/feature_cache.py --epochs 3 --captions short
    python benchmarks/feature_cache.py --epochs 3 --qformer bert-base
    python benchmarks/feature_cache.py --epochs 3 --batch-size 8 --images 32
    python benchmarks/feature_cache.py --epochs 3 --dtype mixed_bfloat16
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import kdpvlpa  # noqa: F401
import keras
import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from kdpvlpa.models import CLIPVisionEncoder, DPVLPA, QFormerBackbone
from kdpvlpa.models.qformer.convert_qformer import load_qformer_tokenizer
from kdpvlpa.training import FeatureCache, TrainingBatches, make_optimizer
from llm_gen import load_split, strip_tags, template_caption

# BERT-base sizes (bert-base-uncased), as in the VOC-LT and COCO-LT recipes.
BERT_BASE = dict(vocabulary_size=30522, num_layers=12, num_heads=12, hidden_dim=768,
                 intermediate_dim=3072)


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--qformer", choices=["minilm", "bert-base"], default="minilm")
    parser.add_argument("--captions", choices=["stag", "short"], default="stag")
    parser.add_argument("--dtype", choices=["float32", "mixed_bfloat16"], default="float32")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch fills the cache, "
                     "the speed-up is measured on the later ones")
    torch.set_num_threads(args.threads)
    keras.config.set_dtype_policy(args.dtype)
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)

    encoder = CLIPVisionEncoder()  # ViT-B/16 sizes, feature_layer=-2
    if args.qformer == "minilm":
        qformer = QFormerBackbone.from_preset("minilm", image_dim=768, num_query_tokens=32)
    else:
        qformer = QFormerBackbone(image_dim=768, num_query_tokens=32, **BERT_BASE)
    # MiniLM uses bert-base-uncased's WordPiece vocabulary.
    tokenizer = load_qformer_tokenizer("minilm")
    if args.captions == "stag":
        items = load_split("voc_lt").items[: args.images]
        captions = [strip_tags(template_caption(item)) for item in items]
        sequence_length = 64  # the recipes' value
    else:
        captions = [f"a photo number {i} with a dog and a potted plant"
                    for i in range(args.images)]
        sequence_length = 40
    model = DPVLPA(encoder, qformer, tokenizer, ["a"], sequence_length=sequence_length)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.images):
            path = Path(tmp) / f"{i}.png"
            Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(path)
            paths.append(path)
        token_ids, mask = model.tokenize(captions)
        times = {}
        for name in ("recompute", "cache"):
            features = None
            timer = EpochTimer()
            if name == "cache":
                # Filling the cache is counted in the first epoch's time.
                start = time.perf_counter()
                features = FeatureCache(Path(tmp) / "cache", model, paths, progress=False).load()
                fill = time.perf_counter() - start
            batches = TrainingBatches(token_ids, mask, features=features, image_paths=paths,
                                      image_size=224, batch_size=args.batch_size, seed=0)
            model.compile(optimizer=make_optimizer(args.epochs * len(batches)), phase="pretrain")
            model.fit(batches, epochs=args.epochs, callbacks=[timer], verbose=0)
            if name == "recompute":
                images = batches[0][0]["images"]
                with FlopCounterMode(display=False) as counter:
                    model.encode_images(images)
                encoder_flops = counter.get_total_flops() / len(images)
            else:
                (x,) = batches[0]
                with FlopCounterMode(display=False) as counter:
                    model.train_on_batch(x)
                step_flops = counter.get_total_flops() / len(x["token_ids"])
            if name == "cache":
                timer.times[0] += fill
            times[name] = timer.times
            print(f"{name:<10} epoch times (s): " + ", ".join(f"{t:.2f}" for t in timer.times),
                  flush=True)
    later = {k: statistics.median(v[1:]) for k, v in times.items()}
    print(f"{args.images} images, batch {args.batch_size}, ViT-B/16 encoder at 224 px, "
          f"{args.qformer} Q-Former, {args.captions} captions (mean "
          f"{mask.sum(axis=1).mean():.0f} of {sequence_length} tokens), {args.dtype}, "
          f"{args.threads} threads")
    print(f"median epoch 2+: recompute {later['recompute']:.2f} s, cache {later['cache']:.2f} s")
    print(f"speed-up of the cache (epochs 2+): {later['recompute'] / later['cache']:.1f}x")
    print(f"GFLOP per image: encoder forward {encoder_flops / 1e9:.1f}, Q-Former train step "
          f"{step_flops / 1e9:.2f}; bound at equal efficiency "
          f"{(encoder_flops + step_flops) / step_flops:.1f}x")


if __name__ == "__main__":
    main()
