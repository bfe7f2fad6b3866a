import numpy as np
import pytest
import torch
import transformers  # the reference implementation ([test] extra)

import kdpvlpa  # noqa: F401  (selects the torch backend)
from kdpvlpa.models import CLIPVisionEncoder


def _tiny_hf_clip(tmp_path, full_model=False, safe=True):
    torch.manual_seed(0)
    vision = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, image_size=32, patch_size=8, hidden_act="quick_gelu",
    )
    if full_model:
        config = transformers.CLIPConfig(
            vision_config=vision.to_dict(),
            text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, vocab_size=50),
            projection_dim=8,
        )
        model = transformers.CLIPModel(config).eval()
    else:
        model = transformers.CLIPVisionModel(vision).eval()
    # Non-trivial LayerNorm parameters so a swapped gamma/beta shows.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path, safe_serialization=safe)
    vision_model = model.vision_model if full_model else model
    return vision_model


def _reference_hidden_states(hf_model, images):
    with torch.no_grad():
        pixel_values = torch.from_numpy(images).permute(0, 3, 1, 2)
        out = hf_model(pixel_values=pixel_values, output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states]


@pytest.mark.parametrize("feature_layer", [-2, -1, 1])
def test_matches_transformers_clip_vision_model(tmp_path, feature_layer):
    hf = _tiny_hf_clip(tmp_path)
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    expected = _reference_hidden_states(hf, images)[feature_layer]
    encoder = CLIPVisionEncoder.from_preset(tmp_path, feature_layer=feature_layer)
    got = np.asarray(encoder(images).detach().detach().cpu())
    assert got.shape == expected.shape == (2, 17, 32)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("safe", [True, False])
def test_loads_full_clip_model_folder(tmp_path, safe):
    hf = _tiny_hf_clip(tmp_path, full_model=True, safe=safe)
    images = np.random.default_rng(1).normal(size=(1, 32, 32, 3)).astype("float32")
    expected = _reference_hidden_states(hf, images)[-2]
    encoder = CLIPVisionEncoder.from_preset(str(tmp_path))
    np.testing.assert_allclose(np.asarray(encoder(images).detach().cpu()), expected, atol=1e-5, rtol=0)


def test_encoder_is_frozen_and_config_round_trips(tmp_path):
    encoder = CLIPVisionEncoder.from_preset("tiny_random_vit")
    assert not encoder.trainable
    assert encoder.trainable_weights == []
    clone = CLIPVisionEncoder.from_config(encoder.get_config())
    assert clone.get_config() == encoder.get_config()
    encoder.save_to_preset(tmp_path / "preset")
    reloaded = CLIPVisionEncoder.from_preset(tmp_path / "preset")
    images = np.random.default_rng(2).normal(size=(1, 64, 64, 3)).astype("float32")
    np.testing.assert_array_equal(
        np.asarray(encoder(images).detach().cpu()), np.asarray(reloaded(images).detach().cpu())
    )


def test_local_keras_hub_preset_loads_with_the_same_layer_outputs(tmp_path):
    import keras
    import keras_hub

    hub = keras_hub.models.CLIPVisionEncoder(
        patch_size=8, hidden_dim=16, num_layers=3, num_heads=2, intermediate_dim=32,
        intermediate_activation="quick_gelu", image_shape=(32, 32, 3),
    )
    hub.save_to_preset(tmp_path / "hub")
    images = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype("float32")
    for feature_layer, block in ((-1, "encoder_block_2"), (-2, "encoder_block_1")):
        encoder = CLIPVisionEncoder.from_preset(tmp_path / "hub", feature_layer=feature_layer)
        # keras-hub's output is after its final LayerNorm; kdpvlpa reads the
        # hidden states of one block, as BLIP-2 does.
        reference = keras.Model(hub.input, hub.get_layer(block).output)({"images": images})
        np.testing.assert_allclose(np.asarray(encoder(images).detach().cpu()),
                                   np.asarray(reference.detach().cpu()), atol=1e-6, rtol=0)


def test_a_bare_preset_name_is_refused_not_downloaded():
    # keras-hub would fetch such a name from Kaggle; kdpvlpa never downloads.
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        CLIPVisionEncoder.from_preset("clip_vit_base_patch16")


def test_position_ids_are_a_range():
    encoder = CLIPVisionEncoder.from_preset("tiny_random_vit")
    ids = np.asarray(encoder.encoder.embedding.position_ids.numpy()).ravel()
    np.testing.assert_array_equal(ids, np.arange(ids.size))


def test_bad_arguments_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="feature_layer"):
        CLIPVisionEncoder(num_layers=2, hidden_dim=8, num_heads=2, intermediate_dim=8,
                          patch_size=8, image_size=16, feature_layer=-5)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CLIPVisionEncoder.from_preset(tmp_path / "missing" / "clip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        CLIPVisionEncoder.from_preset(tmp_path / "empty")
