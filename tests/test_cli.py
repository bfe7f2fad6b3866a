"""End-to-end tests of the `kdpvlpa` command line.

One tiny `fit` of the demo recipe (a random ViT and the character-vocabulary
Q-Former, 40 training images, 4 classes, 1 + 2 epochs) is shared by the
tests of the run folder, resuming, `evaluate` and `predict`. The error paths
run in a real subprocess, where the exit code and stderr are what the user
sees; with no data they must stop before keras / torch are even imported.
"""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kdpvlpa.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.vision_preset=tiny_random_vit",
    "model.qformer_preset=tiny_random_bert",
    "data.num_train=40",
    "data.num_test=20",
    "data.num_classes=4",
    "pretrain.epochs=1",
    "finetune.epochs=2",
    "pretrain.batch_size=16",
    "finetune.batch_size=16",
    "model.num_query_tokens=4",
    "model.projection_dim=16",
    "model.sequence_length=24",
]
GROUPS = ("total", "head", "medium", "tail")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _sets(overrides):
    return [arg for text in overrides for arg in ("--set", text)]


def _fit_args(data_dir, output):
    return ["fit", "--recipe", "demo", "--data-dir", str(data_dir), "--output", str(output),
            *_sets(TINY)]


def _invoke(*args):
    """In-process run; an exception that escaped the CLI fails the test."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _run(cwd, *args, timeout=120):
    """`python -m kdpvlpa.cli ARGS` as a user runs it, from `cwd`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "kdpvlpa.cli", *[str(a) for a in args]],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def _assert_one_clean_error(proc):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def _strict_json(path):
    def refuse(constant):
        raise AssertionError(f"{path.name} holds {constant}: not valid JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return a == pytest.approx(b, abs=1e-6)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    data_dir, run_dir = base / "data", base / "run"
    result = _invoke(*_fit_args(data_dir, run_dir))
    assert result.exit_code == 0, result.output
    return {
        "data": data_dir,
        "run": run_dir,
        "output": result.output,
        # Read now, so that a test that changed the run cannot affect others.
        "metrics": _strict_json(run_dir / "metrics.json"),
    }


# --- help -------------------------------------------------------------------


def test_help_lists_commands_and_options():
    result = _invoke("--help")
    assert result.exit_code == 0
    for command in ("fit", "evaluate", "predict", "data", "generate-captions", "captions"):
        assert re.search(rf"^\s+{command}\b", result.output, re.M), command

    result = _invoke("fit", "--help")
    assert result.exit_code == 0
    for option in ("--recipe", "--data-dir", "--captions", "--phase", "--output", "--set",
                   "--models-dir", "--cache-dir", "--no-cache", "--allow-missing", "--quiet",
                   "--debug"):
        assert option in result.output, option
    assert "pretrain|finetune|all" in result.output

    result = _invoke("predict", "--help")
    assert result.exit_code == 0
    for option in ("IMAGES...", "--model", "--top", "--classes", "--json"):
        assert option in result.output, option


# --- fit, evaluate, predict ---------------------------------------------------


def test_fit_prints_the_table_and_writes_the_run_folder(tiny_run):
    run, out, metrics = tiny_run["run"], tiny_run["output"], tiny_run["metrics"]

    # The printed table: our row and the baseline row, with metrics.json's values.
    assert re.search(r"mAP \(%\)\s+total\s+head\s+medium\s+tail", out)
    for name, key in (("kdpvlpa", "map"), ("label-frequency baseline",
                                            "label_frequency_baseline")):
        row = re.search(rf"^{re.escape(name)}\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$", out, re.M)
        assert row, out
        for group, text in zip(GROUPS, row.groups()):
            value = metrics[key][group]
            assert (text == "nan") if value is None else text == f"{value:.2f}"
    assert re.search(r"^Time: \d+ s$", out, re.M)
    assert f"Run folder: {run}" in out

    # metrics.json: strict JSON, all four groups; no head class in 40 images.
    for key in ("map", "label_frequency_baseline"):
        assert set(metrics[key]) == set(GROUPS)
        assert metrics[key]["head"] is None
        for group in ("total", "medium", "tail"):
            assert 0.0 <= metrics[key][group] <= 100.0
    assert metrics["dataset"] == "synthetic" and metrics["num_test_images"] == 20

    # The resolved recipe loads back and holds the overrides.
    from kdpvlpa.recipes import load_recipe

    saved = load_recipe(run / "recipe.toml")
    assert saved.to_dict() == load_recipe("demo", overrides=TINY).to_dict()
    assert saved.model.qformer_preset == "tiny_random_bert"
    assert (saved.data.num_classes, saved.data.num_train, saved.finetune.epochs) == (4, 40, 2)

    # Per-class table through pandas.
    import pandas as pd

    table = pd.read_csv(run / "per_class_ap.csv")
    assert list(table.columns) == ["class", "group", "train_images", "test_positives", "ap"]
    assert len(table) == 4 and table["class"].is_unique
    assert set(table["group"]) <= {"head", "medium", "tail"}
    assert table["ap"].between(0, 100).all()
    assert (table["test_positives"] > 0).all()
    from kdpvlpa.data import load_synthetic_lt

    train = load_synthetic_lt(tiny_run["data"], "train")
    assert list(table["class"]) == list(train.class_names)
    assert list(table["train_images"]) == [int(n) for n in train.class_freq]
    tail = table.loc[table["group"] == "tail", "ap"].mean()
    assert tail == pytest.approx(metrics["map"]["tail"], abs=1e-3)

    # The chart is a real PNG.
    png = run / "per_class_ap.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    from PIL import Image

    with Image.open(png) as image:
        assert image.format == "PNG" and min(image.size) > 100
        image.verify()

    assert (run / "model.keras").is_file()
    for phase, epochs in (("pretrain", 1), ("finetune", 2)):
        state = json.loads((run / "checkpoints" / phase / "state.json").read_text())
        assert state["complete"] is True
        assert state["epochs_done"] == epochs and len(state["history"]) == epochs
        assert (run / "checkpoints" / phase / "last.weights.h5").is_file()


def test_reported_map_is_the_saved_models_ap_on_the_test_split(tiny_run):
    # Independent of the pipeline's scoring and report code: the saved model
    # scores the test images, sklearn computes the AP of each class.
    import numpy as np
    from sklearn.metrics import average_precision_score

    import kdpvlpa.models  # noqa: F401  (registers the classes for loading)
    import keras
    from kdpvlpa.data import load_synthetic_lt
    from kdpvlpa.training import load_training_image

    train = load_synthetic_lt(tiny_run["data"], "train")
    test = load_synthetic_lt(tiny_run["data"], "test")
    model = keras.saving.load_model(tiny_run["run"] / "model.keras")
    size = model.preprocessor.image_size
    images = np.stack([load_training_image(p, size) for p in test.image_paths])
    scores = model.predict(images, verbose=0)
    labels = np.asarray(test.labels)
    ap = np.array([average_precision_score(labels[:, c], scores[:, c]) * 100
                   for c in range(labels.shape[1])])
    freq = np.asarray(train.class_freq)
    groups = {"total": freq >= 0, "head": freq >= 100,
              "medium": (freq >= 20) & (freq < 100), "tail": freq < 20}
    reported = tiny_run["metrics"]["map"]
    for group, members in groups.items():
        expected = ap[members].mean() if members.any() else None
        assert _same(reported[group], expected), (group, reported[group], expected)


def test_rerun_resumes_without_retraining(tiny_run):
    run = tiny_run["run"]
    files = [run / "checkpoints" / p / f for p in ("pretrain", "finetune")
             for f in ("state.json", "last.weights.h5")]
    before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}

    result = _invoke(*_fit_args(tiny_run["data"], run))
    assert result.exit_code == 0, result.output
    # Nothing was trained: no epoch ran, the checkpoints were not touched.
    assert "ms/step" not in result.output and "Epoch 1/" not in result.output
    assert {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files} == before
    again = _strict_json(run / "metrics.json")
    for key in ("map", "label_frequency_baseline"):
        for group in GROUPS:
            assert _same(again[key][group], tiny_run["metrics"][key][group]), (key, group)


