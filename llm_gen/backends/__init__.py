"""Caption backends behind one interface; each imports its engine lazily."""

from llm_gen.backends.base import BackendError, CaptionBackend, FailedAnswer, SamplingSettings

BACKENDS = ("template", "vllm", "openai", "transformers")


def make_backend(name, sampling=None, **options):
    """Build a backend by name.

    Args:
        name: str. One of `BACKENDS`.
        sampling: `SamplingSettings`.
        **options: the backend's own arguments (see each class).
    """
    if name == "template":
        from llm_gen.backends.template_backend import TemplateBackend

        return TemplateBackend(sampling=sampling)
    if name == "vllm":
        from llm_gen.backends.vllm_backend import VLLMBackend

        return VLLMBackend(sampling=sampling, **options)
    if name == "openai":
        from llm_gen.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(sampling=sampling, **options)
    if name == "transformers":
        from llm_gen.backends.transformers_backend import TransformersBackend

        return TransformersBackend(sampling=sampling, **options)
    raise ValueError(f"Unknown backend {name!r}; expected one of {BACKENDS}.")


__all__ = [
    "BACKENDS", "BackendError", "CaptionBackend", "FailedAnswer", "SamplingSettings",
    "make_backend",
]
