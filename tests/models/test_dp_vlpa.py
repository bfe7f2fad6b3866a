"""Tests of the DPVLPA recognizer on the tiny no-file configuration.

The reference values are computed here from the model's parts with NumPy
(METHOD.md, "Model") or with PIL, never by calling the code under test twice.
"""

import numpy as np
import pytest
import torch

import kdpvlpa  # noqa: F401  (selects the torch backend before keras)
import keras
from keras import ops
from PIL import Image

from kdpvlpa.losses import co_occurrence_matrix
from kdpvlpa.models import CLIPVisionEncoder, DPVLPA, QFormerBackbone
from kdpvlpa.models.dp_vlpa.dp_vlpa_image_preprocessor import CLIP_MEAN, CLIP_STD
from kdpvlpa.models.qformer.convert_qformer import load_qformer_tokenizer

CLASS_NAMES = ["dog", "cat", "potted plant"]
TINY_IMAGE_SIZE = 64  # the tiny_random_vit resolution


def _tiny_model(class_names=CLASS_NAMES, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    return DPVLPA.from_presets(
        "tiny_random_vit", "tiny_random_bert", class_names, num_query_tokens=4,
        projection_dim=16, sequence_length=24, **kwargs,
    )


def _images(n=3, height=50, width=70, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, height, width, 3)).astype("uint8")


def _np(x):
    return ops.convert_to_numpy(x)


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _hand_class_embeddings(model, names):
    """`norm(text_proj(CLS(text("a photo of a {name}."))))` from the parts."""
    token_ids, padding_mask = model.tokenize([f"a photo of a {name}." for name in names])
    sequence = model.qformer.encode_text(token_ids, padding_mask)
    return _normalize(_np(model.text_proj(sequence))[:, 0])


def _hand_predict(model, images, names):
    """`sigmoid(a · max_k sim(q̂_k, ê_c) + b)` with NumPy for the max and sigmoid."""
    queries = _np(model.image_queries(model.encode_images(images)))
    class_embeddings = _hand_class_embeddings(model, names)
    similarity = np.einsum("bkp,cp->bkc", queries, class_embeddings)
    a = float(_np(model.logit_scale))
    b = float(_np(model.logit_bias))
    return _sigmoid(a * similarity.max(axis=1) + b)


def _caption_batch(model, n=4):
    captions = ["a dog on a sofa", "a cat and a dog", "a potted plant", "a cat by a plant"]
    token_ids, padding_mask = model.tokenize(captions[:n])
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]], "float32")[:n]
    x = {"images": _images(n, 64, 64, seed=1), "token_ids": token_ids,
         "padding_mask": padding_mask}
    return x, labels


def _compile_finetune(model, labels, optimizer=None):
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(learning_rate=1e-2),
        phase="finetune",
        class_freq=labels.sum(0),
        co_occurrence=co_occurrence_matrix(labels),
    )


def _snapshot(weights):
    return [np.array(_np(w)) for w in weights]


def _changed(before, weight):
    return not np.array_equal(before, _np(weight))


# ----------------------------------------------------------------------
# Building and predicting
# ----------------------------------------------------------------------
def test_tiny_model_builds_without_files_and_predicts_probabilities():
    model = _tiny_model()
    assert model.preprocessor.image_size == TINY_IMAGE_SIZE
    images = _images(3, 50, 70)  # not the encoder's size, not square
    probabilities = model.predict(images, verbose=0)
    assert isinstance(probabilities, np.ndarray)
    assert probabilities.shape == (3, len(CLASS_NAMES))
    assert np.issubdtype(probabilities.dtype, np.floating)
    assert np.all(np.isfinite(probabilities))
    assert np.all((probabilities > 0) & (probabilities < 1))
    # Different images give different outputs (the images reach the model).
    assert not np.allclose(probabilities[0], probabilities[1])

    floats = np.random.RandomState(3).uniform(0, 255, (2, 50, 70, 3)).astype("float32")
    float_probabilities = model.predict(floats, verbose=0)
    assert float_probabilities.shape == (2, len(CLASS_NAMES))
    assert np.all((float_probabilities > 0) & (float_probabilities < 1))

    # uint8 and the same values as float32 are the same images.
    np.testing.assert_array_equal(
        model.predict(images.astype("float32"), verbose=0), probabilities
    )


def test_prediction_equals_method_formula():
    model = _tiny_model()
    # Non-default scale and bias, so both enter the comparison.
    model.logit_scale.assign(7.5)
    model.logit_bias.assign(-0.4)
    images = _images(3, 50, 70, seed=2)

    queries = _np(model.image_queries(model.encode_images(images)))
    assert queries.shape == (3, 4, 16)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=-1), 1.0, atol=1e-5)
    # q̂ = norm(vision_proj(Q-Former queries)) on the layer-normed encoder tokens.
    features = model.encode_images(images)
    raw = _np(model.vision_proj(model.qformer.encode_queries(model.vision_layer_norm(features))))
    np.testing.assert_allclose(queries, _normalize(raw), atol=1e-6)

    # The text [CLS] through encode_text is the same as through the parts.
    token_ids, padding_mask = model.tokenize(["a photo of a dog."])
    cls, tokens = model.encode_text(token_ids, padding_mask)
    np.testing.assert_allclose(
        _np(cls), _hand_class_embeddings(model, ["dog"]), atol=1e-6
    )
    assert tuple(tokens.shape) == (1, 24, 16)

    np.testing.assert_allclose(
        _np(model.class_embeddings()), _hand_class_embeddings(model, CLASS_NAMES), atol=1e-6
    )
    expected = _hand_predict(model, images, CLASS_NAMES)
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-6)
    logits = _np(model(images)["logits"])
    np.testing.assert_allclose(_sigmoid(logits), expected, atol=1e-6)


