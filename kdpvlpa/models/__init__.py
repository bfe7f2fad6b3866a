"""Models: the frozen CLIP image encoder, the Q-Former and the DP-VLPA task."""

from kdpvlpa.models.clip.clip_vision_encoder import CLIPVisionEncoder
from kdpvlpa.models.qformer.qformer_backbone import QFormerBackbone

__all__ = ["CLIPVisionEncoder", "QFormerBackbone"]
