"""STAG caption generation for kdpvlpa (paper Figure 3, METHOD.md).

Writes one JSONL record per training image: a tail-aware scene description
from an LLM (vLLM, an OpenAI-compatible server or transformers) or from a
label template, validated against the STAG rules. The JSONL file is the only
contract with training. Importing this package imports neither keras nor
vllm; backends import their engine when built.
"""

from llm_gen.generate import Shard, generate_captions
from llm_gen.prompt import PROMPT_VERSION, build_messages
from llm_gen.records import CaptionFileError, read_records
from llm_gen.splits import ImageItem, Split, SplitError, load_split
from llm_gen.template import TEMPLATE_VERSION, template_caption
from llm_gen.validate import count_class_mentions, strip_tags, validate, word_count

__all__ = [
    "PROMPT_VERSION",
    "TEMPLATE_VERSION",
    "CaptionFileError",
    "ImageItem",
    "Shard",
    "Split",
    "SplitError",
    "build_messages",
    "count_class_mentions",
    "generate_captions",
    "load_split",
    "read_records",
    "strip_tags",
    "template_caption",
    "validate",
    "word_count",
]
