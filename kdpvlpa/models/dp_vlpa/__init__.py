from kdpvlpa.models.dp_vlpa.dp_vlpa import DPVLPA
from kdpvlpa.models.dp_vlpa.dp_vlpa_image_preprocessor import DPVLPAImagePreprocessor
