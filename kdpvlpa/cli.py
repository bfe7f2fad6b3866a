"""The `kdpvlpa` command line: a thin click group over the library."""

import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

import click

from kdpvlpa import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kdpvlpa")
def main():
    """DP-VLPA long-tailed multi-label recognition (Keras 3, PyTorch backend)."""


def _user_errors():
    """Exceptions that describe bad input: reported in one line, no traceback."""
    from kdpvlpa.backend import MissingDependencyError
    from kdpvlpa.data import CaptionFileError, CorruptImageError, MissingImagesError
    from kdpvlpa.recipes import RecipeError
    from kdpvlpa.training.pipeline import PipelineError

    # OSError covers files that cannot be written (permissions, a full disk).
    return (MissingImagesError, CorruptImageError, CaptionFileError, RecipeError,
            PipelineError, OSError, ValueError, FloatingPointError,
            MissingDependencyError)


_RESUME_HINTS = {
    "fit_command": " Rerun the same command to resume from the last finished epoch.",
}


def reports_errors(command):
    """Turns the library's input errors into `Error: ...` and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("\nInterrupted." + _RESUME_HINTS.get(command.__name__, ""), err=True)
            sys.exit(130)
        except _user_errors() as error:
            if kwargs.get("debug"):
                raise
            from kdpvlpa.data import CorruptImageError

            if isinstance(error, CorruptImageError):
                error = (f"{str(error).rstrip('.')}. `kdpvlpa data check --dataset "
                         "NAME --data-dir DIR --verify-images` lists every unreadable "
                         "image.")
            elif isinstance(error, OSError):
                from kdpvlpa.utils.files import describe_os_error

                error = describe_os_error(error)
            click.echo(f"Error: {error}", err=True)
            sys.exit(1)

    return wrapper


# The recipes' datasets and the folders the docs put them in.
_DATA_FOLDERS = {"voc_lt": "voc", "coco_lt": "coco"}


def default_data_dir(dataset):
    """`data/voc`, `data/coco`, or `data/<dataset>` for any other dataset."""
    return Path("data") / _DATA_FOLDERS.get(dataset, dataset)


debug_option = click.option("--debug", is_flag=True, help="Show full tracebacks.")


def _print_metrics(metrics):
    ours, base = metrics["map"], metrics["label_frequency_baseline"]
    paper = metrics.get("paper_table1_dp_vlpa")
    header = f"{'mAP (%)':<26}{'total':>8}{'head':>8}{'medium':>8}{'tail':>8}"
    click.echo(header)
    rows = [("kdpvlpa", ours), ("label-frequency baseline", base)]
    if paper:
        rows.append(("paper, Table 1 (DP-VLPA)", paper))
    for name, values in rows:
        click.echo(f"{name:<26}" + "".join(f"{values[k]:>8.2f}" for k in
                                             ("total", "head", "medium", "tail")))


@main.command("fit")
@click.option("--recipe", "recipe_name", required=True,
              help="Recipe name (voc_lt, coco_lt, demo) or a .toml file.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Dataset root. Default: data/voc (voc_lt), data/coco (coco_lt), "
                   "data/synthetic (the demo, which draws its set there).")
@click.option("--captions", type=click.Path(dir_okay=False, path_type=Path),
              help="STAG caption file (kdpvlpa generate-captions). Default: the "
                   "template captions (demo) or the original captions.")
@click.option("--phase", type=click.Choice(["pretrain", "finetune", "all"]), default="all",
              show_default=True)
@click.option("--output", type=click.Path(file_okay=False, path_type=Path),
              help="Run folder. Default: runs/<recipe>.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a recipe value, e.g. --set finetune.epochs=5 (repeatable).")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("models"), show_default=True,
              help="Where the recipe's checkpoint names (vision_preset, "
                   "qformer_preset) are looked up.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Encoder feature cache. Default: <output>/feature_cache.")
@click.option("--no-cache", is_flag=True, help="Recompute the frozen encoder every epoch.")
@click.option("--allow-missing", is_flag=True,
              help="Train and evaluate on the images present when some are missing.")
@click.option("--quiet", is_flag=True, help="Less output.")
@debug_option
@reports_errors
def fit_command(recipe_name, data_dir, captions, phase, output, overrides, models_dir,
                cache_dir, no_cache, allow_missing, quiet, debug):
    """Train DP-VLPA with a recipe (both phases by default) and evaluate it.

    The run folder gets the resolved recipe, checkpoints (a killed run
    resumes where it stopped), model.keras, metrics.json, per_class_ap.csv
    and per_class_ap.png.
    """
    from kdpvlpa.recipes import load_recipe

    if no_cache and cache_dir is not None:
        raise click.UsageError("--cache-dir has no use with --no-cache: give one of them.")
    start = time.time()
    recipe = load_recipe(recipe_name, overrides=overrides)
    data_dir = data_dir or default_data_dir(recipe.data.dataset)
    output = output or Path("runs") / recipe.name
    from kdpvlpa.training.pipeline import run_recipe

    metrics = run_recipe(
        recipe, data_dir, output, phase=phase, captions=captions, models_dir=models_dir,
        cache_dir=cache_dir, allow_missing=allow_missing, use_cache=not no_cache,
        verbose=0 if quiet else 2,
    )
    _print_metrics(metrics)
    click.echo(f"Run folder: {output}")
    click.echo(f"Time: {time.time() - start:.0f} s")


@main.command("evaluate")
@click.option("--run", "run_dir", required=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="A run folder written by `kdpvlpa fit`.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Dataset root. Default: data/voc (voc_lt), data/coco (coco_lt), "
                   "data/synthetic.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Encoder feature cache. Default: <run>/feature_cache.")
@click.option("--allow-missing", is_flag=True, help="Evaluate on the images present.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for this evaluation's metrics.json, per_class_ap.csv and "
                   "per_class_ap.png. Default: <run>/evaluation.")
@debug_option
@reports_errors
def evaluate_command(run_dir, data_dir, cache_dir, allow_missing, output, debug):
    """Evaluate a trained run on its test split (mAP total/head/medium/tail).

    The report goes to <run>/evaluation (or --output); the figures `fit`
    wrote in the run folder are left as they are.
    """
    from kdpvlpa.recipes import load_recipe, saved_recipe_name
    from kdpvlpa.training import pipeline

    start = time.time()
    recipe = load_recipe(run_dir / "recipe.toml")
    name = saved_recipe_name(run_dir / "recipe.toml")
    if name:
        recipe = dataclasses.replace(recipe, name=name)
    data_dir = data_dir or default_data_dir(recipe.data.dataset)
    with pipeline.data_in_use(recipe, data_dir):
        test = pipeline.load_test_data(recipe, data_dir, allow_missing=allow_missing)
        model = load_model(run_dir)
        scores = pipeline.predict_scores(model, test, cache_dir or run_dir / "feature_cache",
                                         recipe.eval.batch_size)
        num_train = pipeline.train_split_size(recipe, data_dir)
    output = output or run_dir / "evaluation"
    baseline = pipeline.label_frequency_scores(test, num_train)
    metrics = pipeline.write_report(output, recipe, test, scores, baseline,
                                    time.time() - start)
    _print_metrics(metrics)
    click.echo(f"Report: {output}")


def load_model(path):
    """A trained `DPVLPA` from a `.keras` file or a run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise FileNotFoundError(f"No trained model at {path} (run `kdpvlpa fit` first).")
    import zipfile

    if not zipfile.is_zipfile(path):
        advice = "Save the model again."
        if path.name == "model.keras" and (path.parent / "recipe.toml").is_file():
            advice = ("Rerun `kdpvlpa fit` on its run folder: it writes model.keras "
                      "again from the last checkpoint.")
        raise ValueError(f"{path} is not a readable .keras file (corrupt or cut short). "
                         + advice)
    import keras

    import kdpvlpa.models  # noqa: F401  (registers the classes)

    return keras.saving.load_model(str(path))


