"""The whole DP-VLPA pipeline for a recipe: data, model, both phases, evaluation.

`run_recipe` is what `kdpvlpa fit` calls. A run folder holds the resolved
recipe, the captions used, per-phase checkpoints (a killed run resumes),
the final `model.keras`, `metrics.json`, a per-class AP table and chart.
"""

import contextlib
import json
import shlex
import shutil
import time
from pathlib import Path

import numpy as np

# Only kdpvlpa.data at import time (no keras / torch): `kdpvlpa fit` with
# missing data stops at the data check, at once.
from kdpvlpa.data import (
    SyntheticSetInUseError,
    load_caption_file,
    load_dataset,
    synthetic_lt_in_use,
)
from kdpvlpa.utils.files import atomic_write, exclusive_lock

# The paper's Table 1, DP-VLPA row (mAP %), for the run report.
PAPER_TABLE1 = {
    "voc_lt": {"total": 90.72, "head": 78.87, "medium": 92.82, "tail": 98.04},
    "coco_lt": {"total": 74.42, "head": 65.09, "medium": 76.97, "tail": 79.26},
}
NAMED_PRESETS = ("tiny_random_vit", "tiny_random_bert", "minilm")
PRESET_HINTS = {
    "vision_preset": "a CLIP ViT-B/16 checkpoint, e.g. openai/clip-vit-base-patch16 saved "
                     "with transformers' save_pretrained (or downloaded with "
                     "`hf download openai/clip-vit-base-patch16 --local-dir "
                     "{models_dir}/clip-vit-base-patch16`; `huggingface-cli download` "
                     "with an older huggingface_hub), or OpenAI's own ViT-B-16.pt",
    "qformer_preset": "a BERT checkpoint with its tokenizer, e.g. bert-base-uncased "
                      "(`hf download bert-base-uncased --local-dir "
                      "{models_dir}/bert-base-uncased`)",
}


class PipelineError(RuntimeError):
    """A problem with the run's inputs, reported without a traceback."""


def resolve_preset(value, key, models_dir):
    """A recipe's preset value as something `from_preset` loads.

    Named presets pass through; an existing path is used as is; otherwise the
    name is looked up in `models_dir`. Checkpoints are folders, except that
    the image encoder may also be one file (OpenAI's `ViT-B-16.pt`, an
    open_clip checkpoint).
    """
    if value in NAMED_PRESETS:
        return value

    def usable(path):
        return path.is_dir() or (key == "vision_preset" and path.is_file())

    path = Path(value).expanduser()
    if usable(path):
        return str(path)
    candidate = Path(models_dir) / value
    if usable(candidate):
        return str(candidate)
    raise PipelineError(
        f"model.{key} = {value!r} was found neither as a folder nor in the models folder "
        f"{Path(models_dir)}. Put {PRESET_HINTS[key].format(models_dir=Path(models_dir))} "
        f"there, pass --models-dir, or set --set model.{key}=PATH."
    )


def build_model(recipe, class_names, models_dir="models"):
    from kdpvlpa.models import DPVLPA

    m = recipe.model
    vision = resolve_preset(m.vision_preset, "vision_preset", models_dir)
    qformer = resolve_preset(m.qformer_preset, "qformer_preset", models_dir)
    import keras

    keras.utils.set_random_seed(recipe.seed)
    try:
        model = DPVLPA.from_presets(
            vision_preset=vision,
            qformer_preset=qformer,
            class_names=class_names,
            feature_layer=m.feature_layer,
            num_query_tokens=m.num_query_tokens,
            cross_attention_frequency=m.cross_attention_frequency,
            projection_dim=m.projection_dim,
            sequence_length=m.sequence_length,
            crop_to_aspect_ratio=recipe.data.crop_to_aspect_ratio,
            dtype=m.dtype,
        )
    except ValueError as error:
        # A checkpoint that cannot be read, or [model] values beyond its limits
        # (positions, layers): name the recipe's section so the user knows
        # which --set to change.
        raise PipelineError(f"The recipe's [model] checkpoints: {error}") from None
    size = model.image_encoder.image_size
    if recipe.data.dataset != "synthetic" and recipe.data.image_size != size:
        raise PipelineError(
            f"data.image_size is {recipe.data.image_size}, but the encoder "
            f"{m.vision_preset!r} takes {size} px images; set it with --set data.image_size={size}."
        )
    return model


