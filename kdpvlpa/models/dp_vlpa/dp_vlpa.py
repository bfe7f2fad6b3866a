import inspect
import math

import keras
import numpy as np
from keras import ops

from kdpvlpa.losses import ClassificationLoss
from kdpvlpa.losses import classification_loss
from kdpvlpa.losses import co_occurrence_loss
from kdpvlpa.losses import dqr_weights
from kdpvlpa.losses import global_contrastive_loss
from kdpvlpa.losses import query_contrastive_loss
from kdpvlpa.losses import weighted_contrastive_loss
from kdpvlpa.losses._utils import l2_normalize
from kdpvlpa.models.dp_vlpa.dp_vlpa_image_preprocessor import DPVLPAImagePreprocessor
from kdpvlpa.models.qformer.qformer_tokenizer import pack_text

PHASES = ("pretrain", "finetune")
TEMPERATURE_RANGE = (0.001, 0.5)


@keras.saving.register_keras_serializable(package="kdpvlpa")
class ClipValue(keras.constraints.Constraint):
    """Keeps a variable in `[min_value, max_value]` after every optimizer step.

    BLIP-2 clamps its temperature in place (`temp.clamp_(0.001, 0.5)`), so the
    parameter itself stays in range and keeps receiving gradient at a bound;
    clipping only where it is used would leave it stuck outside, with zero
    gradient, once a step pushed it there.
    """

    def __init__(self, min_value, max_value):
        self.min_value = float(min_value)
        self.max_value = float(max_value)

    def __call__(self, w):
        return ops.clip(w, self.min_value, self.max_value)

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value}


def _check_class_names(class_names):
    if isinstance(class_names, (str, bytes)):
        raise TypeError(
            "`class_names` must be a list of names, not one string. Received: "
            f"{class_names!r} (write [{class_names!r}] for one class)."
        )
    class_names = [str(c) for c in class_names]
    if not class_names:
        raise ValueError("`class_names` must name at least one class.")
    return class_names


def _check_not_a_list(inputs):
    if isinstance(inputs, dict):
        for key in ("images", "image_features"):
            value = inputs.get(key)
            if isinstance(value, (list, tuple)):
                raise ValueError(
                    f"`{key}` must be one array, not a {type(value).__name__} of "
                    f"{len(value)} items. Stack them with np.stack; resize images of "
                    "different sizes first (for example with "
                    "`kdpvlpa.training.load_training_image`)."
                )
        return
    if isinstance(inputs, (list, tuple)):
        raise ValueError(
            "DPVLPA takes one (batch, height, width, 3) array of images or a "
            f"dict of inputs, not a {type(inputs).__name__} of {len(inputs)} items. "
            "Stack images of one size with np.stack; resize images of different "
            "sizes first (for example with `kdpvlpa.training.load_training_image`)."
        )


