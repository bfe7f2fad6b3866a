"""DQR and COA ablation on the synthetic long-tailed set.

For a few seeds, trains the same small model twice on the same synthetic
set: the full method (GCL-DQR + COA, λ₁ = λ₂ = 1) and without both
(plain GCL with a mean over queries, λ₂ = 0). Prints total and tail mAP of
each run, their means, and the label-frequency baseline.

    python benchmarks/dqr_coa_ablation.py --seeds 1 2 3
"""

import argparse
import tempfile
import time
from pathlib import Path

import kdpvlpa  # noqa: F401
from kdpvlpa.recipes import load_recipe
from kdpvlpa.training.pipeline import run_recipe

SMALL = [
    'model.vision_preset="tiny_random_vit"', 'model.qformer_preset="tiny_random_bert"',
    "model.num_query_tokens=8", "model.projection_dim=32", "model.sequence_length=32",
    "data.num_classes=12", "data.num_train=400", "data.num_test=200",
    "pretrain.epochs=3", "finetune.epochs=25", "pretrain.learning_rate=1e-3",
    "finetune.learning_rate=3e-3",
]
VARIANTS = {
    "with DQR+COA": ["finetune.dqr_reweighting=true", "finetune.lambda_coa=1.0"],
    "without": ["finetune.dqr_reweighting=false", "finetune.lambda_coa=0.0"],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--set", dest="extra", action="append", default=[],
                        help="extra recipe overrides")
    args = parser.parse_args()
    results = {name: [] for name in VARIANTS}
    baseline = None
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name, overrides in VARIANTS.items():
                recipe = load_recipe("demo", overrides=SMALL + overrides + args.extra
                                     + [f"seed={seed}"])
                start = time.time()
                metrics = run_recipe(recipe, Path(tmp) / f"data{seed}",
                                     Path(tmp) / f"run{seed}{name.split()[0]}", verbose=0)
                baseline = metrics["label_frequency_baseline"]
                results[name].append(metrics["map"])
                print(f"seed {seed} {name:<13} total {metrics['map']['total']:6.2f} "
                      f"tail {metrics['map']['tail']:6.2f}  ({time.time() - start:.0f} s)",
                      flush=True)
    print("\nmean over seeds", args.seeds)
    for name, runs in results.items():
        total = sum(r["total"] for r in runs) / len(runs)
        tail = sum(r["tail"] for r in runs) / len(runs)
        print(f"{name:<13} total {total:6.2f} tail {tail:6.2f}")
    print("label-frequency baseline (last seed) "
          f"total {baseline['total']:6.2f} tail {baseline['tail']:6.2f}")


if __name__ == "__main__":
    main()