def _synthetic_args(recipe):
    d = recipe.data
    kwargs = {k: v for k, v in (("num_classes", d.num_classes), ("num_train", d.num_train),
                                ("num_test", d.num_test)) if v is not None}
    return dict(image_size=d.image_size, seed=recipe.seed, **kwargs)


@contextlib.contextmanager
def data_in_use(recipe, data_dir):
    """Keeps the recipe's data as it is for the block.

    The synthetic set is drawn, and no other run can redraw its folder with
    other settings (a seed) until the block ends: a run reads its images
    again when it evaluates. Real datasets are only read, so need nothing.
    """
    if recipe.data.dataset != "synthetic":
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(synthetic_lt_in_use(data_dir, **_synthetic_args(recipe)))
        except SyntheticSetInUseError as error:
            raise PipelineError(str(error)) from None
        yield


def load_data(recipe, data_dir, allow_missing=False, train_captions=True):
    """Train and test `LTDataset`s for the recipe; call it inside `data_in_use`.

    `train_captions=False` skips the training split's original captions (a
    run given its own caption file does not need COCO's annotation file).
    """
    kwargs = {}
    if not train_captions and recipe.data.dataset == "coco_lt":
        kwargs["captions"] = None
    train = load_dataset(recipe.data.dataset, data_dir, "train",
                         allow_missing=allow_missing, **kwargs)
    test = load_dataset(recipe.data.dataset, data_dir, "test", allow_missing=allow_missing)
    return train, test


def load_test_data(recipe, data_dir, allow_missing=False):
    """The test `LTDataset` alone (evaluation needs no training image); call it
    inside `data_in_use`."""
    return load_dataset(recipe.data.dataset, data_dir, "test", allow_missing=allow_missing)


def train_split_size(recipe, data_dir):
    """Images in the recipe's training split, from its split file."""
    from kdpvlpa.data import load_split, load_split_file

    if recipe.data.dataset == "synthetic":
        root = Path(data_dir).expanduser()  # as the loaders read it
        return len(load_split_file(root / "synthetic_lt_train.json")["image_ids"])
    return len(load_split(recipe.data.dataset, "train")["image_ids"])


def template_captions(data_dir, path):
    """Writes llm_gen's template captions for the synthetic training split.

    The template backend follows the STAG rules deterministically (tail
    classes first, inside `<tail>` tags), so the demo needs no LLM. The file
    is written anew each time (it takes milliseconds), so it always matches
    the split in `data_dir`, which a reused run folder may not; the run
    folder's captions.sha256 still guards its checkpoints.
    """
    import llm_gen
    from llm_gen.backends import make_backend

    data_dir = Path(data_dir).expanduser()
    path = Path(path)
    split = llm_gen.load_split(
        split_file=data_dir / "synthetic_lt_train.json",
        original_captions=data_dir / "synthetic_lt_train_captions.json",
    )

    def write(tmp):
        tmp.unlink(missing_ok=True)  # generate_captions would resume a leftover
        llm_gen.generate_captions(split, make_backend("template"), tmp)

    return atomic_write(path, write)


def feature_source(model, paths, cache_dir, flips, batch_size, verbose):
    """Cached encoder features (`cache_dir` given) or None to read images."""
    if cache_dir is None:
        return None
    from kdpvlpa.training.feature_cache import FeatureCache

    cache = FeatureCache(cache_dir, model, paths, flips=flips, batch_size=batch_size,
                         progress=bool(verbose))
    return cache.load()