@main.command("predict")
@click.argument("images", nargs=-1, required=True,
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="model.keras or a run folder.")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True,
              help="Labels to show per image.")
@click.option("--classes", help="Comma-separated class names to predict instead of the "
                                "trained ones (open vocabulary).")
@click.option("--json", "as_json", is_flag=True, help="Print all probabilities as JSON.")
@debug_option
@reports_errors
def predict_command(images, model_path, top, classes, as_json, debug):
    """Per-class probabilities and the top labels of each image.

    An image that is missing or cannot be read is reported after the results
    of the others, and the command then exits with status 1.
    """
    import numpy as np

    from kdpvlpa.data import CorruptImageError
    from kdpvlpa.training import load_training_image

    names = None
    if classes is not None:
        names = [c.strip() for c in classes.split(",")]
        if not all(names):
            raise click.BadParameter(f"an empty class name in {classes!r}.",
                                     param_hint="--classes")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            verb = "appears" if len(repeated) == 1 else "appear"
            raise click.BadParameter(f"{', '.join(repeated)} {verb} more than once.",
                                     param_hint="--classes")
    model = load_model(model_path)
    if names is not None:
        model.set_class_names(names)
    results, failed = {}, []
    for path in images:
        try:
            # The loader of training and evaluation, so an image gets the
            # scores `kdpvlpa evaluate` gives it.
            pixels = load_training_image(path, model.preprocessor.image_size,
                                         model.preprocessor.crop_to_aspect_ratio)
        except (CorruptImageError, FileNotFoundError) as error:
            failed.append(str(error))
            continue
        probabilities = model.predict(pixels[None], verbose=0)[0]
        results[str(path)] = {name: float(p) for name, p in
                              zip(model.class_names, np.asarray(probabilities))}
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        for path, probs in results.items():
            best = sorted(probs.items(), key=lambda kv: -kv[1])[:top]
            click.echo(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in best))
    if failed:
        for message in failed:
            click.echo(f"Error: {message}", err=True)
        sys.exit(1)


def _register_subcommands():
    # Neither llm_gen nor kdpvlpa.data imports keras, vllm or torch at import
    # time, so `kdpvlpa --help` stays fast.
    from llm_gen import cli as llm_cli

    from kdpvlpa.data.cli import data

    for command in llm_cli.COMMANDS:
        main.add_command(command)
    main.add_command(data)


_register_subcommands()


if __name__ == "__main__":
    main()