def test_finetune_alone_needs_a_finished_phase_one(tiny_run, tmp_path):
    run = tmp_path / "run"
    result = _invoke(*_fit_args(tiny_run["data"], run), "--phase", "finetune")
    assert result.exit_code == 1 and "holds no phase-1 checkpoint" in result.output
    assert not run.exists()  # stopped before writing anything
    # A phase 1 that stopped half-way is not a starting point either.
    pretrain = run / "checkpoints" / "pretrain"
    pretrain.mkdir(parents=True)
    (run / "recipe.toml").write_bytes((tiny_run["run"] / "recipe.toml").read_bytes())
    (pretrain / "last.weights.h5").write_bytes(
        (tiny_run["run"] / "checkpoints" / "pretrain" / "last.weights.h5").read_bytes())
    (pretrain / "state.json").write_text(json.dumps(
        {"epochs_done": 1, "complete": False, "history": []}))
    result = _invoke(*_fit_args(tiny_run["data"], run), "--phase", "finetune")
    assert result.exit_code == 1 and "stopped after epoch 1" in result.output


def _copy_run(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    return run


def _snapshot(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_finetune_alone_starts_from_the_phase_one_weights(tiny_run, tmp_path):
    # Phase 1 done, phase 2 not started: `--phase finetune` must load phase 1's
    # weights and then train as the one-command run did (epochs are seeded).
    import shutil

    run = _copy_run(tiny_run, tmp_path)
    shutil.rmtree(run / "checkpoints" / "finetune")
    for name in ("model.keras", "metrics.json", "per_class_ap.csv", "per_class_ap.png"):
        (run / name).unlink()
    pretrain = _snapshot(run / "checkpoints" / "pretrain")
    result = _invoke(*_fit_args(tiny_run["data"], run), "--phase", "finetune")
    assert result.exit_code == 0, result.output
    assert "Phase 1" not in result.output and "Phase 2" in result.output
    assert _snapshot(run / "checkpoints" / "pretrain") == pretrain
    again = _strict_json(run / "metrics.json")
    for group in GROUPS:
        assert _same(again["map"][group], tiny_run["metrics"]["map"][group]), group


def test_pretrain_phase_on_a_finished_run_keeps_the_fine_tuned_model(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    before = _snapshot(run)
    result = _invoke(*_fit_args(tiny_run["data"], run), "--phase", "pretrain")
    assert result.exit_code == 1
    assert "would replace the fine-tuned model.keras" in result.output
    assert _snapshot(run) == before


def test_a_run_folder_is_used_by_one_fit_at_a_time(tiny_run, tmp_path):
    from kdpvlpa.utils.files import exclusive_lock

    run = _copy_run(tiny_run, tmp_path)
    before = _snapshot(run)
    with exclusive_lock(run / ".lock", RuntimeError, "held by the test"):
        result = _invoke(*_fit_args(tiny_run["data"], run))
    assert result.exit_code == 1
    assert f"Another `kdpvlpa fit` is using the run folder {run}" in result.output
    assert _snapshot(run) == before


def test_a_synthetic_set_another_run_holds_is_not_redrawn(tiny_run, tmp_path):
    import shutil

    from kdpvlpa.data import synthetic_lt_in_use

    data = tmp_path / "data"
    shutil.copytree(tiny_run["data"], data)
    before = _snapshot(data)
    # Another run with the tiny recipe (seed 42) is using the set.
    held = dict(num_classes=4, num_train=40, num_test=20, image_size=64, seed=42)
    with synthetic_lt_in_use(data, **held):
        result = _invoke(*_fit_args(data, tmp_path / "run43"), "--set", "seed=43")
        assert result.exit_code == 1
        assert f"The synthetic set in {data} is held with other settings" in result.output
        assert "--data-dir" in result.output
        assert not (tmp_path / "run43").exists()
        run = _copy_run(tiny_run, tmp_path)
        recipe = (run / "recipe.toml").read_text()
        (run / "recipe.toml").write_text(recipe.replace("seed = 42", "seed = 43"))
        result = _invoke("evaluate", "--run", run, "--data-dir", data)
        assert result.exit_code == 1 and "is held with other settings" in result.output
    assert _snapshot(data) == before


def test_one_folder_can_hold_the_synthetic_set_and_the_run(tmp_path):
    # The set's lock and the run folder's are different files.
    result = _invoke(*_fit_args(tmp_path / "both", tmp_path / "both"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "both" / "model.keras").is_file()


def test_checkpoints_without_their_recipe_are_not_resumed(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    (run / "recipe.toml").unlink()
    result = _invoke(*_fit_args(tiny_run["data"], run), "--set", "model.num_query_tokens=2")
    assert result.exit_code == 1 and "holds checkpoints but no recipe.toml" in result.output
    assert not (run / "recipe.toml").exists()


def test_interrupted_fit_says_how_to_resume(tmp_path, monkeypatch):
    from kdpvlpa.training import pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_recipe", interrupted)
    result = _invoke(*_fit_args(tmp_path / "data", tmp_path / "run"))
    assert result.exit_code == 130
    assert "Interrupted. Rerun the same command to resume" in result.output


def test_a_new_run_folder_refused_before_training_is_removed(tiny_run, tmp_path):
    run = tmp_path / "run"
    result = _invoke(*_fit_args(tiny_run["data"], run), "--set", "model.vision_preset=nothing")
    assert result.exit_code == 1 and "found neither as a folder" in result.output
    assert not run.exists()
    # A folder that existed before is not removed.
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    result = _invoke(*_fit_args(tiny_run["data"], run), "--set", "model.vision_preset=nothing")
    assert result.exit_code == 1
    assert (run / "notes.txt").read_text() == "mine"


def test_a_new_run_folder_is_kept_once_features_are_written(tiny_run, tmp_path,
                                                            monkeypatch):
    from kdpvlpa.training import trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train_phase", interrupted)
    run = tmp_path / "run"
    result = _invoke(*_fit_args(tiny_run["data"], run), "--cache-dir", run / "features")
    assert result.exit_code == 130
    assert list((run / "features").rglob("*.npy")), "the cached features were removed"


def test_fit_option_and_folder_errors_are_one_line(tmp_path):
    result = _invoke(*_fit_args(tmp_path / "data", tmp_path / "run"), "--no-cache",
                     "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 2 and "--cache-dir has no use with --no-cache" in result.output
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = _invoke(*_fit_args(tmp_path / "data", blocker / "run"))
    assert result.exit_code == 1
    assert f"Error: Not a directory: {blocker / 'run'}" in result.output, result.output


def test_a_corrupt_training_image_points_to_data_check(tiny_run, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_run["data"], data)
    broken = sorted((data / "images" / "train").iterdir())[3]
    broken.write_bytes(broken.read_bytes()[:100])
    result = _invoke(*_fit_args(data, tmp_path / "run"))
    assert result.exit_code == 1
    assert f"Cannot read image {broken}" in result.output
    assert ("`kdpvlpa data check --dataset NAME --data-dir DIR --verify-images` lists every "
            "unreadable image.") in result.output


def test_evaluate_reproduces_the_metrics(tiny_run):
    fit_files = {name: (tiny_run["run"] / name).read_bytes()
                 for name in ("metrics.json", "per_class_ap.csv", "per_class_ap.png")}
    result = _invoke("evaluate", "--run", tiny_run["run"], "--data-dir", tiny_run["data"])
    assert result.exit_code == 0, result.output
    assert "label-frequency baseline" in result.output
    assert f"{tiny_run['metrics']['map']['total']:.2f}" in result.output
    report = tiny_run["run"] / "evaluation"
    again = _strict_json(report / "metrics.json")
    for key in ("map", "label_frequency_baseline"):
        for group in GROUPS:
            assert _same(again[key][group], tiny_run["metrics"][key][group]), (key, group)
    # The recipe's name survives the round trip through the run's recipe.toml.
    assert again["recipe"] == tiny_run["metrics"]["recipe"] == "demo"
    assert (report / "per_class_ap.csv").read_bytes() == fit_files["per_class_ap.csv"]
    # fit's report is left as it was.
    for name, content in fit_files.items():
        assert (tiny_run["run"] / name).read_bytes() == content, name


def test_predict_top_labels_json_and_open_vocabulary(tiny_run):
    images = sorted((tiny_run["data"] / "images" / "test").iterdir())[:2]
    from kdpvlpa.data import load_synthetic_lt

    class_names = list(load_synthetic_lt(tiny_run["data"], "train").class_names)

    result = _invoke("predict", *images, "--model", tiny_run["run"], "--top", "2")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2
    for image, line in zip(images, lines):
        assert line.startswith(f"{image}: ")
        shown = re.findall(r"([^,:]+?) (\d\.\d{3})(?:,|$)", line.split(": ", 1)[1])
        assert len(shown) == 2 and all(name.strip() in class_names for name, _ in shown)
        assert float(shown[0][1]) >= float(shown[1][1])

    result = _invoke("predict", *images, "--model", tiny_run["run"] / "model.keras", "--json")
    assert result.exit_code == 0, result.output
    probabilities = json.loads(result.output)
    assert list(probabilities) == [str(image) for image in images]
    for per_class in probabilities.values():
        assert sorted(per_class) == sorted(class_names)
        assert all(0.0 <= p <= 1.0 and math.isfinite(p) for p in per_class.values())

    result = _invoke("predict", images[0], "--model", tiny_run["run"], "--json",
                     "--classes", "red circle,blue square")
    assert result.exit_code == 0, result.output
    (per_class,) = json.loads(result.output).values()
    assert list(per_class) == ["red circle", "blue square"]
    assert all(0.0 <= p <= 1.0 for p in per_class.values())


def test_predict_scores_an_image_as_evaluation_does(tiny_run, tmp_path):
    import numpy as np
    from PIL import Image

    import kdpvlpa.models  # noqa: F401  (registers the classes for loading)
    import keras
    from kdpvlpa.training import load_training_image

    # A photo-like image larger than the model's input and not square, so it
    # is cropped and resized.
    pixels = np.random.default_rng(3).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    result = _invoke("predict", path, "--model", tiny_run["run"], "--json")
    assert result.exit_code == 0, result.output
    (got,) = json.loads(result.output).values()

    model = keras.saving.load_model(tiny_run["run"] / "model.keras")
    size = model.preprocessor.image_size
    assert size < 90
    expected = model.predict(load_training_image(path, size)[None], verbose=0)[0]
    np.testing.assert_allclose([got[name] for name in model.class_names], expected,
                               rtol=1e-6, atol=1e-7)


def test_predict_reports_unreadable_images_after_the_others(tiny_run, tmp_path):
    images = sorted((tiny_run["data"] / "images" / "test").iterdir())[:2]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    missing = tmp_path / "missing.jpg"
    result = _invoke("predict", images[0], broken, missing, images[1], "--model",
                     tiny_run["run"], "--json")
    assert result.exit_code == 1
    assert list(json.loads(result.stdout)) == [str(images[0]), str(images[1])]
    assert f"Cannot read image {broken}" in result.stderr
    assert f"Image not found: {missing}" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--top", "0"], "--top"),
    (["--classes", "cat,,dog"], "an empty class name"),
    (["--classes", ""], "an empty class name"),
    (["--classes", "cat, dog,cat"], "cat appears more than once"),
])
def test_predict_refuses_bad_options(tiny_run, args, message):
    image = next((tiny_run["data"] / "images" / "test").iterdir())
    result = _invoke("predict", image, "--model", tiny_run["run"], *args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_predict_with_a_corrupt_model_file_says_so(tiny_run, tmp_path):
    image = next((tiny_run["data"] / "images" / "test").iterdir())
    cut = tmp_path / "cut.keras"
    cut.write_bytes((tiny_run["run"] / "model.keras").read_bytes()[:5000])
    result = _invoke("predict", image, "--model", cut)
    assert result.exit_code == 1
    assert f"{cut} is not a readable .keras file (corrupt or cut short)" in result.stderr


def test_predict_without_a_model_is_a_clean_error(tiny_run, tmp_path):
    image = next((tiny_run["data"] / "images" / "test").iterdir())
    result = _invoke("predict", image, "--model", tmp_path / "nothing")
    assert result.exit_code == 1
    assert "No trained model" in result.stderr and "kdpvlpa fit" in result.stderr


def test_caption_file_missing_images_stops_before_training(tiny_run, tmp_path):
    ids = json.loads((tiny_run["data"] / "synthetic_lt_train.json").read_text())["image_ids"]
    assert len(ids) == 40
    captions = tmp_path / "captions.jsonl"
    with captions.open("w") as f:
        for image_id in ids[:25]:
            record = {"image_id": image_id, "caption": "A red circle near a blue square.",
                      "raw_caption": "A <tail>red circle</tail> near a blue square.",
                      "status": "ok"}
            f.write(json.dumps(record) + "\n")
    run = tmp_path / "run"
    proc = _run(tmp_path, *_fit_args(tiny_run["data"], run), "--captions", captions)
    message = _assert_one_clean_error(proc)
    assert "no caption for 15 of 40 images" in message
    assert str(ids[25]) in message
    assert not (run / "checkpoints").exists()
    assert not (run / "model.keras").exists() and not (run / "metrics.json").exists()


# --- errors before any work ---------------------------------------------------


# What a script that imported torch would have cost: the data check comes first.
_NO_TORCH = ("import sys, runpy; sys.argv = ['kdpvlpa'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('kdpvlpa.cli', run_name='__main__')\n"
             "finally:\n    print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")


@pytest.mark.parametrize("recipe, dataset, needs, folder", [
    ("voc_lt", "VOC-LT", "VOCtrainval_11-May-2012.tar", "voc"),
    ("coco_lt", "COCO-LT", "train2017.zip", "coco"),
])
def test_fit_without_data_stops_at_the_data_check(tmp_path, recipe, dataset, needs, folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run(tmp_path, "fit", "--recipe", recipe, "--data-dir", empty, timeout=60)
    message = _assert_one_clean_error(proc)
    assert re.search(rf"{dataset} train: (\d+) of \1 images are missing", message), message
    assert needs in message and "download" in message
    assert str(empty) in message
    assert not (tmp_path / "runs").exists()  # no run folder either

    # Stopped before loading keras / torch (let alone a model). Without
    # --data-dir, the data is looked for where the docs put it.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    probe = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, "fit", "--recipe", recipe],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert probe.returncode != 0
    assert probe.stdout.strip().splitlines()[-1] == "NO-TORCH"
    assert os.path.join("data", folder, "") in probe.stderr, probe.stderr


def test_data_check_without_data(tmp_path):
    proc = _run(tmp_path, "data", "check", "--dataset", "voc_lt", "--data-dir", tmp_path / "none",
                timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "VOC-LT train: 1142 of 1142 images are missing" in proc.stderr
    assert "VOC-LT test: 4952 of 4952 images are missing" in proc.stderr
    assert "VOCtest_06-Nov-2007.tar" in proc.stderr
    assert "1142 missing" in proc.stdout


@pytest.mark.parametrize("args, expected", [
    (["--recipe", "nosuch"], ["Unknown recipe 'nosuch'", "demo", "voc_lt"]),
    (["--recipe", "demo", "--set", "finetune.epochs=abc"],
     ["finetune.epochs", "expected int", "'abc'"]),
    (["--recipe", "demo", "--set", "nosuch.key=1"], ["unknown section 'nosuch'"]),
    (["--recipe", "demo", "--set", "model.nosuch=1"], ["Unknown key 'model.nosuch'"]),
    (["--recipe", "demo", "--set", "finetune.epochs"], ["section.key=value"]),
    (["--recipe", "demo", "--set", "pretrain.batch_size=0"], ["pretrain.batch_size", ">= 1"]),
])
def test_bad_recipe_input_is_a_clean_error(tmp_path, args, expected):
    proc = _run(tmp_path, "fit", *args, "--data-dir", tmp_path / "data", timeout=60)
    message = _assert_one_clean_error(proc)
    for text in expected:
        assert text in message, message
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
