import keras
from keras import ops

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@keras.saving.register_keras_serializable(package="kdpvlpa")
class DPVLPAImagePreprocessor(keras.layers.Layer):
    """Resizes and normalises RGB images for the CLIP encoder.

    Images of any size are centre-cropped to a square (as CLIP) or, with
    `crop_to_aspect_ratio=False`, squeezed whole (as LMPT and DBL), resized to
    `image_size` (bicubic, as CLIP), scaled from [0, 255] to [0, 1], then
    normalised with the CLIP mean and standard deviation.

    The resize is Keras' antialiased bicubic. It is close to, not equal to,
    the PIL resize of `kdpvlpa.training.load_training_image`, which training,
    evaluation and `kdpvlpa predict` use. Images already at `image_size`
    pass through unchanged, so feed images from that loader for exactly the
    scores of evaluation.

    Args:
        image_size: int. Output side length.
        mean: 3 floats. Per-channel mean, in [0, 1] units.
        std: 3 floats. Per-channel standard deviation.
        interpolation: str. Resize interpolation.
        crop_to_aspect_ratio: bool. True crops the centred square before
            resizing; False resizes the whole image to a square, so nothing
            near its sides is cut off.

    Call arguments:
        images: `(B, H, W, 3)` uint8 or float RGB in [0, 255].
    """

    def __init__(self, image_size=224, mean=CLIP_MEAN, std=CLIP_STD,
                 interpolation="bicubic", crop_to_aspect_ratio=True, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.interpolation = interpolation
        self.crop_to_aspect_ratio = bool(crop_to_aspect_ratio)
        self.built = True

    def call(self, images):
        shape = ops.shape(images)
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(
                "Images must be a (batch, height, width, 3) RGB array. "
                f"Received shape {tuple(shape)}"
            )
        x = ops.cast(images, "float32")
        if shape[1] != self.image_size or shape[2] != self.image_size:
            # Antialiased, like PIL's resize in CLIP's pipeline and in
            # `load_training_image`: plain bicubic aliases when downscaling.
            x = ops.image.resize(
                x, (self.image_size, self.image_size),
                interpolation=self.interpolation, antialias=True,
                crop_to_aspect_ratio=self.crop_to_aspect_ratio,
                data_format="channels_last",
            )
        x = x / 255.0
        mean = ops.convert_to_tensor(self.mean, "float32")
        std = ops.convert_to_tensor(self.std, "float32")
        return (x - mean) / std

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.image_size, self.image_size, 3)

    def get_config(self):
        config = super().get_config()
        config.update(
            image_size=self.image_size, mean=list(self.mean), std=list(self.std),
            interpolation=self.interpolation,
            crop_to_aspect_ratio=self.crop_to_aspect_ratio,
        )
        return config
