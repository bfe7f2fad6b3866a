import dataclasses
import re

import pytest

import kdpvlpa
from kdpvlpa.recipes import (
    Recipe,
    RecipeError,
    available_recipes,
    load_recipe,
    load_recipe_text,
    parse_override,
    saved_recipe_name,
)


def test_shipped_recipes_load():
    assert set(available_recipes()) >= {"voc_lt", "coco_lt", "demo"}
    voc = load_recipe("voc_lt")
    assert voc.name == "voc_lt" and voc.data.dataset == "voc_lt"
    # Paper values (METHOD.md "Training defaults").
    assert (voc.seed, voc.model.num_query_tokens, voc.pretrain.epochs) == (42, 32, 30)
    assert (voc.pretrain.learning_rate, voc.pretrain.weight_decay) == (1e-4, 0.05)
    assert (voc.pretrain.warmup_steps, voc.pretrain.warmup_fraction) == (2000, 0.1)
    assert voc.pretrain.batch_size == 32 and voc.finetune.classification_loss == "bce"
    assert load_recipe("coco_lt").data.dataset == "coco_lt"
    demo = load_recipe("demo")
    assert demo.data.dataset == "synthetic" and demo.data.image_size == 64
    assert demo.model.vision_preset == "tiny_random_vit" and demo.model.qformer_preset == "minilm"
    assert demo.data.num_classes == 12 and demo.model.num_query_tokens < 32


def test_every_recipe_value_is_explained():
    # Each assignment line carries a comment saying where the value came from.
    for name in available_recipes():
        text = (kdpvlpa.recipes.recipes_dir() / f"{name}.toml").read_text()
        for line in text.splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key = line.split("=")[0].strip()
                if key != "dataset":
                    assert "#" in line, f"{name}.toml: {key} has no source comment"


def test_frozen_and_round_trip(tmp_path):
    recipe = load_recipe("demo")
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.finetune.epochs = 3
    assert load_recipe_text(recipe.to_toml(), name="demo") == recipe
    path = recipe.save(tmp_path / "run" / "resolved.toml")  # creates run/
    # A file is named by its stem; the first line keeps the saved name.
    assert load_recipe(path) == dataclasses.replace(recipe, name="resolved")
    assert saved_recipe_name(path) == "demo"
    quoted = dataclasses.replace(recipe, name="bob's run").save(tmp_path / "q.toml")
    assert saved_recipe_name(quoted) == "bob's run"
    plain = tmp_path / "mine.toml"
    plain.write_text(path.read_text().split("\n", 1)[1])
    assert saved_recipe_name(plain) is None


