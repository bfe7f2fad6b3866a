"""The method learns on the synthetic long-tailed set (slow: ~3 minutes)."""

import numpy as np
import pytest

from kdpvlpa.recipes import load_recipe
from kdpvlpa.training.pipeline import run_recipe

# The setting of benchmarks/dqr_coa_ablation.py with its README figures.
SMALL = [
    'model.vision_preset="tiny_random_vit"', 'model.qformer_preset="tiny_random_bert"',
    "model.num_query_tokens=8", "model.projection_dim=32", "model.sequence_length=32",
    "data.num_classes=12", "data.num_train=400", "data.num_test=200",
    "pretrain.epochs=3", "finetune.epochs=25", "pretrain.learning_rate=1e-3",
    "finetune.learning_rate=3e-3",
]
WITHOUT = ["finetune.dqr_reweighting=false", "finetune.lambda_coa=0.0"]


def _run(tmp_path, seed, extra=()):
    recipe = load_recipe("demo", overrides=SMALL + list(extra) + [f"seed={seed}"])
    name = "without" if extra else "with"
    return run_recipe(recipe, tmp_path / f"data{seed}", tmp_path / f"{name}{seed}", verbose=0)


@pytest.mark.slow
def test_finetuning_beats_the_label_frequency_baseline_and_dqr_coa_help_the_tail(tmp_path):
    with_terms, without_terms = [], []
    for seed in (1, 2, 3):
        metrics = _run(tmp_path, seed)
        baseline = metrics["label_frequency_baseline"]
        # "Clearly above": at least 10 points of mAP over the prior (18.6 here).
        assert metrics["map"]["total"] > baseline["total"] + 10, (metrics, baseline)
        with_terms.append(metrics["map"]["tail"])
        without_terms.append(_run(tmp_path, seed, WITHOUT)["map"]["tail"])
    print("tail mAP with DQR+COA", with_terms, "without", without_terms)
    assert np.mean(with_terms) >= np.mean(without_terms)
