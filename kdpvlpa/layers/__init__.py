"""Building blocks of the Q-Former and the DP-VLPA heads."""

from kdpvlpa.layers.qformer_attention import QFormerAttention
from kdpvlpa.layers.qformer_feed_forward import QFormerFeedForward
from kdpvlpa.layers.qformer_layer import QFormerLayer
from kdpvlpa.layers.token_packing import TokenPacking

__all__ = ["QFormerAttention", "QFormerFeedForward", "QFormerLayer", "TokenPacking"]
