import json
import re

import numpy as np
import pytest

from kdpvlpa.data import CaptionFileError, load_caption_file
from kdpvlpa.losses import co_occurrence_matrix
from kdpvlpa.training import TrainingBatches, make_optimizer, train_phase
from kdpvlpa.training.trainer import warmup_steps_for

from training_helpers import tiny_model, weights_of


def _batches(model, dataset, labels=None, batch_size=16, seed=7):
    token_ids, mask = model.tokenize(dataset.captions)
    return TrainingBatches(token_ids, mask, image_paths=dataset.image_paths, image_size=64,
                           labels=labels, batch_size=batch_size, seed=seed)


def _finetune_args(dataset):
    return dict(class_freq=dataset.class_freq,
                co_occurrence=co_occurrence_matrix(dataset.labels))


class StopAfter(Exception):
    pass


def test_killed_run_resumes_to_the_same_weights(tmp_path, synthetic_train):
    import keras

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:  # after the checkpoint of epoch 2 was written
                raise StopAfter()

    args = {"learning_rate": 1e-3, "warmup_steps": 2}
    straight = tiny_model(synthetic_train.class_names)
    train_phase(straight, "finetune", _batches(straight, synthetic_train, synthetic_train.labels),
                3, args, tmp_path / "a", compile_args=_finetune_args(synthetic_train), verbose=0)

    killed = tiny_model(synthetic_train.class_names)
    with pytest.raises(StopAfter):
        train_phase(killed, "finetune", _batches(killed, synthetic_train, synthetic_train.labels),
                    3, args, tmp_path / "b", compile_args=_finetune_args(synthetic_train),
                    callbacks=[Kill()], verbose=0)
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["epochs_done"] == 2 and not state["complete"]

    resumed = tiny_model(synthetic_train.class_names)
    history = train_phase(resumed, "finetune",
                          _batches(resumed, synthetic_train, synthetic_train.labels), 3, args,
                          tmp_path / "b", compile_args=_finetune_args(synthetic_train), verbose=0)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for a, b in zip(weights_of(straight), weights_of(resumed)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert int(resumed.optimizer.iterations.numpy()) == int(straight.optimizer.iterations.numpy())


def test_run_killed_between_weights_and_state_resumes_to_the_same_weights(
        tmp_path, synthetic_train, monkeypatch):
    from kdpvlpa.training import trainer

    args = {"learning_rate": 1e-3, "warmup_steps": 2}
    straight = tiny_model(synthetic_train.class_names)
    train_phase(straight, "pretrain", _batches(straight, synthetic_train), 2, args,
                tmp_path / "a", verbose=0)

    # Killed after epoch 2's weights replaced the checkpoint but before
    # state.json said so: the weights are one epoch ahead of state.json.
    real_write = trainer._write_json_atomic
    calls = []

    def killed_on_second_write(path, obj):
        calls.append(path)
        if len(calls) == 2:
            raise StopAfter()
        real_write(path, obj)

    monkeypatch.setattr(trainer, "_write_json_atomic", killed_on_second_write)
    killed = tiny_model(synthetic_train.class_names)
    with pytest.raises(StopAfter):
        train_phase(killed, "pretrain", _batches(killed, synthetic_train), 2, args,
                    tmp_path / "b", verbose=0)
    monkeypatch.setattr(trainer, "_write_json_atomic", real_write)
    assert json.loads((tmp_path / "b" / "state.json").read_text())["epochs_done"] == 1

    resumed = tiny_model(synthetic_train.class_names)
    train_phase(resumed, "pretrain", _batches(resumed, synthetic_train), 2, args,
                tmp_path / "b", verbose=0)
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["epochs_done"] == 2 and state["complete"]
    assert int(resumed.optimizer.iterations.numpy()) == int(straight.optimizer.iterations.numpy())
    for a, b in zip(weights_of(straight), weights_of(resumed)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_a_run_stopped_inside_an_epoch_keeps_the_last_whole_epoch(tmp_path, synthetic_train):
    import keras

    class StopInSecondEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1:
                self.model.stop_training = True

    model = tiny_model(synthetic_train.class_names)
    train_phase(model, "pretrain", _batches(model, synthetic_train), 3,
                {"learning_rate": 1e-3}, tmp_path, callbacks=[StopInSecondEpoch()], verbose=0)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["epochs_done"] == 1 and [h["epoch"] for h in state["history"]] == [1]


def test_a_full_disk_stops_before_the_checkpoint_is_written(tmp_path, synthetic_train,
                                                             monkeypatch):
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    calls = []

    def disk_usage(path):  # room for the first checkpoint only
        calls.append(path)
        return usage(10**12, 0, 10**12 if len(calls) == 1 else 10**5)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    model = tiny_model(synthetic_train.class_names)
    with pytest.raises(OSError, match="Not enough disk space for a checkpoint") as error:
        train_phase(model, "pretrain", _batches(model, synthetic_train), 3,
                    {"learning_rate": 1e-3}, tmp_path, verbose=0)
    # The figure given is what the check asks for (weights, margin), not less
    # than what is free.
    needed, free = map(int, re.search(r"needs about (\d+) MiB, (\d+) MiB are free",
                                      str(error.value)).groups())
    assert needed >= 16 > free == 0
    assert len(calls) == 2
    assert json.loads((tmp_path / "state.json").read_text())["epochs_done"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.weights.h5", "state.json"]


def test_finished_phase_is_not_trained_again(tmp_path, synthetic_train):
    model = tiny_model(synthetic_train.class_names)
    first = train_phase(model, "pretrain", _batches(model, synthetic_train), 1,
                        {"learning_rate": 1e-3}, tmp_path, verbose=0)
    again = tiny_model(synthetic_train.class_names, seed=9)
    second = train_phase(again, "pretrain", _batches(again, synthetic_train), 1,
                         {"learning_rate": 1e-3}, tmp_path, verbose=0)
    assert first == second
    for a, b in zip(weights_of(model), weights_of(again)):
        np.testing.assert_array_equal(a, b)


def test_nan_loss_stops_the_run_naming_the_term(tmp_path, synthetic_train):
    model = tiny_model(synthetic_train.class_names)
    bad = co_occurrence_matrix(synthetic_train.labels)
    bad[0, 1] = np.nan  # only the COA term sees this
    batches = _batches(model, synthetic_train, synthetic_train.labels)
    with pytest.raises(FloatingPointError, match="coa"):
        train_phase(model, "finetune", batches, 2, {"learning_rate": 1e-3}, tmp_path,
                    compile_args=dict(class_freq=synthetic_train.class_freq, co_occurrence=bad),
                    verbose=0)
    # The run died in its first epoch: no checkpoint claims a finished epoch.
    assert not (tmp_path / "state.json").exists()


def test_labels_of_the_wrong_width_are_refused(synthetic_train):
    model = tiny_model(synthetic_train.class_names)
    wide = np.concatenate([synthetic_train.labels, synthetic_train.labels[:, :1]], axis=1)
    batches = _batches(model, synthetic_train, wide)
    model.compile(optimizer=make_optimizer(10), phase="finetune", **_finetune_args(synthetic_train))
    with pytest.raises(ValueError, match=r"\(batch, 6\)"):
        model.fit(batches, epochs=1, verbose=0)


def test_empty_training_set_is_refused():
    with pytest.raises(ValueError, match="empty"):
        TrainingBatches(np.zeros((0, 4), "int32"), np.zeros((0, 4), bool),
                        image_paths=[], image_size=64)


def test_inputs_that_disagree_on_length_are_refused(synthetic_train):
    with pytest.raises(ValueError, match="disagree"):
        TrainingBatches(np.zeros((3, 4), "int32"), np.ones((3, 4), bool),
                        image_paths=synthetic_train.image_paths[:2], image_size=64)


def test_caption_file_missing_images_is_refused(tmp_path, synthetic_train):
    path = tmp_path / "captions.jsonl"
    with path.open("w") as f:
        for image_id, caption in list(zip(synthetic_train.image_ids, synthetic_train.captions))[:5]:
            f.write(json.dumps({"image_id": image_id, "caption": caption,
                                "raw_caption": caption, "status": "valid"}) + "\n")
    with pytest.raises(CaptionFileError, match="miss"):
        load_caption_file(path, synthetic_train.image_ids)


def test_warmup_and_schedule():
    # METHOD.md: min(2,000 steps, 10 % of all steps).
    assert warmup_steps_for(36 * 30, 2000, 0.1) == 108
    assert warmup_steps_for(100_000, 2000, 0.1) == 2000
    optimizer = make_optimizer(100, learning_rate=1e-4, warmup_steps=2000, warmup_fraction=0.1)
    schedule = optimizer._learning_rate
    values = [float(np.asarray(schedule(step))) for step in (0, 5, 10, 55, 100)]
    assert values[0] == pytest.approx(0.0, abs=1e-12)
    assert values[1] == pytest.approx(0.5e-4, rel=1e-5)  # linear warm-up
    assert values[2] == pytest.approx(1e-4, rel=1e-5)  # peak after 10 steps
    assert values[3] == pytest.approx(0.5e-4, rel=1e-5)  # cosine half-way
    assert values[4] == pytest.approx(0.0, abs=1e-9)
    assert optimizer.weight_decay == pytest.approx(0.05) and optimizer.beta_1 == pytest.approx(0.9)


def test_run_folder_trained_on_other_captions_is_not_resumed(tmp_path):
    from kdpvlpa.training.pipeline import PipelineError, _check_same_captions

    ids, captions = ["a", "b"], ["a dog on a sofa.", "a cow in a field."]
    _check_same_captions(tmp_path, ids, captions)  # first run: records them
    (tmp_path / "checkpoints").mkdir()
    _check_same_captions(tmp_path, ids, list(captions))  # same captions: resumes
    with pytest.raises(PipelineError, match="trained on other captions"):
        _check_same_captions(tmp_path, ids, ["a dog on a sofa.", "a <tail>cow</tail>."])
    with pytest.raises(PipelineError, match="trained on other captions"):
        _check_same_captions(tmp_path, ["b", "a"], captions)


def _start_phase(run_dir, phase):
    """A run folder whose `phase` has begun checkpointing."""
    folder = run_dir / "checkpoints" / phase
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.json").write_text("{}")


def test_run_folder_with_other_settings_is_not_resumed(tmp_path):
    from kdpvlpa.recipes import load_recipe
    from kdpvlpa.training.pipeline import PipelineError, _check_same_recipe

    first = load_recipe("demo")
    first.save(tmp_path / "recipe.toml")
    _start_phase(tmp_path, "finetune")
    _check_same_recipe(tmp_path, load_recipe("demo", overrides=["eval.batch_size=8"]))
    with pytest.raises(PipelineError, match=r"finetune.epochs: 10 -> 3"):
        _check_same_recipe(tmp_path, load_recipe("demo", overrides=["finetune.epochs=3"]))
    # The message gives the overrides that resume the folder, and they do.
    with pytest.raises(PipelineError) as error:
        _check_same_recipe(tmp_path, load_recipe("demo", overrides=[
            "data.horizontal_flip=true", "model.vision_preset=my models/clip"]))
    assert ("(--set data.horizontal_flip=false --set model.vision_preset=tiny_random_vit)"
            in str(error.value))
    _check_same_recipe(tmp_path, load_recipe("demo", overrides=[
        "data.horizontal_flip=true", "model.vision_preset=my models/clip",
        "data.horizontal_flip=false", "model.vision_preset=tiny_random_vit"]))


def test_a_run_fine_tuned_without_pretraining_refuses_pretraining_now(tmp_path):
    # Phase 1 never ran (0 epochs, no checkpoint), but phase 2's weights were
    # trained without it: more pretraining would be trained, then overwritten.
    from kdpvlpa.recipes import load_recipe
    from kdpvlpa.training.pipeline import PipelineError, _check_same_recipe

    load_recipe("demo", ["pretrain.epochs=0"]).save(tmp_path / "recipe.toml")
    _start_phase(tmp_path, "finetune")
    with pytest.raises(PipelineError, match=r"pretrain.epochs: 0 -> 3.*"
                       "rerun with the folder's values \\(--set pretrain.epochs=0\\)"):
        _check_same_recipe(tmp_path, load_recipe("demo", ["pretrain.epochs=3"]))
    _check_same_recipe(tmp_path, load_recipe("demo", ["pretrain.epochs=0"]))
    # Settings of the phase that never ran change nothing.
    _check_same_recipe(tmp_path, load_recipe("demo", ["pretrain.epochs=0",
                                                      "pretrain.learning_rate=1e-3"]))


def test_a_data_dir_under_home_is_read_as_the_loaders_read_it(tmp_path, monkeypatch):
    # `--data-dir '~/data'` (quoted, so the shell left it): the set is drawn
    # and loaded under $HOME, so the split size and captions come from there.
    from kdpvlpa.data import make_synthetic_lt
    from kdpvlpa.recipes import load_recipe
    from kdpvlpa.training.pipeline import template_captions, train_split_size

    monkeypatch.setenv("HOME", str(tmp_path))
    make_synthetic_lt(tmp_path / "data", num_classes=4, num_train=30, num_test=10,
                      image_size=32)
    recipe = load_recipe("demo", ["data.num_classes=4", "data.num_train=30",
                                  "data.num_test=10", "data.image_size=32"])
    assert train_split_size(recipe, "~/data") == 30
    path = template_captions("~/data", tmp_path / "captions.jsonl")
    assert len(path.read_text().splitlines()) == 30


def test_demo_template_captions_always_match_the_split(synthetic_root, tmp_path):
    import llm_gen
    from kdpvlpa.training.pipeline import template_captions

    path = template_captions(synthetic_root, tmp_path / "captions.template.jsonl")
    first = path.read_text()
    records, _ = llm_gen.read_records(path)
    assert {r["model"] for r in records} == {llm_gen.TEMPLATE_VERSION}
    # A file from an older template version (as a run folder made by an
    # earlier kdpvlpa holds) is made again rather than refused on resume.
    path.write_text(first.replace(f'"{llm_gen.TEMPLATE_VERSION}"', '"template-v0"'))
    template_captions(synthetic_root, path)
    assert path.read_text() == first
    # Captions of another synthetic set (a reused run folder) are replaced too.
    path.write_text(first.replace("circle", "square"))
    template_captions(synthetic_root, path)
    assert path.read_text() == first
    assert not list(tmp_path.glob(".tmp-*"))


def test_model_settings_that_do_not_fit_the_checkpoints_name_the_key():
    from kdpvlpa.recipes import load_recipe
    from kdpvlpa.training.pipeline import PipelineError, build_model

    tiny = ["model.vision_preset=tiny_random_vit", "model.qformer_preset=tiny_random_bert",
            "model.num_query_tokens=4", "model.sequence_length=24"]
    recipe = load_recipe("voc_lt", overrides=tiny + ["data.image_size=128"])
    with pytest.raises(PipelineError, match="data.image_size is 128, but the encoder "
                                            "'tiny_random_vit' takes 64 px"):
        build_model(recipe, ["dog", "cat"])
    recipe = load_recipe("voc_lt", overrides=tiny + ["data.image_size=64",
                                                     "model.sequence_length=100000"])
    with pytest.raises(PipelineError, match=r"The recipe's \[model\] checkpoints: "
                                            "`sequence_length` must be between"):
        build_model(recipe, ["dog", "cat"])


def test_the_recipe_s_dtype_reaches_the_model():
    from kdpvlpa.recipes import load_recipe
    from kdpvlpa.training.pipeline import build_model

    for dtype in ("float32", "mixed_bfloat16"):
        model = build_model(load_recipe("demo", [f"model.dtype={dtype}"]), ["dog", "cat"])
        assert {p.dtype_policy.name for p in (model, model.image_encoder, model.qformer)} == {dtype}


def test_evaluation_scores_equal_model_predict_under_mixed_bfloat16(tmp_path):
    # Keras' predict runs without autograd, so a bfloat16 policy keeps its
    # bfloat16 attention; evaluation must score images the same way.
    from types import SimpleNamespace

    from PIL import Image

    from kdpvlpa.training import load_training_image
    from kdpvlpa.training.pipeline import predict_scores

    model = tiny_model(["dog", "cat", "car"], dtype="mixed_bfloat16")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
    dataset = SimpleNamespace(image_paths=paths, num_images=len(paths))
    scores = predict_scores(model, dataset, batch_size=2, verbose=False)
    model.invalidate_class_embeddings()
    images = np.stack([load_training_image(p, 64) for p in paths])
    np.testing.assert_array_equal(scores, model.predict(images, batch_size=2, verbose=0))


def test_the_real_benchmarks_resize_whole_images_as_lmpt_and_dbl():
    from kdpvlpa.recipes import load_recipe
    from kdpvlpa.training.pipeline import build_model

    tiny = ["model.vision_preset=tiny_random_vit", "model.qformer_preset=tiny_random_bert",
            "model.num_query_tokens=4", "model.sequence_length=24", "data.image_size=64"]
    for name, crop in (("voc_lt", False), ("coco_lt", False), ("demo", True)):
        recipe = load_recipe(name, overrides=tiny)
        assert recipe.data.crop_to_aspect_ratio is crop
        assert build_model(recipe, ["dog", "cat"]).preprocessor.crop_to_aspect_ratio is crop


def test_fine_tuning_settings_may_change_until_phase_2_starts(tmp_path):
    from kdpvlpa.recipes import load_recipe
    from kdpvlpa.training.pipeline import PipelineError, _check_same_recipe

    recipe = load_recipe("demo")
    recipe.save(tmp_path / "recipe.toml")
    _start_phase(tmp_path, "pretrain")
    _check_same_recipe(tmp_path, load_recipe("demo", ["finetune.learning_rate=1e-3"]))
    with pytest.raises(PipelineError, match="pretrain.learning_rate"):
        _check_same_recipe(tmp_path, load_recipe("demo", ["pretrain.learning_rate=1e-3"]))
    _start_phase(tmp_path, "finetune")
    with pytest.raises(PipelineError, match="finetune.learning_rate"):
        _check_same_recipe(tmp_path, load_recipe("demo", ["finetune.learning_rate=1e-3"]))


def test_missing_checkpoint_hint_names_the_models_folder(tmp_path):
    from kdpvlpa.training.pipeline import PipelineError, resolve_preset

    models = tmp_path / "my_models"
    with pytest.raises(PipelineError) as error:
        resolve_preset("clip-vit-base-patch16", "vision_preset", models)
    assert f"--local-dir {models}/clip-vit-base-patch16" in str(error.value)
    (models / "clip-vit-base-patch16").mkdir(parents=True)
    assert resolve_preset("clip-vit-base-patch16", "vision_preset", models) == str(
        models / "clip-vit-base-patch16")
    # The image encoder may be one file (OpenAI's ViT-B-16.pt); the Q-Former
    # needs its folder, with the tokenizer.
    (models / "ViT-B-16.pt").write_bytes(b"")
    assert resolve_preset("ViT-B-16.pt", "vision_preset", models) == str(models / "ViT-B-16.pt")
    with pytest.raises(PipelineError, match="found neither as a folder"):
        resolve_preset("ViT-B-16.pt", "qformer_preset", models)


def test_the_per_class_chart_legend_has_the_group_colours(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.colors import to_hex

    from kdpvlpa.training import pipeline

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    table = pd.DataFrame({"class": ["a", "b", "c"], "group": ["head", "medium", "tail"],
                          "ap": [90.0, 50.0, 10.0]})
    ours = {"total": 50.0, "head": 90.0, "medium": 50.0, "tail": 10.0}
    pipeline._plot(tmp_path / "chart.png", table, ours, None, "synthetic")
    (figure,) = figures
    legend = figure.axes[0].get_legend()
    got = {t.get_text(): to_hex(h.get_facecolor()) for t, h in
           zip(legend.get_texts(), legend.legend_handles)}
    assert got == {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#2ca02c"}
    bars = {to_hex(p.get_facecolor()) for p in figure.axes[0].patches}
    assert bars == set(got.values())
