from kdpvlpa.models.qformer.qformer_backbone import QFormerBackbone