# ----------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------
def _pil_reference(image, size):
    """Centre square crop, PIL bicubic resize (per channel, float), CLIP mean/std."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = image[top : top + side, left : left + side].astype("float32")
    if side != size:
        crop = np.stack(
            [np.asarray(Image.fromarray(crop[..., c], mode="F").resize((size, size), Image.BICUBIC))
             for c in range(3)],
            axis=-1,
        )
    return (crop / 255.0 - np.array(CLIP_MEAN, "float32")) / np.array(CLIP_STD, "float32")


def test_preprocessing_of_right_size_image_is_clip_normalisation():
    model = _tiny_model()
    images = _images(2, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, seed=4)
    got = _np(model.preprocessor(images))
    expected = np.stack([_pil_reference(image, TINY_IMAGE_SIZE) for image in images])
    assert got.shape == (2, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert model.image_mean == pytest.approx(list(CLIP_MEAN))
    assert model.image_std == pytest.approx(list(CLIP_STD))


@pytest.mark.parametrize("height,width", [(96, 128), (128, 80), (40, 60)])
def test_preprocessing_crops_centre_and_resizes_like_pil_bicubic(height, width):
    model = _tiny_model()
    # Noise is the hard case: without antialiasing a downscale aliases and
    # departs from CLIP's own PIL pipeline (and from the training loader).
    noise = np.random.RandomState(5).randint(0, 256, (height, width, 3)).astype("uint8")
    got = _np(model.preprocessor(noise[None]))[0]
    assert got.shape == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)
    np.testing.assert_allclose(got, _pil_reference(noise, TINY_IMAGE_SIZE), atol=2e-3)


def _banded_image():
    """A wide image: red side bands outside the central square, blue inside;
    and the normalised red and blue."""
    image = np.zeros((80, 160, 3), "uint8")
    image[:, :, 2] = 255
    image[:, :40] = (255, 0, 0)
    image[:, 120:] = (255, 0, 0)
    red = (np.array([1.0, 0.0, 0.0]) - CLIP_MEAN) / CLIP_STD
    blue = (np.array([0.0, 0.0, 1.0]) - CLIP_MEAN) / CLIP_STD
    return image, red, blue


def test_preprocessing_keeps_the_centre_and_drops_the_sides():
    model = _tiny_model()
    image, _, blue = _banded_image()
    got = _np(model.preprocessor(image[None]))[0]
    np.testing.assert_allclose(got, np.broadcast_to(blue, got.shape), atol=1e-4)


def test_preprocessing_can_resize_the_whole_image_and_keeps_that_through_saving(tmp_path):
    # As LMPT and DBL: the side bands stay in view, squeezed.
    model = _tiny_model(crop_to_aspect_ratio=False)
    image, red, blue = _banded_image()
    got = _np(model.preprocessor(image[None]))[0]
    side = TINY_IMAGE_SIZE // 4
    np.testing.assert_allclose(got[:, : side - 2], np.broadcast_to(red, got[:, : side - 2].shape),
                               atol=1e-4)
    np.testing.assert_allclose(got[:, side + 2 : -side - 2],
                               np.broadcast_to(blue, got[:, side + 2 : -side - 2].shape), atol=1e-4)
    # Noise: close to PIL's bicubic on the whole image, as the training loader.
    noise = np.random.RandomState(5).randint(0, 256, (96, 128, 3)).astype("uint8")
    reference = np.stack(
        [np.asarray(Image.fromarray(noise[..., c].astype("float32"), mode="F").resize(
            (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), Image.BICUBIC)) for c in range(3)], axis=-1)
    reference = (reference / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(_np(model.preprocessor(noise[None]))[0], reference, atol=2e-3)
    # The choice is part of the model; the default (CLIP's crop) writes no key.
    assert "crop_to_aspect_ratio" not in _tiny_model().get_config()
    path = tmp_path / "whole.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.preprocessor.crop_to_aspect_ratio is False
    np.testing.assert_allclose(restored.predict(noise[None], verbose=0),
                               model.predict(noise[None], verbose=0), atol=1e-6)


# ----------------------------------------------------------------------
# Serialization
# ----------------------------------------------------------------------
def test_keras_save_and_load_model_give_identical_predictions(tmp_path):
    model = _tiny_model()
    model.set_class_names(["horse", "car", "dining table", "tv monitor"])
    model.logit_bias.assign(0.25)
    images = _images(2, 50, 70, seed=6)
    expected = model.predict(images, verbose=0)

    path = tmp_path / "dp_vlpa.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, DPVLPA)
    assert restored.class_names == ["horse", "car", "dining table", "tv monitor"]
    assert restored.get_config() == model.get_config()
    assert float(_np(restored.logit_bias)) == 0.25
    got = restored.predict(images, verbose=0)
    assert got.shape == (2, 4)
    assert np.max(np.abs(got - expected)) == 0


def test_config_round_trip_and_weight_copy():
    model = _tiny_model(prompt_template="a picture of a {}.", temperature=0.05)
    config = model.get_config()
    assert config["class_names"] == CLASS_NAMES
    assert config["prompt_template"] == "a picture of a {}."
    assert config["temperature"] == 0.05

    keras.utils.set_random_seed(123)
    clone = DPVLPA.from_config(config)
    assert clone.get_config() == config
    assert clone.image_encoder.feature_layer == model.image_encoder.feature_layer
    assert clone.qformer.num_query_tokens == 4

    images = _images(2, 50, 70, seed=7)
    expected = model.predict(images, verbose=0)
    # Freshly initialised weights differ; the clone has cached its class
    # embeddings by now, and copying the weights must not leave them stale.
    assert not np.allclose(clone.predict(images, verbose=0), expected)
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone.predict(images, verbose=0), expected)


def _trainable_paths(model):
    return sorted(v.path for v in model.trainable_weights)


def test_layers_frozen_by_hand_stay_frozen_after_save_load_and_clone(tmp_path):
    model = _tiny_model()
    all_paths = _trainable_paths(model)
    model.vision_proj.trainable = False
    model.qformer.transformer_layers[0].trainable = False
    frozen_paths = _trainable_paths(model)
    assert len(frozen_paths) < len(all_paths) - 2
    assert not any("vision_proj" in p for p in frozen_paths)

    path = tmp_path / "frozen.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert _trainable_paths(restored) == frozen_paths
    assert not restored.vision_proj.trainable
    assert not restored.qformer.transformer_layers[0].trainable
    assert restored.qformer.transformer_layers[1].trainable
    assert _trainable_paths(keras.models.clone_model(model)) == frozen_paths

    # A whole frozen Q-Former and a whole frozen model are kept as well.
    qformer_config = keras.saving.serialize_keras_object(model.qformer)
    model.qformer.trainable = False
    assert not keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(model.qformer)
    ).trainable
    assert keras.saving.deserialize_keras_object(qformer_config).trainable
    model.trainable = False
    model.save(path)
    restored = keras.saving.load_model(path)
    assert not restored.trainable and restored.trainable_weights == []


def test_unknown_frozen_layer_in_a_config_is_refused():
    config = _tiny_model().get_config()
    config["frozen_layers"] = ["no_such_layer"]
    with pytest.raises(ValueError, match="no_such_layer"):
        DPVLPA.from_config(config)


def test_unfreezing_the_model_keeps_the_encoder_and_the_phase_flags():
    model = _tiny_model()
    model.compile(optimizer="adamw", phase="pretrain")
    expected = _trainable_paths(model)
    assert not any(p.endswith("logit_scale") for p in expected)

    model.trainable = False
    assert model.trainable_weights == []
    model.trainable = True
    assert not model.image_encoder.trainable
    assert _trainable_paths(model) == expected

    model.compile(
        optimizer="adamw", phase="finetune", class_freq=[5, 3, 1],
        co_occurrence=co_occurrence_matrix(np.eye(3, dtype="float32")),
    )
    assert [p for p in _trainable_paths(model) if p not in expected] == sorted(
        p for p in _trainable_paths(model) if p.endswith(("logit_scale", "logit_bias"))
    )
    assert not _tiny_model(trainable=False).trainable_weights


def test_compile_refuses_an_unfrozen_image_encoder():
    model = _tiny_model()
    model.image_encoder.trainable = True
    with pytest.raises(ValueError, match="image_encoder.trainable"):
        model.compile(optimizer="adamw", phase="pretrain")


# ----------------------------------------------------------------------
# Vocabulary and class-embedding cache
# ----------------------------------------------------------------------
def test_set_class_names_changes_the_vocabulary():
    model = _tiny_model()
    images = _images(3, 50, 70, seed=8)
    original = model.predict(images, verbose=0)

    model.set_class_names(["horse", "car"])
    assert model.class_names == ["horse", "car"]
    probabilities = model.predict(images, verbose=0)
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(
        _np(model.class_embeddings()), _hand_class_embeddings(model, ["horse", "car"]),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        probabilities, _hand_predict(model, images, ["horse", "car"]), atol=1e-6
    )

    # A class's column does not depend on the other classes in the vocabulary.
    model.set_class_names(["cat"])
    np.testing.assert_allclose(model.predict(images, verbose=0), original[:, 1:2], atol=1e-6)

    model.set_class_names(CLASS_NAMES)
    np.testing.assert_allclose(model.predict(images, verbose=0), original, atol=1e-7)


def test_class_embeddings_are_cached_and_invalidated(tmp_path, monkeypatch):
    model = _tiny_model(seed=0)
    other = _tiny_model(seed=1)
    images = _images(2, 50, 70, seed=9)
    other_probabilities = other.predict(images, verbose=0)
    weights_path = tmp_path / "other.weights.h5"
    other.save_weights(weights_path)

    calls = []
    encode_text = model.encode_text

    def counting_encode_text(*args, **kwargs):
        calls.append(1)
        return encode_text(*args, **kwargs)

    monkeypatch.setattr(model, "encode_text", counting_encode_text)

    first = model.predict(images, verbose=0)
    assert len(calls) == 1
    model.predict(images, verbose=0)
    model(images)
    model.predict(_images(1, 30, 30, seed=10), verbose=0)
    assert len(calls) == 1, "class embeddings were recomputed for inference"
    assert not np.allclose(first, other_probabilities)

    model.set_class_names(["horse", "car"])
    assert model.predict(images, verbose=0).shape == (2, 2)
    assert len(calls) == 2
    model.predict(images, verbose=0)
    assert len(calls) == 2

    model.set_class_names(CLASS_NAMES)
    model.predict(images, verbose=0)
    assert len(calls) == 3
    model.load_weights(weights_path)
    np.testing.assert_array_equal(model.predict(images, verbose=0), other_probabilities)
    assert len(calls) == 4


def test_from_presets_reads_saved_kdpvlpa_preset_folders(tmp_path):
    model = _tiny_model(seed=3, feature_layer=-1)
    model.image_encoder.save_to_preset(tmp_path / "vit")
    model.qformer.save_to_preset(tmp_path / "qformer", tokenizer=model.tokenizer)
    # Settings not given (queries, feature layer, dropout) are the presets'.
    loaded = DPVLPA.from_presets(tmp_path / "vit", tmp_path / "qformer", CLASS_NAMES,
                                 projection_dim=16, sequence_length=24)
    assert loaded.qformer.get_config() == model.qformer.get_config()
    assert loaded.qformer.num_query_tokens == 4 and loaded.image_encoder.feature_layer == -1
    images = _images(2, 50, 70, seed=4)
    features = model.encode_images(images)
    np.testing.assert_array_equal(_np(loaded.encode_images(images)), _np(features))
    np.testing.assert_array_equal(_np(loaded.qformer.encode_queries(features)),
                                  _np(model.qformer.encode_queries(features)))
    np.testing.assert_array_equal(_np(loaded.tokenize(["a dog"])[0]),
                                  _np(model.tokenize(["a dog"])[0]))


def test_a_cased_tokenizer_stays_cased_through_a_preset(tmp_path):
    from keras_hub.models import BertTokenizer

    model = _tiny_model()
    vocabulary = list(model.tokenizer.get_vocabulary()) + ["Dog"]
    cased = BertTokenizer(vocabulary=vocabulary, lowercase=False, strip_accents=False)
    model.qformer.save_to_preset(tmp_path / "qformer", tokenizer=cased)
    reloaded = load_qformer_tokenizer(tmp_path / "qformer")
    assert reloaded.lowercase is False
    assert _np(reloaded(["Dog"])).tolist() == _np(cased(["Dog"])).tolist()


def test_mixed_bfloat16_reaches_every_part_and_scores_stay_float32():
    model = _tiny_model(dtype="mixed_bfloat16")
    for part in (model, model.image_encoder, model.qformer):
        assert part.dtype_policy.name == "mixed_bfloat16"
    images = _images(64, 50, 70)
    probabilities = model.predict(images, verbose=0)
    assert probabilities.dtype == np.float32 and np.isfinite(probabilities).all()
    # The scores are a float32 product of the bfloat16 features: computed in
    # bfloat16 they took 5 distinct values for 64 images, and AP counts ties.
    out = model({"images": images})
    assert out["image_queries"].dtype == torch.bfloat16
    queries, classes = (_np(ops.cast(out[k], "float32"))
                        for k in ("image_queries", "class_embeddings"))
    expected = (float(_np(model.logit_scale)) * np.einsum("bkp,cp->bkc", queries, classes).max(1)
                + float(_np(model.logit_bias)))
    np.testing.assert_allclose(_np(out["logits"]), expected, rtol=1e-5, atol=1e-5)
    assert all(len(np.unique(probabilities[:, c])) == 64 for c in range(len(CLASS_NAMES)))


def test_mixed_bfloat16_trains_with_float32_losses():
    from kdpvlpa.losses import (co_occurrence_loss, global_contrastive_loss,
                                query_contrastive_loss)

    model = _tiny_model(dtype="mixed_bfloat16")
    x, labels = _caption_batch(model)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), phase="pretrain")
    out = model(x)
    assert out["image_queries"].dtype == torch.bfloat16
    features = {k: ops.cast(out[k], "float32")
                for k in ("image_queries", "text_cls", "text_tokens", "class_embeddings")}
    tau = float(_np(model.temperature))
    terms = model.loss_terms(None, out)
    # The losses promote the bfloat16 features to float32 (kdpvlpa.losses).
    expected = {
        "gcl": global_contrastive_loss(features["image_queries"], features["text_cls"], tau),
        "qcl": query_contrastive_loss(features["image_queries"], features["text_tokens"],
                                      out["token_mask"], tau),
    }
    for name in ("gcl", "qcl"):
        assert terms[name].dtype == torch.float32
        np.testing.assert_allclose(_np(terms[name]), _np(expected[name]), rtol=1e-6, atol=1e-6)
    history = model.fit(x, epochs=2, batch_size=4, verbose=0).history
    assert all(np.isfinite(v).all() for v in history.values())
    assert history["loss"][1] < history["loss"][0]
    _compile_finetune(model, labels)
    terms = model.loss_terms(labels, out)
    coa = co_occurrence_loss(features["image_queries"], features["class_embeddings"],
                             model.co_occurrence, tau, model.beta)
    np.testing.assert_allclose(_np(terms["coa"]), _np(coa), rtol=1e-6, atol=1e-6)
    history = model.fit(x, labels, batch_size=4, epochs=2, verbose=0).history
    assert all(np.isfinite(v).all() for v in history.values())
    assert history["loss"][1] < history["loss"][0]


def test_bad_inputs_and_arguments_name_the_problem():
    model = _tiny_model()
    with pytest.raises(TypeError, match="a list of names, not one string"):
        _tiny_model(class_names="horse")
    with pytest.raises(TypeError, match="a list of names, not one string"):
        model.set_class_names("cat")
    with pytest.raises(ValueError, match="`sequence_length` must be between 3 and the "
                                         "Q-Former's `max_sequence_length`"):
        DPVLPA(model.image_encoder, model.qformer, model.tokenizer, CLASS_NAMES,
               sequence_length=model.qformer.max_sequence_length + 1)
    token_ids, padding_mask = model.tokenize(["a dog"])
    assert (_np(model.tokenize([b"a dog"])[0]) == _np(token_ids)).all()
    with pytest.raises(TypeError, match="Texts must be strings"):
        model.tokenize(["a dog", None])
    images = _images(1, 64, 64)
    with pytest.raises(ValueError, match="need their `padding_mask`"):
        model({"images": images, "token_ids": token_ids})
    features = _np(model.encode_images(images))
    with pytest.raises(ValueError, match=r"`image_features` must be encoder tokens of "
                                         r"shape \(batch, tokens, \d+\)"):
        model({"image_features": features[..., :-1]})


def test_a_training_call_outside_fit_sends_gradient_to_the_text_path():
    # No compile(phase=...): a custom loop calling the model with training=True.
    model = _tiny_model(seed=0)
    images = _images(2, 50, 70, seed=9)
    before = model.predict(images, verbose=0)  # fills the inference cache
    outputs = model(images, training=True)
    ops.sum(outputs["logits"]).backward()
    grad = model.text_proj.kernel.value.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    # The training call dropped the cache: changed text weights are seen.
    with torch.no_grad():
        kernel = model.text_proj.kernel.value
        kernel.add_(torch.randn(kernel.shape, generator=torch.Generator().manual_seed(0)))
    after = model.predict(images, verbose=0)
    np.testing.assert_allclose(after, _hand_predict(model, images, CLASS_NAMES), atol=1e-5)
    assert not np.allclose(after, before)


# ----------------------------------------------------------------------
# Training: what trains and what does not
# ----------------------------------------------------------------------
def test_encoder_is_frozen_and_finetune_step_trains_the_rest():
    model = _tiny_model()
    assert model.image_encoder.trainable_weights == []
    assert len(model.image_encoder.non_trainable_weights) > 0
    trainable_ids = {id(w) for w in model.trainable_weights}
    assert not any(id(w) in trainable_ids for w in model.image_encoder.weights)

    x, labels = _caption_batch(model)
    _compile_finetune(model, labels)
    assert any(w is model.logit_scale for w in model.trainable_weights)

    encoder_before = _snapshot(model.image_encoder.weights)
    watched = {
        "query_tokens": model.qformer.query_tokens,
        "layer_0_cross_attention_query": model.qformer.transformer_layers[0].cross_attention.query.kernel,
        "layer_1_self_attention_qkv": model.qformer.transformer_layers[1].self_attention.qkv.kernel,
        "vision_proj": model.vision_proj.kernel,
        "text_proj": model.text_proj.kernel,
        "temperature": model.temperature,
        "logit_scale": model.logit_scale,
    }
    before = {name: np.array(_np(w)) for name, w in watched.items()}

    history = model.fit(x, labels, batch_size=4, epochs=1, verbose=0, shuffle=False)
    for name in ("loss", "cls_loss", "gcl_dqr_loss", "coa_loss"):
        assert np.isfinite(history.history[name][0]), name

    for old, weight in zip(encoder_before, model.image_encoder.weights):
        np.testing.assert_array_equal(_np(weight), old, err_msg=weight.path)
    for name, weight in watched.items():
        assert _changed(before[name], weight), f"{name} did not train"

    # After training, inference uses the updated text path, not a stale cache.
    images = x["images"]
    np.testing.assert_allclose(
        model.predict(images, verbose=0), _hand_predict(model, images, CLASS_NAMES), atol=1e-6
    )


def test_a_skipped_qcl_is_not_logged():
    model = _tiny_model()
    x, _ = _caption_batch(model)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-2), phase="pretrain",
                  qcl_weight=0.0)
    history = model.fit(x, batch_size=4, epochs=1, verbose=0)
    assert set(history.history) == {"loss", "gcl_loss"}
    np.testing.assert_allclose(history.history["loss"], history.history["gcl_loss"])
    result = model.evaluate(x, batch_size=4, verbose=0, return_dict=True)
    assert set(result) == {"loss", "gcl_loss"}
    assert model.metrics_names == ["loss", "gcl_loss"]


def test_pretrain_step_does_not_train_logit_scale_and_bias():
    model = _tiny_model()
    x, _ = _caption_batch(model)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-2), phase="pretrain")
    trainable_ids = {id(w) for w in model.trainable_weights}
    assert id(model.logit_scale) not in trainable_ids
    assert id(model.logit_bias) not in trainable_ids

    scale, bias = float(_np(model.logit_scale)), float(_np(model.logit_bias))
    query_tokens = np.array(_np(model.qformer.query_tokens))
    encoder_before = _snapshot(model.image_encoder.weights)
    history = model.fit(x, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["gcl_loss"][0])
    assert np.isfinite(history.history["qcl_loss"][0])

    assert float(_np(model.logit_scale)) == scale
    assert float(_np(model.logit_bias)) == bias
    assert _changed(query_tokens, model.qformer.query_tokens)
    for old, weight in zip(encoder_before, model.image_encoder.weights):
        np.testing.assert_array_equal(_np(weight), old, err_msg=weight.path)

    # Phase 2 trains them again.
    _, labels = _caption_batch(model)
    _compile_finetune(model, labels)
    trainable_ids = {id(w) for w in model.trainable_weights}
    assert id(model.logit_scale) in trainable_ids and id(model.logit_bias) in trainable_ids


def test_finetune_loss_gradients_reach_qformer_not_encoder():
    model = _tiny_model()
    x, labels = _caption_batch(model)
    _compile_finetune(model, labels)
    x = {k: ops.convert_to_tensor(v) for k, v in x.items()}
    for weight in model.weights:
        weight.value.grad = None

    y_pred = model(x, training=True)
    loss = model.compute_loss(x, ops.convert_to_tensor(labels), y_pred)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()

    def grad(weight):
        return weight.value.grad

    for weight in (
        model.qformer.query_tokens,
        model.qformer.transformer_layers[0].cross_attention.kv.kernel,
        model.qformer.transformer_layers[1].feed_forward.intermediate_dense.kernel,
        model.qformer.transformer_layers[1].feed_forward_query.intermediate_dense.kernel,
        model.temperature,
        model.logit_scale,
        model.logit_bias,
        model.vision_proj.kernel,
        model.text_proj.kernel,
    ):
        g = grad(weight)
        assert g is not None, weight.path
        assert torch.count_nonzero(g) > 0, weight.path
    for weight in model.image_encoder.weights:
        g = grad(weight)
        assert g is None or torch.count_nonzero(g) == 0, weight.path


def test_finetune_compile_options_reach_the_loss():
    from kdpvlpa.losses import (classification_loss, co_occurrence_loss, dqr_weights,
                                weighted_contrastive_loss)

    model = _tiny_model()
    x, labels = _caption_batch(model)
    x = {k: ops.convert_to_tensor(v) for k, v in x.items()}
    y = ops.convert_to_tensor(labels)
    class_freq = np.array([5.0, 300.0, 40.0], "float32")  # class 0 is a tail class
    q_co = co_occurrence_matrix(labels)
    asl = dict(gamma_pos=1.0, gamma_neg=4.0, clip=0.05)
    y_pred = model(x, training=False)
    tau = float(_np(model.temperature))
    q, e, t = (y_pred[k] for k in ("image_queries", "class_embeddings", "text_cls"))
    cls_asl = float(_np(classification_loss(y, y_pred["logits"], **asl)))
    dqr = float(_np(weighted_contrastive_loss(q, t, dqr_weights(q, e, y, class_freq), tau)))
    plain = float(_np(weighted_contrastive_loss(q, t, ops.ones(q.shape[:2]), tau)))
    coa = float(_np(co_occurrence_loss(q, e, q_co, tau, beta=1.0)))
    # Each option changes its term, so an ignored option shows below.
    assert abs(cls_asl - float(_np(classification_loss(y, y_pred["logits"])))) > 1e-4
    assert abs(dqr - plain) > 1e-6

    for options, gcl in (
        (dict(), dqr),
        (dict(dqr_reweighting=False), plain),
        (dict(tail_threshold=5), plain),  # 5 images is no longer tail: W = 1
    ):
        model.compile(optimizer="adam", phase="finetune", class_freq=class_freq,
                      co_occurrence=q_co, lambda_dqr=0.3, lambda_coa=0.7, beta=2.0,
                      classification_loss_options=asl, **options)
        total = float(_np(model.compute_loss(x, y, y_pred, training=False)))
        assert total == pytest.approx(cls_asl + 0.3 * gcl + 0.7 * 2.0 * coa, rel=1e-5), options


# ----------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------
def test_finetune_validation_and_evaluate_need_no_captions():
    from kdpvlpa.losses import classification_loss, co_occurrence_loss
    from kdpvlpa.metrics import MeanAveragePrecision, average_precision

    model = _tiny_model()
    x, labels = _caption_batch(model)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-2), phase="finetune",
                  class_freq=labels.sum(0), co_occurrence=co_occurrence_matrix(labels),
                  lambda_coa=0.5, metrics=[MeanAveragePrecision()])
    # Test images come without captions, as the test splits do.
    test_images = _images(4, 64, 64, seed=5)
    test_labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], "float32")
    history = model.fit(x, labels, batch_size=4, epochs=1, verbose=0,
                        validation_data=(test_images, test_labels))
    logs = {k: v[-1] for k, v in history.history.items()}
    assert {"cls_loss", "gcl_dqr_loss", "coa_loss"} <= set(logs)
    assert "val_gcl_dqr_loss" not in logs  # not computed, rather than logged as 0

    result = model.evaluate(test_images, test_labels, batch_size=4, verbose=0,
                            return_dict=True)
    assert "gcl_dqr_loss" not in result
    plain = model.evaluate(test_images, test_labels, batch_size=4, verbose=0)
    assert model.metrics_names == ["loss", "compile_metrics", "cls_loss", "coa_loss"]
    np.testing.assert_allclose(
        plain, [result["loss"], result["map"], result["cls_loss"], result["coa_loss"]]
    )
    out = model(test_images)
    tau = ops.clip(model.temperature, 0.001, 0.5)
    cls = float(_np(classification_loss(test_labels, out["logits"])))
    coa = float(_np(co_occurrence_loss(out["image_queries"], out["class_embeddings"],
                                       model.co_occurrence, tau, beta=1.0)))
    np.testing.assert_allclose(result["cls_loss"], cls, rtol=1e-5)
    np.testing.assert_allclose(result["coa_loss"], coa, rtol=1e-5)
    np.testing.assert_allclose(result["loss"], cls + 0.5 * coa, rtol=1e-5)
    np.testing.assert_allclose(
        result["map"],  # in %
        100 * np.nanmean(average_precision(test_labels, _np(out["probabilities"]))), rtol=1e-5)
    # Training itself still needs the captions (GCL-DQR).
    with pytest.raises(ValueError, match="need `token_ids` and `padding_mask`"):
        model.fit(test_images, test_labels, epochs=1, verbose=0)


def test_finetune_labels_of_wrong_width_are_rejected():
    model = _tiny_model()
    x, labels = _caption_batch(model)
    _compile_finetune(model, labels)
    with pytest.raises(ValueError, match=r"3 classes.*Received \(4, 2\)"):
        model.fit(x, labels[:, :2], batch_size=4, epochs=1, verbose=0)


def test_bad_images_are_rejected():
    model = _tiny_model()
    with pytest.raises(ValueError, match=r"\(batch, height, width, 3\).*\(2, 50, 70, 4\)"):
        model.predict(np.zeros((2, 50, 70, 4), "uint8"), verbose=0)
    with pytest.raises(ValueError, match=r"\(batch, height, width, 3\)"):
        model(np.zeros((50, 70, 3), "float32"))
    with pytest.raises(ValueError, match=r"\(batch, height, width, 3\)"):
        model.preprocessor(np.zeros((2, 50, 70), "float32"))
    # A list of images (a natural try for images of different sizes).
    with pytest.raises(ValueError, match=r"not a list of 2 items.*resize"):
        model([_images(1, 50, 70)[0], _images(1, 30, 40)[0]])
    with pytest.raises(ValueError, match=r"not a list of 2 items.*resize"):
        model.predict([_images(1, 48, 64)[0], _images(1, 64, 48)[0]], verbose=0)


def test_bad_constructor_arguments_are_rejected():
    with pytest.raises(ValueError, match="class_names"):
        _tiny_model(class_names=[])
    with pytest.raises(ValueError, match=r"prompt_template.*'a photo of a class'"):
        _tiny_model(prompt_template="a photo of a class")
    for temperature in (0.0005, 0.6):
        with pytest.raises(ValueError, match=rf"temperature.*{temperature}"):
            _tiny_model(temperature=temperature)

    encoder = CLIPVisionEncoder.from_preset("tiny_random_vit")
    qformer = QFormerBackbone.from_preset("tiny_random_bert", image_dim=48, num_query_tokens=4)
    tokenizer = load_qformer_tokenizer("tiny_random_bert")
    with pytest.raises(ValueError, match=r"image_dim.*hidden_dim.*48 and 64"):
        DPVLPA(encoder, qformer, tokenizer, CLASS_NAMES, projection_dim=16)

    model = _tiny_model()
    with pytest.raises(ValueError, match="class_names"):
        model.set_class_names([])
    assert model.class_names == CLASS_NAMES


def test_bad_compile_arguments_are_rejected():
    model = _tiny_model()
    with pytest.raises(ValueError, match=r"phase.*'x'"):
        model.compile(phase="x")
    _, labels = _caption_batch(model)
    with pytest.raises(ValueError, match="class_freq"):
        model.compile(phase="finetune", co_occurrence=co_occurrence_matrix(labels))
    with pytest.raises(ValueError, match="class_freq"):
        model.compile(phase="finetune")
    with pytest.raises(ValueError, match=r"3 classes"):
        model.compile(phase="finetune", class_freq=[1, 2],
                      co_occurrence=co_occurrence_matrix(labels))
    # The phase sets the loss: a Keras `loss` would be silently unused.
    for key in ("loss", "loss_weights"):
        with pytest.raises(ValueError, match=rf"does not take `{key}`"):
            model.compile(phase="pretrain", **{key: "binary_crossentropy"})


def test_bad_classification_loss_options_are_refused_at_compile():
    model = _tiny_model()
    _, labels = _caption_batch(model)
    args = dict(phase="finetune", class_freq=labels.sum(0),
                co_occurrence=co_occurrence_matrix(labels))
    with pytest.raises(ValueError, match=r"Unknown `classification_loss_options` "
                                         r"\['gamma_neeg'\]"):
        model.compile(classification_loss_options={"gamma_neeg": 4}, **args)
    with pytest.raises(ValueError, match="`clip` must be < 1"):
        model.compile(classification_loss_options={"clip": 1.5}, **args)
    model.compile(classification_loss_options={"gamma_neg": 4, "clip": 0.05}, **args)


def test_dict_inputs_holding_a_list_of_images_get_a_clear_error():
    model = _tiny_model()
    images = list(_images(2, 64, 64))
    for call in (model.predict, model):
        with pytest.raises(ValueError, match="`images` must be one array, not a list of 2"):
            call({"images": images})


def test_after_fit_with_an_ema_optimizer_predictions_use_the_final_weights(tmp_path):
    # Keras writes the EMA averages into the weights as fit ends, after the
    # last validation pass cached class embeddings of the weights before.
    model = _tiny_model()
    x, labels = _caption_batch(model)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-2, use_ema=True,
                                                   ema_momentum=0.5),
                  phase="finetune", class_freq=labels.sum(0),
                  co_occurrence=co_occurrence_matrix(labels))
    test_images = _images(4, 64, 64, seed=5)
    model.fit(x, labels, batch_size=4, epochs=2, verbose=0,
              validation_data=(test_images, labels))
    after_fit = model.predict(test_images, verbose=0)
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(after_fit, reloaded.predict(test_images, verbose=0), atol=1e-6)


def test_sample_and_class_weights_are_refused_before_any_update():
    model = _tiny_model()
    x, labels = _caption_batch(model)
    _compile_finetune(model, labels)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="sample_weight.*class_weight"):
        model.fit(x, labels, sample_weight=np.zeros(4), batch_size=4, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="class_weight.*argmax"):
        model.fit(x, labels, class_weight={0: 1.0, 1: 2.0, 2: 3.0}, batch_size=4,
                  epochs=1, verbose=0)
    with pytest.raises(ValueError, match="sample_weight"):
        model.evaluate(x, labels, sample_weight=np.ones(4), batch_size=4, verbose=0)
    for expected, got in zip(before, model.get_weights()):
        np.testing.assert_array_equal(got, expected)


def test_temperature_stays_in_range_after_optimizer_steps():
    from kdpvlpa.training import make_optimizer

    model = _tiny_model()
    # Steps that would move τ far above 0.5, then far below 0.001: the
    # parameter itself is clamped, as BLIP-2's temp.clamp_(0.001, 0.5).
    for grad, bound in ((-1e3, 0.5), (1e3, 0.001)):
        optimizer = make_optimizer(100, learning_rate=1.0, warmup_steps=0)
        optimizer.build([model.temperature])
        for _ in range(3):
            optimizer.apply([torch.tensor(grad)], [model.temperature])
        assert float(_np(model.temperature)) == pytest.approx(bound)



def test_each_compile_sets_its_phases_metrics_and_pretraining_takes_no_labels():
    from kdpvlpa.metrics import MeanAveragePrecision

    model = _tiny_model()
    x, labels = _caption_batch(model)
    model.compile(optimizer="adam", phase="finetune", class_freq=labels.sum(0),
                  co_occurrence=co_occurrence_matrix(labels), metrics=[MeanAveragePrecision()])
    assert "map" in model.fit(x, labels, batch_size=4, verbose=0).history
    # Keras would keep the old metric, logged as a stale 0.0 in pretraining.
    model.compile(optimizer="adam", phase="pretrain")
    assert sorted(model.fit(x, batch_size=4, verbose=0).history) == [
        "gcl_loss", "loss", "qcl_loss"]
    with pytest.raises(ValueError, match="takes no `metrics`"):
        model.compile(optimizer="adam", phase="pretrain", metrics=[MeanAveragePrecision()])
    with pytest.raises(ValueError, match="takes no targets `y`"):
        model.fit(x, labels, batch_size=4, verbose=0)


@pytest.mark.slow
def test_finetuning_under_jit_compile_reports_the_map_of_its_predictions():
    # torch.compile of the whole train and eval step, with the NumPy mAP metric
    # and make_optimizer's AdamW inside (~3 min: compiling).
    from kdpvlpa.metrics import MeanAveragePrecision, average_precision
    from kdpvlpa.training import make_optimizer

    model = _tiny_model()
    x, labels = _caption_batch(model)
    model.compile(optimizer=make_optimizer(2, warmup_steps=0), phase="finetune",
                  class_freq=labels.sum(0), co_occurrence=co_occurrence_matrix(labels),
                  metrics=[MeanAveragePrecision()], jit_compile=True)
    before = _snapshot(model.qformer.weights)
    history = model.fit(x, labels, batch_size=4, epochs=1, verbose=0,
                        validation_data=(x["images"], labels)).history
    assert any(_changed(b, w) for b, w in zip(before, model.qformer.weights))
    assert all(np.isfinite(history[k][0]) for k in ("cls_loss", "gcl_dqr_loss", "coa_loss"))
    scores = model.predict(x["images"], verbose=0)
    expected = 100 * np.nanmean(average_precision(labels, scores))
    assert history["val_map"][0] == pytest.approx(expected, rel=1e-5)


def test_new_class_names_after_compiling_ask_for_a_new_compile():
    model = _tiny_model()
    x, labels = _caption_batch(model)
    _compile_finetune(model, labels)
    model.set_class_names(["cat", "horse"])
    assert model.predict(x["images"], verbose=0).shape == (4, 2)
    with pytest.raises(ValueError, match="compiled for phase='finetune' with 3 classes and "
                                         r"now has 2 \(`set_class_names`\)"):
        model.evaluate(x, labels[:, :2], verbose=0)


def _finetune_model_and_nan_features():
    model = _tiny_model()
    x, labels = _caption_batch(model)
    _compile_finetune(model, labels)
    features = _np(model.encode_images(x["images"])).copy()
    features[0, 0, 0] = np.nan
    return model, x, labels, features


def test_a_non_finite_training_loss_stops_fit_before_any_weight_changes():
    model, x, labels, features = _finetune_model_and_nan_features()
    before = _snapshot(model.weights)
    with pytest.raises(FloatingPointError, match="term.*became NaN or infinite. fit was "
                                                 "stopped before this step changed any weight"):
        model.fit({"image_features": features, "token_ids": x["token_ids"],
                   "padding_mask": x["padding_mask"]}, labels, batch_size=4, verbose=0)
    for old, weight in zip(before, model.weights):
        assert not _changed(old, weight), weight.path


def test_a_non_finite_evaluation_loss_names_the_data_not_the_run():
    model, _, labels, features = _finetune_model_and_nan_features()
    with pytest.raises(FloatingPointError, match="not finite on the evaluation data: "
                                                 "term.*Check the inputs"):
        model.evaluate({"image_features": features}, labels, verbose=0)