@keras.saving.register_keras_serializable(package="kdpvlpa")
class DPVLPA(keras.Model):
    """DP-VLPA long-tailed multi-label recognizer.

    A frozen CLIP image encoder feeds its token sequence, through a trainable
    LayerNorm, to a BERT-initialised Q-Former whose queries are projected to
    `projection_dim` and compared with class embeddings computed from the
    prompts `prompt_template.format(name)` through the Q-Former's text path:
    `logit[i, c] = a · max_k sim(q̂_k^i, ê_c) + b`. `predict` returns
    `sigmoid(logit)` per class.

    Training runs in two phases, each with plain `fit` after
    `compile(phase=...)`:

    - `"pretrain"` (knowledge injection): `L_GCL + L_QCL` on image–caption
      pairs; inputs `{"images" or "image_features", "token_ids",
      "padding_mask"}`, no targets.
    - `"finetune"` (adaptive fine-tuning): `L_CLS + λ₁·L_GCL-DQR + λ₂·L_COA`
      on the same inputs with multi-hot targets. Validation data and
      `evaluate` may leave the captions out (test splits have none): their
      loss is then `L_CLS + λ₂·L_COA`, and `gcl_dqr_loss` is not reported
      (nor listed in `metrics_names`).

    Args:
        image_encoder: `kdpvlpa.models.CLIPVisionEncoder`. Frozen.
        qformer: `kdpvlpa.models.QFormerBackbone`.
        tokenizer: keras-hub `BertTokenizer` of the Q-Former.
        class_names: list of str. Natural class names ("dining table").
        projection_dim: int. Width P of the shared embedding space.
        temperature: float. Initial τ; kept in [0.001, 0.5] after every
            optimizer step, as BLIP-2 clamps it.
        sequence_length: int. Token length of captions and prompts.
        prompt_template: str. Class prompt with one `{}` for the name.
        image_mean: 3 floats. Normalisation mean (CLIP's by default).
        image_std: 3 floats. Normalisation standard deviation.
        crop_to_aspect_ratio: bool. True (CLIP's preprocessing) crops images
            to their centred square before resizing; False resizes the whole
            image (as LMPT and DBL, whose Table 1 numbers the paper compares
            with), so objects near the sides stay in view.
        dtype: string or `keras.DTypePolicy`.

    Call arguments:
        inputs: `(B, H, W, 3)` images (uint8 or float in [0, 255], any size),
            or a dict with `"images"` or precomputed encoder tokens
            `"image_features"`, and optionally `"token_ids"` and
            `"padding_mask"` of captions.
        training: bool.

    Returns:
        dict with `"logits"` and `"probabilities"` `(B, C)`, the normalised
        queries `"image_queries"` `(B, K, P)`, and for captions
        `"text_cls"` `(B, P)`, `"text_tokens"` `(B, L, P)`, `"token_mask"`.

    Example:
    ```python
    model = kdpvlpa.models.DPVLPA.from_presets(
        vision_preset="path/to/clip-vit-base-patch16",
        qformer_preset="minilm",
        class_names=["person", "dog", "potted plant"],
    )
    probabilities = model.predict(images)  # (N, 3)
    model.set_class_names(["cat", "horse"])  # open vocabulary
    ```

    Reference:
        DP-VLPA (AAAI 2026); BLIP-2 (Li et al., ICML 2023).
    """

    def __init__(
        self,
        image_encoder,
        qformer,
        tokenizer,
        class_names,
        projection_dim=256,
        temperature=0.07,
        sequence_length=64,
        prompt_template="a photo of a {}.",
        image_mean=None,
        image_std=None,
        crop_to_aspect_ratio=True,
        dtype=None,
        **kwargs,
    ):
        trainable = kwargs.pop("trainable", True)
        super().__init__(dtype=dtype, **kwargs)
        class_names = _check_class_names(class_names)
        if "{}" not in prompt_template:
            raise ValueError(
                "`prompt_template` needs a `{}` for the class name. Received: "
                f"{prompt_template!r}"
            )
        if not TEMPERATURE_RANGE[0] <= temperature <= TEMPERATURE_RANGE[1]:
            raise ValueError(
                f"`temperature` must be in {list(TEMPERATURE_RANGE)}. Received: {temperature}"
            )
        if not 2 < sequence_length <= qformer.max_sequence_length:
            raise ValueError(
                f"`sequence_length` must be between 3 and the Q-Former's "
                f"`max_sequence_length` ({qformer.max_sequence_length} positions). "
                f"Received: {sequence_length}"
            )
        if qformer.image_dim != image_encoder.hidden_dim:
            raise ValueError(
                "The Q-Former's `image_dim` must equal the image encoder's "
                f"`hidden_dim`. Received: {qformer.image_dim} and "
                f"{image_encoder.hidden_dim}"
            )

        # === Layers ===
        pre_kwargs = {}
        if image_mean is not None:
            pre_kwargs["mean"] = image_mean
        if image_std is not None:
            pre_kwargs["std"] = image_std
        self.preprocessor = DPVLPAImagePreprocessor(
            image_size=image_encoder.image_size, crop_to_aspect_ratio=crop_to_aspect_ratio,
            name="preprocessor", **pre_kwargs
        )
        self.image_encoder = image_encoder
        self.image_encoder.trainable = False
        self.qformer = qformer
        self.tokenizer = tokenizer
        policy = self.dtype_policy
        self.vision_layer_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, dtype=policy, name="vision_layer_norm"
        )
        self.vision_proj = keras.layers.Dense(projection_dim, dtype=policy, name="vision_proj")
        self.text_proj = keras.layers.Dense(projection_dim, dtype=policy, name="text_proj")

        # === Config ===
        self.class_names = class_names
        self.projection_dim = projection_dim
        self.initial_temperature = float(temperature)
        self.sequence_length = int(sequence_length)
        self.prompt_template = prompt_template
        self.image_mean = list(self.preprocessor.mean)
        self.image_std = list(self.preprocessor.std)
        self.phase = None
        self._class_embedding_cache = None
        self._prompt_tokens = None
        self.build()
        if not trainable:
            self.trainable = False

    def build(self, input_shape=None):
        if self.built:
            return
        self.vision_layer_norm.build((None, None, self.image_encoder.hidden_dim))
        self.vision_proj.build((None, None, self.qformer.hidden_dim))
        self.text_proj.build((None, None, self.qformer.hidden_dim))
        t0 = self.initial_temperature
        self.temperature = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(t0), name="temperature",
            constraint=ClipValue(*TEMPERATURE_RANGE),
        )
        # Not autocast: the scores are computed in float32 (see `classify`).
        self.logit_scale = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(1.0 / t0), name="logit_scale",
            autocast=False,
        )
        self.logit_bias = self.add_weight(
            shape=(), initializer="zeros", name="logit_bias", autocast=False
        )
        self.built = True

    # ------------------------------------------------------------------
    # Constructors
    # ------------------------------------------------------------------
    @classmethod
    def from_presets(
        cls,
        vision_preset,
        qformer_preset,
        class_names,
        feature_layer=None,
        num_query_tokens=None,
        cross_attention_frequency=None,
        dropout=None,
        dtype=None,
        **kwargs,
    ):
        """Builds a DP-VLPA model from an encoder and a Q-Former checkpoint.

        Args:
            vision_preset: anything `CLIPVisionEncoder.from_preset` accepts
                (a local Hugging Face CLIP folder, OpenAI's `ViT-B-16.pt`, an
                open_clip folder, a local keras-hub CLIP preset folder, a
                kdpvlpa preset folder, or `"tiny_random_vit"`).
            qformer_preset: anything `QFormerBackbone.from_preset` accepts
                (a local BERT or BLIP-2 Q-Former folder, `"minilm"`,
                `"tiny_random_bert"`); its tokenizer comes from the same place.
            class_names: list of str.
            feature_layer: int or None. Encoder layer the Q-Former reads.
            num_query_tokens: int or None. K.
            cross_attention_frequency: int or None.
            dropout: float or None.
            dtype: string or `keras.DTypePolicy`, for the encoder, the
                Q-Former and the heads alike.
            **kwargs: `DPVLPA` arguments (`projection_dim`, ...).

        None keeps what the preset says: a kdpvlpa preset folder's saved
        value, or for a Hugging Face checkpoint the defaults of METHOD.md
        (`feature_layer=-2`, 32 queries, cross-attention every 2 layers) and
        the checkpoint's dropout.
        """
        from kdpvlpa.models.clip.clip_vision_encoder import CLIPVisionEncoder
        from kdpvlpa.models.qformer.convert_qformer import load_qformer_tokenizer
        from kdpvlpa.models.qformer.qformer_backbone import QFormerBackbone

        encoder = CLIPVisionEncoder.from_preset(
            vision_preset, feature_layer=feature_layer, dtype=dtype
        )
        qformer = QFormerBackbone.from_preset(
            qformer_preset,
            image_dim=encoder.hidden_dim,
            num_query_tokens=num_query_tokens,
            cross_attention_frequency=cross_attention_frequency,
            dropout=dropout,
            dtype=dtype,
        )
        tokenizer = load_qformer_tokenizer(qformer_preset)
        return cls(encoder, qformer, tokenizer, class_names, dtype=dtype, **kwargs)

    # ------------------------------------------------------------------
    # Text
    # ------------------------------------------------------------------
    def tokenize(self, texts):
        """`(token_ids, padding_mask)` NumPy arrays for a list of texts."""
        return pack_text(self.tokenizer, texts, self.sequence_length)

    def prompts(self):
        return [self.prompt_template.format(name) for name in self.class_names]

    def set_class_names(self, class_names):
        """Changes the vocabulary: class embeddings come from the new prompts.

        One trained model predicts any set of class names (the paper's
        open-world test); the learned logit scale and bias are kept.
        """
        class_names = _check_class_names(class_names)
        self.class_names = class_names
        self._prompt_tokens = None
        self._class_embedding_cache = None

    def _prompt_inputs(self):
        if self._prompt_tokens is None:
            token_ids, padding_mask = self.tokenize(self.prompts())
            # Prompts are short: keep only the columns some prompt uses.
            length = int(padding_mask.sum(1).max())
            self._prompt_tokens = (token_ids[:, :length], padding_mask[:, :length])
        return self._prompt_tokens

    def encode_text(self, token_ids, padding_mask, training=False):
        """Projected, normalised `[CLS]` `(B, P)` and token `(B, L, P)` features."""
        sequence = self.qformer.encode_text(token_ids, padding_mask, training=training)
        projected = l2_normalize(self.text_proj(sequence))
        return projected[:, 0], projected

    def class_embeddings(self, training=False):
        """`(C, P)` class embeddings `E_class` from the prompts.

        With `training=True` they are recomputed, with gradient, and the
        inference cache is dropped. Otherwise they are computed once and
        cached; `fit`, `load_weights`, `set_weights` and `set_class_names`
        drop the cache. After changing the text path's weights any other way
        (assigning variables, a custom loop calling the model without
        `training=True`), call `invalidate_class_embeddings()`.
        """
        if training:
            self._class_embedding_cache = None
            token_ids, padding_mask = self._prompt_inputs()
            return self.encode_text(token_ids, padding_mask, training=False)[0]
        if self._class_embedding_cache is None:
            import torch

            token_ids, padding_mask = self._prompt_inputs()
            # The cache holds no gradient: computed without autograd, so that
            # the same kernels fill it whether or not the caller records one.
            with torch.no_grad():
                cls_features = self.encode_text(token_ids, padding_mask, training=False)[0]
            self._class_embedding_cache = ops.stop_gradient(cls_features)
        return self._class_embedding_cache

    def invalidate_class_embeddings(self):
        """Drop the cached class embeddings: the next inference recomputes them."""
        self._class_embedding_cache = None

    # ------------------------------------------------------------------
    # Images
    # ------------------------------------------------------------------
    def encode_images(self, images):
        """Frozen encoder tokens `(B, S, E)` for raw images (the cacheable part)."""
        return ops.stop_gradient(self.image_encoder(self.preprocessor(images)))

    def image_queries(self, image_features, training=False):
        """Projected, normalised query features `(B, K, P)` from encoder tokens."""
        # The vision LayerNorm's γ and β are folded into every cross-attention
        # projection (see `QFormerBackbone.encode_queries`): the normalised
        # tokens are constants of the frozen encoder, so the backward pass
        # skips their gradient, the largest matrix product of the query path.
        norm = self.vision_layer_norm
        normalized = ops.layer_normalization(
            ops.cast(image_features, "float32"), epsilon=norm.epsilon
        )
        queries = self.qformer.encode_queries(
            ops.cast(normalized, self.compute_dtype), training=training,
            image_scale=norm.gamma, image_shift=norm.beta,
        )
        return l2_normalize(self.vision_proj(queries))

    def classify(self, image_queries, class_embeddings):
        """Logits `(B, C)`: `a · max_k sim(q̂_k, ê_c) + b`, always in float32.

        Under a mixed-precision policy the features arrive in bfloat16 or
        float16; scores computed at that precision (8 bits of mantissa for
        bfloat16) tie many images, and AP counts ties.
        """
        similarity = ops.einsum("bkp,cp->bkc", ops.cast(image_queries, "float32"),
                                ops.cast(class_embeddings, "float32"))
        return self.logit_scale * ops.max(similarity, axis=1) + self.logit_bias

    def call(self, inputs, training=False):
        _check_not_a_list(inputs)
        if not isinstance(inputs, dict):
            inputs = {"images": inputs}
        if "image_features" in inputs and inputs["image_features"] is not None:
            features = ops.cast(inputs["image_features"], self.compute_dtype)
            width = self.image_encoder.hidden_dim
            if len(features.shape) != 3 or features.shape[-1] != width:
                raise ValueError(
                    "`image_features` must be encoder tokens of shape (batch, tokens, "
                    f"{width}). Received: {tuple(features.shape)}"
                )
        elif "images" in inputs:
            features = self.encode_images(inputs["images"])
        else:
            raise ValueError(
                "DPVLPA needs `images` or `image_features`. Received keys: "
                f"{sorted(inputs)}"
            )
        queries = self.image_queries(features, training=training)
        outputs = {"image_queries": queries}
        needs_classes = not (training and self.phase == "pretrain")
        if needs_classes:
            class_embeddings = self.class_embeddings(training=training)
            logits = self.classify(queries, class_embeddings)
            outputs.update(
                class_embeddings=class_embeddings,
                logits=logits,
                probabilities=ops.sigmoid(logits),
            )
        if inputs.get("token_ids") is not None:
            token_ids = inputs["token_ids"]
            if inputs.get("padding_mask") is None:
                raise ValueError(
                    "`token_ids` need their `padding_mask`: both come from "
                    "`model.tokenize(captions)`."
                )
            padding_mask = ops.cast(inputs["padding_mask"], "bool")
            text_cls, text_tokens = self.encode_text(token_ids, padding_mask, training)
            sep = ops.not_equal(token_ids, self.tokenizer.sep_token_id)
            not_cls = ops.greater(ops.arange(ops.shape(token_ids)[1]), 0)[None, :]
            outputs.update(
                text_cls=text_cls,
                text_tokens=text_tokens,
                token_mask=ops.logical_and(ops.logical_and(padding_mask, sep), not_cls),
            )
        return outputs

    # ------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------
    def compile(
        self,
        optimizer="adamw",
        phase="finetune",
        class_freq=None,
        co_occurrence=None,
        lambda_dqr=1.0,
        lambda_coa=1.0,
        beta=1.0,
        qcl_weight=1.0,
        tail_threshold=20,
        dqr_reweighting=True,
        classification_loss_options=None,
        metrics=None,
        **kwargs,
    ):
        """Configures one training phase.

        Args:
            optimizer: a Keras optimizer (see `kdpvlpa.training.make_optimizer`).
            phase: `"pretrain"` (GCL + QCL) or `"finetune"`
                (CLS + λ₁·GCL-DQR + λ₂·COA).
            class_freq: `(C,)` training image count per class (finetune).
            co_occurrence: `(C, C)` expected structure `Q_co` (finetune;
                `kdpvlpa.losses.co_occurrence_matrix` of the training labels).
            lambda_dqr, lambda_coa, beta: loss weights λ₁, λ₂, β of eq. 5–6.
            qcl_weight: weight of QCL in phase 1 (1 in the paper; 0 skips it).
            dqr_reweighting: bool. False replaces the DQR weights by ones
                (plain GCL with a mean over queries), for ablations.
            tail_threshold: int. Tail classes have fewer training images.
            classification_loss_options: dict of `classification_loss`
                options (`gamma_pos`, `gamma_neg`, `clip`) for ASL/focal.
            metrics: metrics on the predicted probabilities (finetune), e.g.
                `kdpvlpa.metrics.MeanAveragePrecision()`.
        """
        if phase not in PHASES:
            raise ValueError(f"`phase` must be one of {PHASES}. Received: {phase!r}")
        for key in ("loss", "loss_weights"):
            if kwargs.pop(key, None) is not None:
                raise ValueError(
                    f"DPVLPA.compile does not take `{key}`: the phase sets the loss "
                    "(pretrain: GCL + `qcl_weight`·QCL; finetune: CLS + "
                    "`lambda_dqr`·GCL-DQR + `lambda_coa`·COA)."
                )
        num_classes = len(self.class_names)
        if phase == "finetune":
            if class_freq is None or co_occurrence is None:
                raise ValueError(
                    "phase='finetune' needs `class_freq` (C,) and `co_occurrence` "
                    "(C, C) from the training labels."
                )
            class_freq = np.asarray(class_freq, "float32").reshape(-1)
            co_occurrence = np.asarray(co_occurrence, "float32")
            if class_freq.shape != (num_classes,) or co_occurrence.shape != (num_classes,) * 2:
                raise ValueError(
                    f"The model has {num_classes} classes, but class_freq has shape "
                    f"{class_freq.shape} and co_occurrence {co_occurrence.shape}."
                )
        self.phase = phase
        self.class_freq = class_freq
        self.co_occurrence = None if co_occurrence is None else ops.convert_to_tensor(co_occurrence)
        self.lambda_dqr = float(lambda_dqr)
        self.lambda_coa = float(lambda_coa)
        self.beta = float(beta)
        self.qcl_weight = float(qcl_weight)
        self.tail_threshold = tail_threshold
        self.dqr_reweighting = bool(dqr_reweighting)
        self.classification_loss_options = dict(classification_loss_options or {})
        # Checked now, not at the first training step after the data loaded:
        # the options are `classification_loss`'s keyword arguments.
        known = [k for k in inspect.signature(classification_loss).parameters
                 if k not in ("labels", "logits")]
        unknown = sorted(set(self.classification_loss_options) - set(known))
        if unknown:
            raise ValueError(
                f"Unknown `classification_loss_options` {unknown}: the options are "
                f"{', '.join(f'`{k}`' for k in known)}."
            )
        ClassificationLoss(**self.classification_loss_options)
        if self.image_encoder.trainable:
            raise ValueError(
                "DP-VLPA keeps its CLIP image encoder frozen (the feature cache "
                "and METHOD.md rely on it), but `image_encoder.trainable` is True. "
                "Set `model.image_encoder.trainable = False`."
            )
        if metrics and phase == "pretrain":
            raise ValueError(
                "phase='pretrain' computes no class probabilities, so it takes no "
                "`metrics`; give them when compiling for phase='finetune'."
            )
        self._set_phase_trainable()
        names = ("gcl", "qcl") if phase == "pretrain" else ("cls", "gcl_dqr", "coa")
        # Kept out of Keras' layer tracking (the model is already built); the
        # `metrics` property exposes them so `fit` resets and logs them.
        object.__setattr__(
            self, "loss_trackers", {n: keras.metrics.Mean(name=f"{n}_loss") for n in names}
        )
        # Keras keeps the metrics of an earlier compile when given none; here
        # each compile sets its phase's metrics (none: no stale `map` logs).
        self._compile_metrics = None
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def _set_phase_trainable(self):
        # The classifier's scale and bias only receive gradients in phase 2.
        if self.phase is not None and self.trainable:
            self.logit_scale.trainable = self.phase == "finetune"
            self.logit_bias.trainable = self.phase == "finetune"

    @property
    def trainable(self):
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        # Keras sets every sub-layer and variable; the image encoder stays
        # frozen whatever the model's flag, and the classifier's scale and
        # bias follow the compiled phase.
        keras.Model.trainable.fset(self, value)
        if hasattr(self, "image_encoder"):
            self.image_encoder.trainable = False
        if hasattr(self, "logit_bias"):
            self._set_phase_trainable()

    def _layer_paths(self):
        """`(path, layer)` of every sub-layer that owns weights, parents first,
        with paths `name/name/...`; the always-frozen image encoder is left out."""

        def walk(layer, prefix):
            for child in layer._flatten_layers(include_self=False, recursive=False):
                if child is self.image_encoder or not child.weights:
                    continue
                path = prefix + child.name
                yield path, child
                yield from walk(child, path + "/")

        return list(walk(self, ""))

    def _frozen_layer_paths(self):
        """Paths of the frozen layers; a frozen layer's sub-layers are not
        listed: freezing it again freezes them."""
        paths = []
        for path, layer in self._layer_paths():
            if not layer.trainable and not any(path.startswith(p + "/") for p in paths):
                paths.append(path)
        return paths

    def _freeze_layer_paths(self, paths):
        layers = dict(self._layer_paths())
        missing = sorted(set(paths) - set(layers))
        if missing:
            raise ValueError(
                f"`frozen_layers` names layers this model does not have: {missing}"
            )
        for path in paths:
            layers[path].trainable = False

    @property
    def metrics(self):
        # A term that was not computed since the last reset (GCL-DQR on data
        # without captions, QCL with `qcl_weight=0`) is left out, rather than
        # logged as 0; so `metrics_names` matches `evaluate`'s plain list.
        # Leaving an empty tracker out of a reset changes nothing.
        trackers = [
            t for t in getattr(self, "loss_trackers", {}).values()
            if float(ops.convert_to_numpy(t.count)) > 0
        ]
        return super().metrics + trackers

    def loss_terms(self, y, y_pred, training=True):
        """The phase's loss terms as a dict of scalars (unweighted).

        Outside training, fine-tuning inputs without captions give the terms
        that need none: `cls` and `coa`.
        """
        tau = ops.clip(self.temperature, *TEMPERATURE_RANGE)
        queries = y_pred["image_queries"]
        captionless_eval = not training and self.phase == "finetune"
        if "text_cls" not in y_pred and not captionless_eval:
            raise ValueError(
                f"Phase {self.phase!r} trains on image–caption pairs: the inputs "
                "need `token_ids` and `padding_mask` of the captions."
            )
        if self.phase == "pretrain":
            if y is not None:
                raise ValueError(
                    "phase='pretrain' trains on image–caption pairs and takes no "
                    "targets `y`; pass the inputs alone (labels are for "
                    "phase='finetune')."
                )
            terms = {"gcl": global_contrastive_loss(queries, y_pred["text_cls"], tau)}
            if self.qcl_weight:
                terms["qcl"] = query_contrastive_loss(
                    queries, y_pred["text_tokens"], y_pred["token_mask"], tau
                )
            return terms
        if y is None:
            raise ValueError("phase='finetune' needs multi-hot labels as targets `y`.")
        if len(self.class_freq) != len(self.class_names):
            raise ValueError(
                f"The model was compiled for phase='finetune' with "
                f"{len(self.class_freq)} classes and now has {len(self.class_names)} "
                "(`set_class_names`). Compile again with the `class_freq` and "
                "`co_occurrence` of the new classes."
            )
        y = ops.cast(y, "float32")
        if len(y.shape) != 2 or y.shape[1] != len(self.class_names):
            raise ValueError(
                f"Labels must have shape (batch, {len(self.class_names)}) for the "
                f"model's {len(self.class_names)} classes. Received {tuple(y.shape)}"
            )
        class_embeddings = y_pred["class_embeddings"]
        terms = {
            "cls": classification_loss(y, y_pred["logits"], **self.classification_loss_options),
        }
        if "text_cls" in y_pred:
            if self.dqr_reweighting:
                weights = dqr_weights(
                    queries, class_embeddings, y, self.class_freq,
                    tail_threshold=self.tail_threshold,
                )
            else:
                weights = ops.ones(ops.shape(queries)[:2], dtype=queries.dtype)
            terms["gcl_dqr"] = weighted_contrastive_loss(
                queries, y_pred["text_cls"], weights, tau
            )
        terms["coa"] = co_occurrence_loss(
            queries, class_embeddings, self.co_occurrence, tau, beta=self.beta
        )
        return terms

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if self.phase is None:
            raise RuntimeError("Call `compile(phase=...)` before training.")
        if sample_weight is not None:
            raise ValueError(
                "DPVLPA's losses take no per-image weights, so `sample_weight` "
                "and `class_weight` (which Keras turns into sample weights from "
                "the argmax of the labels, meaningless for multi-label targets) "
                "are not supported. The long tail is handled by DQR "
                "(`lambda_dqr`) and the asymmetric loss "
                "(`classification_loss_options`)."
            )
        terms = self.loss_terms(y, y_pred, training=training)
        weights = {"gcl": 1.0, "qcl": self.qcl_weight, "cls": 1.0,
                   "gcl_dqr": self.lambda_dqr, "coa": self.lambda_coa}
        total = sum(weights[n] * v for n, v in terms.items())
        if not math.isfinite(float(ops.convert_to_numpy(ops.stop_gradient(total)))):
            bad = [n for n, v in terms.items()
                   if not math.isfinite(float(ops.convert_to_numpy(ops.stop_gradient(v))))]
            terms_text = ", ".join(bad) or "total"
            if training:
                raise FloatingPointError(
                    f"The {self.phase} loss is not finite: term(s) {terms_text} "
                    "became NaN or infinite. fit was stopped before this step changed "
                    "any weight (checkpoints already written are intact). Lower the "
                    "learning rate or check the inputs."
                )
            raise FloatingPointError(
                f"The {self.phase} loss is not finite on the evaluation data: term(s) "
                f"{terms_text}. Check the inputs for NaN or infinite values."
            )
        for name, value in terms.items():
            self.loss_trackers[name].update_state(value)
        for extra in self.losses:
            total = total + extra
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if y is not None and "probabilities" in y_pred and self._compile_metrics is not None:
            self._compile_metrics.update_state(y, y_pred["probabilities"], sample_weight)
        return self.get_metrics_result()

    def train_step(self, data):
        # Class embeddings change with every update of the text path.
        self._class_embedding_cache = None
        logs = super().train_step(data)
        self._class_embedding_cache = None
        return logs

    def fit(self, *args, **kwargs):
        try:
            return super().fit(*args, **kwargs)
        finally:
            # An EMA optimizer writes its averages into the weights as fit
            # ends, after the last validation cached the class embeddings.
            self._class_embedding_cache = None

    def predict(self, x, *args, **kwargs):
        _check_not_a_list(x)
        return super().predict(x, *args, **kwargs)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self(x, training=False)["probabilities"]

    def get_compile_config(self):
        # A phase's compile arguments (class frequencies, Q_co) belong to its
        # training data; a loaded model is compiled again for the next phase.
        return None

    def load_weights(self, *args, **kwargs):
        super().load_weights(*args, **kwargs)
        self._class_embedding_cache = None

    def set_weights(self, weights):
        super().set_weights(weights)
        self._class_embedding_cache = None

    # ------------------------------------------------------------------
    # Serialization
    # ------------------------------------------------------------------
    def get_config(self):
        tokenizer = keras.saving.serialize_keras_object(self.tokenizer)
        # keras-hub keeps the vocabulary only as a `.keras` asset; without it
        # here, `from_config` (and `clone_model`) builds a model that cannot
        # tokenise its prompts.
        if getattr(self.tokenizer, "vocabulary", None) is not None:
            tokenizer["config"]["vocabulary"] = list(self.tokenizer.get_vocabulary())
        config = {
            "name": self.name,
            "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
            "image_encoder": keras.saving.serialize_keras_object(self.image_encoder),
            "qformer": keras.saving.serialize_keras_object(self.qformer),
            "tokenizer": tokenizer,
            "class_names": list(self.class_names),
            "projection_dim": self.projection_dim,
            "temperature": self.initial_temperature,
            "sequence_length": self.sequence_length,
            "prompt_template": self.prompt_template,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }
        if not self.preprocessor.crop_to_aspect_ratio:  # 0.1.0 files lack the key
            config["crop_to_aspect_ratio"] = False
        # Keras keeps only constructor arguments; these keep the layers a user
        # froze by hand (`model.qformer.trainable = False`). Written only when
        # needed, so that other files stay readable by kdpvlpa 0.1.0.
        frozen = self._frozen_layer_paths() if self.trainable else []
        if not self.trainable:
            config["trainable"] = False
        if frozen:
            config["frozen_layers"] = frozen
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("image_encoder", "qformer", "tokenizer"):
            if isinstance(config[key], dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.saving.deserialize_keras_object(config["dtype"])
        frozen_layers = config.pop("frozen_layers", [])
        model = cls(**config)
        model._freeze_layer_paths(frozen_layers)
        return model