def predict_scores(model, dataset, cache_dir=None, batch_size=64, verbose=True):
    """Per-class probabilities `(N, C)` for every image of `dataset`."""
    import torch
    from keras import ops

    from kdpvlpa.training.feature_cache import load_training_image

    features = feature_source(model, dataset.image_paths, cache_dir, False, batch_size, verbose)
    scores = []
    n = dataset.num_images
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if features is not None:
            x = {"image_features": np.asarray(features[start:stop, 0], "float32")}
        else:
            pre = model.preprocessor
            x = {"images": np.stack([load_training_image(p, pre.image_size,
                                                         pre.crop_to_aspect_ratio)
                                     for p in dataset.image_paths[start:stop]])}
        # As `model.predict`: no autograd graph, and the same attention
        # kernels (a bfloat16 policy keeps bfloat16 attention in inference).
        with torch.no_grad():
            probabilities = model(x, training=False)["probabilities"]
        scores.append(ops.convert_to_numpy(probabilities))
    return np.concatenate(scores).astype("float64")


def label_frequency_scores(test, num_train):
    """The label-frequency baseline: every image scores each class by its prior,
    its training frequency (`test.class_freq`) over `num_train` images."""
    prior = test.class_freq / max(num_train, 1)
    return np.broadcast_to(prior, (test.num_images, len(prior))).astype("float64")


def write_report(run_dir, recipe, test, scores, baseline, seconds):
    """metrics.json, per_class_ap.csv and per_class_ap.png in `run_dir`
    (created if needed)."""
    import pandas as pd

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    from kdpvlpa.metrics import average_precision, long_tail_map

    ours = long_tail_map(test.labels, scores, test.class_freq)
    base = long_tail_map(test.labels, baseline, test.class_freq)
    ap = average_precision(test.labels, scores) * 100
    groups = np.array(["medium"] * test.num_classes, dtype=object)
    groups[list(test.head)] = "head"
    groups[list(test.tail)] = "tail"
    table = pd.DataFrame({
        "class": test.class_names,
        "group": groups,
        "train_images": test.class_freq,
        "test_positives": test.labels.sum(0).astype(int),
        "ap": np.round(ap, 4),
    })
    atomic_write(run_dir / "per_class_ap.csv", lambda tmp: table.to_csv(tmp, index=False))
    paper = PAPER_TABLE1.get(recipe.data.dataset)
    metrics = {
        "dataset": recipe.data.dataset,
        "recipe": recipe.name,
        "map": ours,
        "label_frequency_baseline": base,
        "paper_table1_dp_vlpa": paper,
        "num_test_images": int(test.num_images),
        "seconds": round(seconds, 1),
    }
    # An empty group (e.g. no head class in a small set) has mAP NaN: null in
    # the file, which must stay valid JSON.
    text = json.dumps(_nan_to_none(metrics), indent=2, allow_nan=False)
    atomic_write(run_dir / "metrics.json", lambda tmp: tmp.write_text(text))
    _plot(run_dir / "per_class_ap.png", table, ours, paper, recipe.data.dataset)
    return metrics