def test_recipe_files_in_other_encodings_or_broken_name_the_file(tmp_path):
    text = load_recipe("demo").to_toml()
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert load_recipe(bom) == dataclasses.replace(load_recipe("demo"), name="bom")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(text.encode("utf-8") + b"# caf\xe9\n")
    with pytest.raises(RecipeError, match=r"latin.toml is not UTF-8 text: byte 0xe9"):
        load_recipe(latin)
    broken = tmp_path / "run" / "recipe.toml"
    broken.parent.mkdir()
    broken.write_text(text[: len(text) // 2] + "\n[model\n")
    with pytest.raises(RecipeError, match=rf"not valid TOML.*\(file {re.escape(str(broken))}\)"):
        load_recipe(broken)
    # An error in an override is not the file's.
    broken.write_text(text)
    with pytest.raises(RecipeError, match=r"data.num_classes must be <= 144, got 999\.$"):
        load_recipe(broken, overrides=["data.num_classes=999"])


def test_defaults_live_in_the_dataclass():
    recipe = load_recipe_text("[model]\nnum_query_tokens = 16\n")
    assert recipe.model.num_query_tokens == 16
    assert recipe.finetune == Recipe().finetune


def test_unknown_keys_name_the_key_and_list_valid_ones():
    with pytest.raises(RecipeError, match=r"Unknown key 'data.batch'.*Valid keys in \[data\]: dataset, image_size"):
        load_recipe_text("[data]\nbatch = 3\n")
    with pytest.raises(RecipeError, match="Unknown key 'optimizer'.*sections: data, model"):
        load_recipe_text("[optimizer]\nlr = 1\n")
    with pytest.raises(RecipeError, match="Unknown key 'name'"):
        load_recipe_text("name = 'x'\n")


def test_wrong_types_name_key_expected_and_received():
    with pytest.raises(RecipeError, match="pretrain.epochs: expected int, got str '30'"):
        load_recipe_text("[pretrain]\nepochs = '30'\n", name="mine")
    with pytest.raises(RecipeError, match="Recipe 'mine'"):
        load_recipe_text("[pretrain]\nepochs = '30'\n", name="mine")
    with pytest.raises(RecipeError, match="data.horizontal_flip: expected bool, got int 1"):
        load_recipe_text("[data]\nhorizontal_flip = 1\n")
    with pytest.raises(RecipeError, match="pretrain.epochs: expected int, got float 2.5"):
        load_recipe_text("[pretrain]\nepochs = 2.5\n")
    with pytest.raises(RecipeError, match=r"\[model\] must be a table"):
        load_recipe_text("model = 3\n")
    # An int where a float is expected is fine (TOML "lambda_dqr = 1").
    assert load_recipe_text("[finetune]\nlambda_dqr = 2\n").finetune.lambda_dqr == 2.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("pretrain.epochs=-1", "pretrain.epochs must be >= 0"),
        ("finetune.batch_size=0", "finetune.batch_size must be >= 1"),
        ("pretrain.learning_rate=0", "pretrain.learning_rate must be > 0"),
        ("finetune.learning_rate=-1e-4", "finetune.learning_rate must be > 0"),
        ("data.dataset=imagenet", "data.dataset must be one of voc_lt, coco_lt, synthetic"),
        ("finetune.classification_loss=focal", "classification_loss must be one of bce, asymmetric"),
        ("model.dtype=float16", "model.dtype must be one of float32, mixed_bfloat16, got 'float16'"),
        ("data.num_classes=5", "applies only to dataset = 'synthetic'"),
        ("pretrain.warmup_fraction=1.5", r"warmup_fraction must be in \[0, 1\]"),
        ("pretrain.epochs=abc", "pretrain.epochs: expected int, got str 'abc'"),
        ("data.horizontal_flip=True", "lower case: true / false"),
        ("model.depth=3", "Unknown key 'model.depth'"),
        ("trainer.epochs=3", "unknown section 'trainer'"),
        ("epochs", "not of the form section.key=value"),
        ("a.b.c=1", "must be section.key"),
        ("data=1", "'data' is a section"),
        ("model.num_query_tokens=[1, 2]", "one scalar value"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("voc_lt", overrides=[override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.num_classes=1", r"data.num_classes must be >= 2"),
        ("data.num_classes=145", r"data.num_classes must be <= 144"),
        ("data.num_train=9", r"data.num_train must be >= 10"),
    ],
)
def test_bad_synthetic_sizes_are_refused_when_the_recipe_loads(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("demo", overrides=[override])
    load_recipe("demo", overrides=["data.num_classes=144"])


def test_overrides_use_toml_values():
    recipe = load_recipe("voc_lt", overrides=[
        "finetune.epochs=5", "pretrain.learning_rate=2e-4", "data.horizontal_flip=false",
        "model.vision_preset=/models/clip-vit-base-patch16", 'model.qformer_preset="minilm"',
        "seed=7", "data.dataset = coco_lt",
    ])
    assert recipe.finetune.epochs == 5 and recipe.pretrain.learning_rate == 2e-4
    assert recipe.data.horizontal_flip is False and recipe.seed == 7
    assert recipe.model.vision_preset == "/models/clip-vit-base-patch16"
    assert recipe.model.qformer_preset == "minilm" and recipe.data.dataset == "coco_lt"
    assert parse_override("eval.batch_size=8") == ("eval", "batch_size", 8)


def test_names_paths_and_files(tmp_path, monkeypatch):
    with pytest.raises(RecipeError, match="Unknown recipe 'vocc'. Available: coco_lt, demo, voc_lt"):
        load_recipe("vocc")
    with pytest.raises(RecipeError, match="Recipe file not found"):
        load_recipe(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\n")
    with pytest.raises(RecipeError, match="Recipe 'bad' is not valid TOML"):
        load_recipe(str(bad))
    package = tmp_path / "pkg" / "kdpvlpa"
    monkeypatch.setattr(kdpvlpa, "__file__", str(package / "__init__.py"))
    with pytest.raises(RecipeError, match=r"No recipes folder: neither .*recipe_files "
                                          r"\(an installed wheel\) nor .*recipes \(a source"):
        load_recipe("demo")
    # A source checkout's recipes/, and an installed wheel's copy before it.
    checkout, wheel = package.parent / "recipes", package / "recipe_files"
    for folder, name in ((checkout, "mine"), (wheel, "packaged")):
        folder.mkdir(parents=True)
        (folder / f"{name}.toml").write_text('[model]\nqformer_preset = "minilm"\n')
        assert available_recipes() == [name]
        assert load_recipe(name).name == name


@pytest.mark.parametrize("override, message", [
    ("seed=5000000", "seed must be in [0, 4294966]"),
    ("pretrain.learning_rate=inf", "pretrain.learning_rate must be finite"),
    ("finetune.beta=inf", "finetune.beta must be finite"),
])
def test_values_that_would_fail_late_are_refused_when_loading(override, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe("demo", overrides=[override])
