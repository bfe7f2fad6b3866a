import json

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


# OpenAI's release files and open_clip name the image tower's tensors
# `visual.*` with one fused query/key/value projection. The mapping below is
# written out by hand from OpenAI's `clip/model.py` module names, independently
# of the loader, so the transformers model is the numerical reference.
def _openai_state_dict(hf_model):
    hf = {k.removeprefix("vision_model."): v.detach().clone()
          for k, v in hf_model.state_dict().items()}
    state = {
        "visual.class_embedding": hf["embeddings.class_embedding"],
        "visual.conv1.weight": hf["embeddings.patch_embedding.weight"],
        "visual.positional_embedding": hf["embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": hf["pre_layrnorm.weight"],
        "visual.ln_pre.bias": hf["pre_layrnorm.bias"],
        "visual.ln_post.weight": hf["post_layernorm.weight"],
        "visual.ln_post.bias": hf["post_layernorm.bias"],
        # The image-text projection and text-tower tensors, which the loader skips.
        "visual.proj": torch.randn(hf["post_layernorm.weight"].shape[0], 8),
        "logit_scale": torch.tensor(4.6),
        "token_embedding.weight": torch.randn(50, 16),
    }
    for i in range(hf_model.config.num_hidden_layers):
        h, o = f"encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            state[o + f"attn.in_proj_{kind}"] = torch.cat(
                [hf[h + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            state[o + f"attn.out_proj.{kind}"] = hf[h + f"self_attn.out_proj.{kind}"]
            state[o + f"ln_1.{kind}"] = hf[h + f"layer_norm1.{kind}"]
            state[o + f"ln_2.{kind}"] = hf[h + f"layer_norm2.{kind}"]
            state[o + f"mlp.c_fc.{kind}"] = hf[h + f"mlp.fc1.{kind}"]
            state[o + f"mlp.c_proj.{kind}"] = hf[h + f"mlp.fc2.{kind}"]
    return state


class _Archive(torch.nn.Module):
    def forward(self, x):
        return x


def _save_torchscript(state, file):
    # A TorchScript archive whose state dict has these names, as OpenAI's
    # `ViT-B-16.pt` (a `torch.jit.save`d model) does.
    root = _Archive()
    for name, tensor in state.items():
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=False))
    torch.jit.script(root).save(str(file))


def _tiny_openai_style_clip(hidden_act="quick_gelu", heads=2):
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(
        hidden_size=128, intermediate_size=96, num_hidden_layers=3, num_attention_heads=heads,
        image_size=32, patch_size=8, hidden_act=hidden_act,
    )
    model = transformers.CLIPVisionModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            # OpenAI's files are float16: give the reference float16 values.
            p.copy_(p.half().float())
    return model


def test_loads_openai_torchscript_release_file(tmp_path):
    hf = _tiny_openai_style_clip()
    _save_torchscript({k: v.half() for k, v in _openai_state_dict(hf).items()},
                      tmp_path / "ViT-B-16.pt")
    images = np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype("float32")
    for feature_layer in (-2, 1):
        expected = _reference_hidden_states(hf, images)[feature_layer]
        encoder = CLIPVisionEncoder.from_preset(tmp_path / "ViT-B-16.pt",
                                                feature_layer=feature_layer)
        # Sizes come from the tensors: width 128 in heads of 64, 3 blocks, 32 px.
        assert (encoder.hidden_dim, encoder.num_heads, encoder.num_layers,
                encoder.image_size, encoder.patch_size, encoder.intermediate_dim,
                encoder.intermediate_activation) == (128, 2, 3, 32, 8, 96, "quick_gelu")
        np.testing.assert_allclose(np.asarray(encoder(images).detach().cpu()), expected,
                                   atol=1e-5, rtol=0)


def test_loads_open_clip_folder_and_training_checkpoint(tmp_path):
    # open_clip's Hub folder: the config gives the activation and head width.
    hf = _tiny_openai_style_clip(hidden_act="gelu", heads=4)
    state = _openai_state_dict(hf)
    folder = tmp_path / "open_clip"
    folder.mkdir()
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 8, "vision_cfg": {"image_size": 32, "layers": 3, "width": 128,
                                       "patch_size": 8, "head_width": 32}}}))
    images = np.random.default_rng(5).normal(size=(1, 32, 32, 3)).astype("float32")
    expected = _reference_hidden_states(hf, images)[-2]
    encoder = CLIPVisionEncoder.from_preset(folder)
    assert (encoder.num_heads, encoder.intermediate_activation) == (4, "gelu")
    np.testing.assert_allclose(np.asarray(encoder(images).detach().cpu()), expected,
                               atol=1e-5, rtol=0)
    # A training checkpoint (DataParallel prefixes) needs the activation given.
    checkpoint = tmp_path / "epoch_32.pt"
    torch.save({"epoch": 32, "name": "run",
                "state_dict": {"module." + k: v for k, v in state.items()}}, checkpoint)
    with pytest.raises(ValueError, match="intermediate_activation"):
        CLIPVisionEncoder.from_preset(checkpoint)
    # Heads of 64 by default; the attention's split into heads changes the
    # result, so compare with a reference of 2 heads.
    hf2 = _tiny_openai_style_clip(hidden_act="gelu", heads=2)
    hf2.load_state_dict(hf.state_dict())
    encoder = CLIPVisionEncoder.from_preset(checkpoint, intermediate_activation="gelu")
    np.testing.assert_allclose(np.asarray(encoder(images).detach().cpu()),
                               _reference_hidden_states(hf2, images)[-2], atol=1e-5, rtol=0)


def test_unsupported_openai_layout_checkpoints_name_the_problem(tmp_path):
    state = _openai_state_dict(_tiny_openai_style_clip())
    layer_scale = dict(state)
    layer_scale["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(128)
    _save_torchscript(layer_scale, tmp_path / "ls.pt")
    with pytest.raises(ValueError, match=r"no place for \(visual\.transformer\.resblocks\.0\.ls_1"):
        CLIPVisionEncoder.from_preset(tmp_path / "ls.pt")
    resnet = {"visual.layer1.0.conv1.weight": torch.zeros(4, 4, 1, 1),
              "visual.attnpool.positional_embedding": torch.zeros(5, 4)}
    _save_torchscript(resnet, tmp_path / "RN50.pt")
    with pytest.raises(ValueError, match="ResNet image tower"):
        CLIPVisionEncoder.from_preset(tmp_path / "RN50.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Could not read .*broken.pt"):
        CLIPVisionEncoder.from_preset(tmp_path / "broken.pt")
    folder = tmp_path / "no_weights"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}}))
    with pytest.raises(FileNotFoundError, match="open_clip_pytorch_model.bin"):
        CLIPVisionEncoder.from_preset(folder)