def _nan_to_none(value):
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _plot(path, table, ours, paper, dataset):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#2ca02c"}
    fig, (ax, ax2) = plt.subplots(
        1, 2, figsize=(max(8, 0.28 * len(table) + 5), 4.5),
        gridspec_kw={"width_ratios": [max(len(table), 4), 6]},
    )
    ax.bar(range(len(table)), table["ap"], color=[colours[g] for g in table["group"]])
    ax.set_xticks(range(len(table)))
    ax.set_xticklabels(table["class"], rotation=90, fontsize=7)
    ax.set_ylabel("AP (%)")
    # A band above 100 for the legend, which no bar reaches.
    ax.set_ylim(0, 116)
    ax.set_yticks(range(0, 101, 20))
    from kdpvlpa.data.check import DISPLAY_NAMES

    ax.set_title(f"Per-class AP on {DISPLAY_NAMES.get(dataset, dataset)}")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=g) for g, c in colours.items()],
              loc="upper right", ncol=3, fontsize=8)
    keys = ["total", "head", "medium", "tail"]
    x = np.arange(len(keys))
    # Greys: the group colours of the left panel mean head / medium / tail.
    ax2.bar(x - 0.2 if paper else x, [ours[k] for k in keys], width=0.4, label="kdpvlpa",
            color="#404040")
    if paper:
        ax2.bar(x + 0.2, [paper[k] for k in keys], width=0.4, label="paper (Table 1)",
                color="#b0b0b0")
    ax2.set_xticks(x)
    ax2.set_xticklabels(keys)
    ax2.set_ylim(0, 116)
    ax2.set_yticks(range(0, 101, 20))
    ax2.set_title("mAP (%)")
    ax2.legend(loc="upper center", ncol=2, fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


def _flatten(d, prefix=""):
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_same_recipe(output, recipe):
    """Refuses to resume a run folder that was trained with other settings."""
    from kdpvlpa.recipes import load_recipe

    saved = Path(output) / "recipe.toml"
    started = {p for p in ("pretrain", "finetune")
               if (Path(output) / "checkpoints" / p / "state.json").exists()}
    if not saved.exists():
        if started:
            raise PipelineError(
                f"The run folder {output} holds checkpoints but no recipe.toml, so "
                "nothing tells which settings trained them. Choose a new --output, or "
                "delete the folder to start over."
            )
        return
    if not (Path(output) / "checkpoints").exists():
        return
    before = _flatten(load_recipe(saved).to_dict())
    now = _flatten(recipe.to_dict())
    # Only what the existing checkpoints depend on: fine-tuning settings may
    # still change while phase 2 has not started. Phase 2's checkpoints also
    # depend on whether phase 1 ran: pretraining added now (`pretrain.epochs`
    # 0 -> N) would be trained and then overwritten by them.
    ignored = ("eval.",) + tuple(f"{p}." for p in ("pretrain", "finetune")
                                 if p not in started)
    frozen = {"pretrain.epochs"} if "finetune" in started else set()
    changed = sorted(k for k in set(before) | set(now)
                     if before.get(k) != now.get(k)
                     and (k in frozen or not k.startswith(ignored)))
    if changed:
        details = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
        keep = " ".join(f"--set {shlex.quote(f'{k}={_set_value(before[k])}')}"
                        for k in changed if before.get(k) is not None)
        hint = f", rerun with the folder's values ({keep})" if keep else ""
        raise PipelineError(
            f"The run folder {output} holds checkpoints trained with a different recipe "
            f"({details}). Resuming would mix settings: choose a new --output{hint}, or "
            "delete the folder to start over."
        )


def _set_value(value):
    """A recipe value as `--set` reads it back: TOML, strings unquoted."""
    from kdpvlpa.recipes import _toml_value

    return value if isinstance(value, str) else _toml_value(value)


def _check_same_captions(output, image_ids, captions):
    """Refuses to resume a run folder whose checkpoints saw other captions.

    The recipe does not name the caption file, so the run folder keeps a
    hash of the (image id, caption) pairs it trained on.
    """
    import hashlib

    pairs = [[str(i), c] for i, c in zip(image_ids, captions)]
    digest = hashlib.sha256(json.dumps(pairs).encode("utf-8")).hexdigest()
    saved = Path(output) / "captions.sha256"
    if (saved.exists() and (Path(output) / "checkpoints").exists()
            and saved.read_text().strip() != digest):
        raise PipelineError(
            f"The run folder {output} holds checkpoints trained on other captions (another "
            "--captions file, or the file changed since). Resuming would mix two caption "
            "sets: choose a new --output, or delete the folder to start over."
        )
    atomic_write(saved, lambda tmp: tmp.write_text(digest + "\n"))


def _check_pretrained(folder):
    """`--phase finetune` starts from a finished phase 1, never from half of one."""
    from kdpvlpa.training.trainer import phase_state

    state = phase_state(folder)
    if state is None or not (Path(folder) / "last.weights.h5").exists():
        raise PipelineError(
            f"--phase finetune starts from phase 1's weights, but {folder} holds no "
            "phase-1 checkpoint. Run --phase pretrain (or all) first, or set "
            "pretrain.epochs=0 to fine-tune from the initial weights."
        )
    if not state.get("complete"):
        raise PipelineError(
            f"--phase finetune starts from a finished phase 1, but the one in {folder} "
            f"stopped after epoch {state.get('epochs_done')}. Rerun --phase pretrain "
            "(or all) to finish it."
        )


def run_recipe(recipe, data_dir, output, phase="all", captions=None, models_dir="models",
               cache_dir=None, allow_missing=False, use_cache=True, verbose=1):
    """Runs a recipe end to end and returns the metrics dict.

    Args:
        recipe: `kdpvlpa.recipes.Recipe`.
        data_dir: dataset root (the synthetic set is drawn there).
        output: the run folder.
        phase: "pretrain", "finetune" or "all".
        captions: STAG caption file (llm_gen JSONL) for phase 1; by default the
            template captions (synthetic set) or the original captions.
        models_dir: where recipe preset names are looked up.
        cache_dir: encoder feature cache (default `<output>/feature_cache`).
        allow_missing: train on the images present when some are missing.
        use_cache: cache the frozen encoder's outputs on disk.
    """
    if phase not in ("pretrain", "finetune", "all"):
        raise ValueError(f"`phase` must be pretrain, finetune or all. Received: {phase!r}")
    start = time.time()
    with data_in_use(recipe, data_dir):
        return _run_locked(recipe, data_dir, output, phase, captions, models_dir, cache_dir,
                           allow_missing, use_cache, verbose, start)


def _run_locked(recipe, data_dir, output, phase, captions, models_dir, cache_dir,
                allow_missing, use_cache, verbose, start):
    output = Path(output)
    train, test = load_data(recipe, data_dir, allow_missing=allow_missing,
                            train_captions=captions is None)
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(
        output / ".lock", PipelineError,
        f"Another `kdpvlpa fit` is using the run folder {output}. Wait for it to "
        "finish, or choose another --output.",
    ):
        progress = {"costly_work": False}
        try:
            return _run_in_folder(recipe, train, test, data_dir, output, phase, captions,
                                  models_dir, cache_dir, use_cache, verbose, start,
                                  progress)
        except BaseException:
            # A new run folder that failed before any costly work (a bad
            # model setting, a missing checkpoint) is removed; once features
            # or checkpoints are being written, it is kept for the rerun.
            if created and not progress["costly_work"]:
                shutil.rmtree(output, ignore_errors=True)
            raise


def _epochs(n):
    return f"{n} epoch" + ("" if n == 1 else "s")


def _run_in_folder(recipe, train, test, data_dir, output, phase, captions, models_dir,
                   cache_dir, use_cache, verbose, start, progress):
    """`run_recipe` once it holds the run folder's lock; sets
    `progress["costly_work"]` before the first feature or checkpoint."""
    checkpoints = output / "checkpoints"
    _check_same_recipe(output, recipe)
    if phase == "pretrain" and (checkpoints / "finetune" / "state.json").exists():
        raise PipelineError(
            f"Phase 2 has checkpoints in {output}, so phase 1 is finished there, and "
            "--phase pretrain would replace the fine-tuned model.keras and report with "
            "phase 1's. Use --phase finetune or all to continue, or choose another "
            "--output."
        )
    if phase == "finetune" and recipe.pretrain.epochs > 0:
        _check_pretrained(checkpoints / "pretrain")
    recipe.save(output / "recipe.toml")

    # Captions first: a caption file that misses images stops the run before
    # any model work.
    if captions is None and recipe.data.dataset == "synthetic":
        captions = template_captions(data_dir, output / "captions.template.jsonl")
    if captions is not None:
        caption_texts = load_caption_file(captions, train.image_ids)
    elif train.captions is not None:
        if verbose:
            from kdpvlpa.data.coco import default_caption_source

            source = "the packaged LMPT captions"
            if (recipe.data.dataset == "coco_lt"
                    and default_caption_source(data_dir) == "annotations"):
                source = "COCO's annotations/captions_train2017.json"
            print(f"No --captions given: phase 1 trains on the original captions, from "
                  f"{source} (generate STAG captions with `kdpvlpa generate-captions`).")
        caption_texts = list(train.captions)
    else:
        raise PipelineError("No captions for phase 1: pass --captions FILE.")
    _check_same_captions(output, train.image_ids, caption_texts)

    # keras / torch only now, after the data and caption checks.
    from kdpvlpa.losses import co_occurrence_matrix
    from kdpvlpa.training.batches import TrainingBatches
    from kdpvlpa.training.trainer import train_phase

    model = build_model(recipe, train.class_names, models_dir)
    token_ids, padding_mask = model.tokenize(caption_texts)
    if use_cache and cache_dir is None:
        cache_dir = output / "feature_cache"
    flips = bool(recipe.data.horizontal_flip)
    progress["costly_work"] = True
    features = feature_source(model, train.image_paths, cache_dir if use_cache else None,
                              flips, recipe.eval.batch_size, verbose)

    def batches(section, labels):
        return TrainingBatches(
            token_ids, padding_mask, features=features, image_paths=train.image_paths,
            image_size=model.preprocessor.image_size, labels=labels,
            batch_size=section.batch_size, shuffle=True, flip=flips, seed=recipe.seed,
            crop_to_aspect_ratio=model.preprocessor.crop_to_aspect_ratio,
        )

    def optimizer_args(section):
        return dict(learning_rate=section.learning_rate, weight_decay=section.weight_decay,
                    warmup_steps=section.warmup_steps, warmup_fraction=section.warmup_fraction)

    if phase in ("pretrain", "all") and recipe.pretrain.epochs > 0:
        if verbose:
            print(f"Phase 1 (knowledge injection): {_epochs(recipe.pretrain.epochs)}")
        train_phase(model, "pretrain", batches(recipe.pretrain, None), recipe.pretrain.epochs,
                    optimizer_args(recipe.pretrain), checkpoints / "pretrain",
                    seed=recipe.seed, verbose=verbose)
    elif phase == "finetune" and recipe.pretrain.epochs > 0:
        model.load_weights(str(checkpoints / "pretrain" / "last.weights.h5"))
    if phase in ("finetune", "all") and recipe.finetune.epochs > 0:
        f = recipe.finetune
        if verbose:
            print(f"Phase 2 (adaptive fine-tuning): {_epochs(f.epochs)}")
        options = {}
        if f.classification_loss == "asymmetric":
            options = {"gamma_pos": 0.0, "gamma_neg": 4.0, "clip": 0.05}
        train_phase(
            model, "finetune", batches(f, train.labels), f.epochs, optimizer_args(f),
            checkpoints / "finetune", seed=recipe.seed, verbose=verbose,
            compile_args=dict(
                class_freq=train.class_freq,
                co_occurrence=co_occurrence_matrix(train.labels),
                lambda_dqr=f.lambda_dqr, lambda_coa=f.lambda_coa, beta=f.beta,
                dqr_reweighting=f.dqr_reweighting,
                classification_loss_options=options,
            ),
        )
    atomic_write(output / "model.keras", lambda tmp: model.save(str(tmp)))

    scores = predict_scores(model, test, cache_dir if use_cache else None,
                            recipe.eval.batch_size, verbose)
    baseline = label_frequency_scores(test, train_split_size(recipe, data_dir))
    return write_report(output, recipe, test, scores, baseline, time.time() - start)
