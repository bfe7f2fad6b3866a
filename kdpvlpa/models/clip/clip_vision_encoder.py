import keras
import numpy as np


@keras.saving.register_keras_serializable(package="kdpvlpa")
class CLIPVisionEncoder(keras.Model):
    """Frozen CLIP ViT image tower that returns one layer's token sequence.

    Built on keras-hub's `CLIPVisionEncoder` (same layers and weight names,
    so keras-hub CLIP presets load into it), but it stops at `feature_layer`
    instead of running the whole tower: the penultimate layer of ViT-B/16 by
    default, as BLIP-2 reads it. The encoder never trains.

    `feature_layer` counts like Hugging Face's `hidden_states`: 0 is the
    embeddings after the pre-LayerNorm, `i` the output of block `i`, and
    negative values count from the end (-1 is the last block, before the
    post-LayerNorm; -2 the penultimate).

    Args:
        patch_size: int. Patch size (16 for ViT-B/16).
        hidden_dim: int. Token width.
        num_layers: int. Transformer blocks.
        num_heads: int. Attention heads.
        intermediate_dim: int. MLP inner width.
        intermediate_activation: str. `"quick_gelu"` for OpenAI CLIP.
        image_size: int. Input resolution (square).
        feature_layer: int. Which layer's tokens to return.
        dtype: string or `keras.DTypePolicy`.

    Call arguments:
        images: `(B, image_size, image_size, 3)` float images, already
            normalised with the CLIP mean and standard deviation.

    Returns:
        `(B, 1 + (image_size // patch_size) ** 2, hidden_dim)` tokens.

    Example:
    ```python
    encoder = kdpvlpa.models.CLIPVisionEncoder.from_preset("path/to/clip-vit-base-patch16")
    tokens = encoder(normalised_images)  # (B, 197, 768)
    ```

    Reference: [Radford et al., CLIP, ICML 2021](https://arxiv.org/abs/2103.00020)
    """

    def __init__(
        self,
        patch_size=16,
        hidden_dim=768,
        num_layers=12,
        num_heads=12,
        intermediate_dim=3072,
        intermediate_activation="quick_gelu",
        image_size=224,
        feature_layer=-2,
        dtype=None,
        **kwargs,
    ):
        kwargs.pop("trainable", None)
        super().__init__(dtype=dtype, **kwargs)
        if not -num_layers - 1 <= feature_layer <= num_layers:
            raise ValueError(
                f"`feature_layer` must be in [{-num_layers - 1}, {num_layers}] "
                f"for a {num_layers}-layer encoder. Received: {feature_layer}"
            )
        if image_size % patch_size:
            raise ValueError(
                "`image_size` must be a multiple of `patch_size`. Received: "
                f"image_size={image_size}, patch_size={patch_size}"
            )
        from kdpvlpa.backend import import_keras_hub

        HubCLIPVisionEncoder = import_keras_hub().models.CLIPVisionEncoder

        self.encoder = HubCLIPVisionEncoder(
            patch_size=patch_size,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            intermediate_dim=intermediate_dim,
            intermediate_activation=intermediate_activation,
            image_shape=(image_size, image_size, 3),
            data_format="channels_last",
            dtype=dtype,
            name="encoder",
        )
        # keras-hub creates position ids as a zero-initialised weight that
        # its own presets overwrite; a freshly built encoder needs 0..N-1.
        position_ids = self.encoder.embedding.position_ids
        position_ids.assign(np.arange(position_ids.shape[1])[None].astype("int32"))

        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.intermediate_activation = intermediate_activation
        self.image_size = image_size
        self.feature_layer = feature_layer
        self.num_blocks = (
            feature_layer if feature_layer >= 0 else num_layers + 1 + feature_layer
        )
        self.num_tokens = 1 + (image_size // patch_size) ** 2
        self.trainable = False
        self.built = True

    def call(self, images):
        x = self.encoder.embedding(images)
        x = self.encoder.pre_layer_norm(x)
        for block in self.encoder.encoder_layers[: self.num_blocks]:
            x = block(x)
        return x

    def compute_output_shape(self, images_shape):
        return (images_shape[0], self.num_tokens, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "patch_size": self.patch_size,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "intermediate_activation": self.intermediate_activation,
                "image_size": self.image_size,
                "feature_layer": self.feature_layer,
            }
        )
        return config

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Builds the encoder from a local checkpoint folder or file, or a preset.

        Args:
            preset: str or path. A local Hugging Face folder of a `CLIPModel`
                or `CLIPVisionModel` (`save_pretrained`; safetensors or bin),
                OpenAI's TorchScript release file (`ViT-B-16.pt`), an
                open_clip Hub folder (`open_clip_config.json` and its
                weights) or state-dict file, a local keras-hub CLIP preset
                folder, a kdpvlpa preset folder, or `"tiny_random_vit"` (a
                small randomly initialised encoder for demos and tests).
            **kwargs: `feature_layer`, `image_size`, `dtype`; and, for an
                open_clip state-dict file, which does not say them,
                `intermediate_activation` (`"quick_gelu"` or `"gelu"`) and,
                at widths other than ViT-B's and ViT-L's, `num_heads`.
        """

        from kdpvlpa.models.clip.convert_clip import load_clip_vision_preset

        return load_clip_vision_preset(preset, **kwargs)

    def save_to_preset(self, preset_dir):
        from kdpvlpa.models.preset import save_model_preset

        save_model_preset(self, preset_dir)
