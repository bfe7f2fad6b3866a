"""The `template` backend: no model, descriptions built from the labels."""

from llm_gen.backends.base import CaptionBackend
from llm_gen.template import TEMPLATE_VERSION


class TemplateBackend(CaptionBackend):
    """Writes `llm_gen.template.template_caption` for every image.

    It is the offline default and the fallback of the LLM backends; every
    record it writes says `backend: "template"` and `source: "template"`.
    """

    name = "template"
    is_template = True

    def __init__(self, sampling=None):
        super().__init__(model=None, sampling=sampling)

    def describe(self):
        return {"backend": self.name, "model": TEMPLATE_VERSION}

    def generate(self, conversations, seeds):
        raise TypeError("The template backend builds captions from labels, not chats.")
