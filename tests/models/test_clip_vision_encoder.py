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
        "transformer.resblocks.0.attn.in_proj_weight": torch.randn(48, 16),
        "transformer.resblocks.0.ln_1.weight": torch.randn(16),
        "ln_final.weight": torch.randn(16),
        # OpenAI's TorchScript files also carry these integers.
        "input_resolution": torch.tensor(hf_model.config.image_size),
        "context_length": torch.tensor(77),
        "vocab_size": torch.tensor(50),
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


def _open_clip_folder(folder, state, model_cfg, safetensors=False, preprocess_cfg=None):
    folder.mkdir()
    if safetensors:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()},
                  str(folder / "open_clip_model.safetensors"))
    else:
        torch.save(state, folder / "open_clip_pytorch_model.bin")
    config = {"model_cfg": model_cfg}
    if preprocess_cfg is not None:
        config["preprocess_cfg"] = preprocess_cfg
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder


def test_loads_open_clip_folders(tmp_path):
    # open_clip's Hub folder: the config gives the activation and head width.
    images = np.random.default_rng(5).normal(size=(1, 32, 32, 3)).astype("float32")
    vision_cfg = {"image_size": 32, "layers": 3, "width": 128, "patch_size": 8, "head_width": 32}
    hf = _tiny_openai_style_clip(hidden_act="gelu", heads=4)
    folder = _open_clip_folder(tmp_path / "gelu", _openai_state_dict(hf),
                               {"embed_dim": 8, "vision_cfg": vision_cfg})
    encoder = CLIPVisionEncoder.from_preset(folder)
    assert (encoder.num_heads, encoder.intermediate_activation) == (4, "gelu")
    np.testing.assert_allclose(np.asarray(encoder(images).detach().cpu()),
                               _reference_hidden_states(hf, images)[-2], atol=1e-5, rtol=0)
    hf = _tiny_openai_style_clip(hidden_act="quick_gelu", heads=4)
    folder = _open_clip_folder(tmp_path / "quick", _openai_state_dict(hf),
                               {"quick_gelu": True, "vision_cfg": vision_cfg}, safetensors=True)
    encoder = CLIPVisionEncoder.from_preset(folder)
    assert encoder.intermediate_activation == "quick_gelu"
    np.testing.assert_allclose(np.asarray(encoder(images).detach().cpu()),
                               _reference_hidden_states(hf, images)[-2], atol=1e-5, rtol=0)


def test_open_clip_folder_settings_it_cannot_follow_are_named(tmp_path):
    state = _openai_state_dict(_tiny_openai_style_clip())
    folder = _open_clip_folder(tmp_path / "tanh", state, {"vision_cfg": {
        "width": 128, "act_kwargs": {"approximate": "tanh"}}})
    with pytest.raises(ValueError, match="sets vision_cfg act_kwargs"):
        CLIPVisionEncoder.from_preset(folder)
    folder = _open_clip_folder(tmp_path / "imagenet", state, {"quick_gelu": True},
                               preprocess_cfg={"mean": [0.485, 0.456, 0.406],
                                               "std": [0.229, 0.224, 0.225]})
    with pytest.warns(UserWarning, match="pass image_mean and image_std to DPVLPA"):
        CLIPVisionEncoder.from_preset(folder)
    (tmp_path / "bad_config").mkdir()
    (tmp_path / "bad_config" / "open_clip_config.json").write_text('{"model_cfg": [1]}')
    with pytest.raises(ValueError, match="no 'model_cfg' object"):
        CLIPVisionEncoder.from_preset(tmp_path / "bad_config")


def test_a_folder_with_both_kinds_of_weights_reads_hugging_face_s(tmp_path):
    # LAION's Hub folders hold both; with only the open_clip weights
    # downloaded, those are read.
    hf = _tiny_hf_clip(tmp_path / "both")
    images = np.random.default_rng(6).normal(size=(1, 32, 32, 3)).astype("float32")
    (tmp_path / "both" / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}}))
    (tmp_path / "both" / "open_clip_pytorch_model.bin").write_bytes(b"not read")
    expected = _reference_hidden_states(hf, images)[-2]
    encoder = CLIPVisionEncoder.from_preset(tmp_path / "both")
    np.testing.assert_allclose(np.asarray(encoder(images).detach().cpu()), expected,
                               atol=1e-5, rtol=0)
    hf = _tiny_openai_style_clip()
    folder = _open_clip_folder(tmp_path / "only_open_clip", _openai_state_dict(hf),
                               {"quick_gelu": True})
    hf.config.save_pretrained(folder)  # config.json without model.safetensors
    encoder = CLIPVisionEncoder.from_preset(folder)
    np.testing.assert_allclose(np.asarray(encoder(images).detach().cpu()),
                               _reference_hidden_states(hf, images)[-2], atol=1e-5, rtol=0)


def test_open_clip_state_dict_files_need_the_activation_and_heads(tmp_path):
    # A training checkpoint (DataParallel prefixes): nothing in it says the
    # activation, nor, at a width other than ViT-B's or ViT-L's, the heads.
    hf = _tiny_openai_style_clip(hidden_act="gelu", heads=4)
    checkpoint = tmp_path / "epoch_32.pt"
    torch.save({"epoch": 32, "name": "run",
                "state_dict": {"module." + k: v for k, v in _openai_state_dict(hf).items()}},
               checkpoint)
    with pytest.raises(ValueError, match="intermediate_activation='quick_gelu'"):
        CLIPVisionEncoder.from_preset(checkpoint)
    with pytest.raises(ValueError, match="width 128, whose number of attention heads"):
        CLIPVisionEncoder.from_preset(checkpoint, intermediate_activation="gelu")
    encoder = CLIPVisionEncoder.from_preset(checkpoint, intermediate_activation="gelu",
                                            num_heads=4)
    images = np.random.default_rng(7).normal(size=(1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(encoder(images).detach().cpu()),
                               _reference_hidden_states(hf, images)[-2], atol=1e-5, rtol=0)


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
    state = _openai_state_dict(_tiny_openai_style_clip())
    no_ln_pre = {k: v for k, v in state.items() if "ln_pre" not in k}
    _save_torchscript(no_ln_pre, tmp_path / "no_ln_pre.pt")
    with pytest.raises(ValueError, match=r"lacks 2 image-tower tensors .* built with no_ln_pre"):
        CLIPVisionEncoder.from_preset(tmp_path / "no_ln_pre.pt")
    no_bias = {k: v for k, v in state.items() if k != "visual.transformer.resblocks.2.attn.in_proj_bias"}
    _save_torchscript(no_bias, tmp_path / "no_bias.pt")
    with pytest.raises(ValueError, match=r"lacks 1 .* visual\.transformer\.resblocks\.2\.attn\.in_proj_bias"):
        CLIPVisionEncoder.from_preset(tmp_path / "no_bias.pt")
    (tmp_path / "torn.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError, match="Could not read .*torn.safetensors"):
        CLIPVisionEncoder.from_preset(tmp_path / "torn.safetensors")
    _tiny_hf_clip(tmp_path / "hf")
    with pytest.raises(ValueError, match="holds Hugging Face CLIP weights: give the folder"):
        CLIPVisionEncoder.from_preset(tmp_path / "hf" / "model.safetensors")


def test_a_missing_tensor_is_an_input_error_naming_it(tmp_path):
    from safetensors.numpy import load_file, save_file

    _tiny_hf_clip(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    (key,) = [k for k in weights if k.endswith("encoder.layers.1.mlp.fc2.bias")]
    del weights[key]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=f"has no tensor '{key}'"):
        CLIPVisionEncoder.from_preset(tmp_path)
