"""Models: the frozen CLIP image encoder, the Q-Former and the DP-VLPA task."""

from kdpvlpa.models.clip.clip_vision_encoder import CLIPVisionEncoder
from kdpvlpa.models.dp_vlpa.dp_vlpa import DPVLPA
from kdpvlpa.models.dp_vlpa.dp_vlpa_image_preprocessor import DPVLPAImagePreprocessor
from kdpvlpa.models.qformer.qformer_backbone import QFormerBackbone

__all__ = ["CLIPVisionEncoder", "DPVLPA", "DPVLPAImagePreprocessor", "QFormerBackbone"]
