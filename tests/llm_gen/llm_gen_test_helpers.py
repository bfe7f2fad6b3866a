"""Shared helpers of the llm_gen tests: a tiny split on disk and scripted
backends. Run as a script, it generates captions with a slow backend (the
crash test kills it)."""

import json
import re
import sys
import time

from llm_gen.backends.base import CaptionBackend
from llm_gen.splits import ImageItem
from llm_gen.template import template_caption

# Frequencies below 20 make a tail class.
CLASS_NAMES = ["person", "surfboard", "pottedplant", "dog", "hot dog", "bus"]
CLASS_FREQ = [120, 5, 40, 60, 3, 12]


def write_tiny_split(directory, num_images=12, with_captions=True):
    """A split JSON (and a caption JSON) in the packaged format."""
    label_cycle = [[0, 1], [0, 2], [3], [0, 4, 3], [5, 0], [2, 3], [1, 5], [0]]
    ids = [f"img_{i:03d}" for i in range(num_images)]
    labels = [sorted(label_cycle[i % len(label_cycle)]) for i in range(num_images)]
    split = {
        "dataset": "tiny",
        "class_names": CLASS_NAMES,
        "image_ids": ids,
        "labels": labels,
        "class_freq": CLASS_FREQ,
    }
    split_path = directory / "tiny_train.json"
    split_path.write_text(json.dumps(split))
    captions_path = None
    if with_captions:
        captions_path = directory / "tiny_captions.json"
        captions_path.write_text(json.dumps({
            "image_ids": ids,
            "captions": [f"a photo number {i} with a surfboard" for i in range(num_images)],
        }))
    return split_path, captions_path


_LABELS_RE = re.compile(r"labels \[(.*?)\]")


def labels_from_prompt(conversation):
    """Read back the labels (and the tail marks) from the first user message."""
    first_user = next(m["content"] for m in conversation if m["role"] == "user")
    names = [n.strip() for n in _LABELS_RE.search(first_user).group(1).split(",")]
    labels = tuple(n.rstrip("*") for n in names)
    tails = tuple(n.rstrip("*") for n in names if n.endswith("*"))
    return labels, tails


def valid_answer(conversation):
    """A valid description for the conversation's image (the template)."""
    labels, tails = labels_from_prompt(conversation)
    return template_caption(ImageItem(image_id="x", labels=labels, tail_labels=tails))


class ScriptedBackend(CaptionBackend):
    """Answers with `script(conversation, attempt)`; attempt = number of
    assistant turns already in the conversation + 1. Records every call."""

    name = "scripted"

    def __init__(self, script, delay=0.0):
        super().__init__(model="scripted-model")
        self.script = script
        self.delay = delay
        self.calls = []
        self.closed = False

    def generate(self, conversations, seeds):
        self.calls.append((list(conversations), list(seeds)))
        if self.delay:
            time.sleep(self.delay)
        return [
            self.script(c, 1 + sum(m["role"] == "assistant" for m in c))
            for c in conversations
        ]

    def close(self):
        self.closed = True


def always_valid(conversation, attempt):
    return valid_answer(conversation)


def valid_on_second(conversation, attempt):
    return "far too short" if attempt == 1 else valid_answer(conversation)


def never_valid(conversation, attempt):
    return "a <tail>dog</tail> without enough words"


if __name__ == "__main__":
    # python llm_gen_test_helpers.py SPLIT_FILE OUT DELAY
    from llm_gen.generate import generate_captions
    from llm_gen.splits import load_split

    split_file, out, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    split = load_split(split_file=split_file)
    generate_captions(
        split, ScriptedBackend(valid_on_second, delay=delay), out, batch_size=1
    )
