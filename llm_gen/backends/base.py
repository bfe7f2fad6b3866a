"""The interface every caption backend implements."""

import abc
import dataclasses
import hashlib


class BackendError(RuntimeError):
    """Raised when a backend cannot be built or a model call fails."""


class FailedAnswer(str):
    """The answer to a prompt the engine refused (e.g. longer than the
    model's context): empty text, with the engine's reason. That image gets
    the template caption at once, without retries (the same prompt would be
    refused again), instead of stopping the whole run."""

    def __new__(cls, reason):
        answer = super().__new__(cls, "")
        answer.reason = str(reason)
        return answer


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """Sampling settings shared by the LLM backends; stored in every record.

    Args:
        temperature: float. Softmax temperature; 0 is greedy.
        top_p: float. Nucleus sampling mass.
        max_tokens: int. Most new tokens of one answer.
        seed: int. Base seed; each image and attempt derives its own from it.
    """

    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 256
    seed: int = 42

    def as_dict(self):
        return dataclasses.asdict(self)


class CaptionBackend(abc.ABC):
    """A way to answer chat conversations, batched.

    Subclasses set `name`, `model` and `sampling`, and implement `generate`.
    `supports_system_role` is False for chat templates that reject a system
    message (Gemma); the prompt is then folded into the user message.
    """

    name = "base"
    is_template = False
    supports_system_role = True

    def __init__(self, model=None, sampling=None):
        self.model = model
        self.sampling = sampling or SamplingSettings()

    @abc.abstractmethod
    def generate(self, conversations, seeds):
        """Answer each conversation.

        Args:
            conversations: list of message lists (`{"role", "content"}`).
            seeds: list of int, one per conversation.

        Returns:
            A list of str, one answer per conversation, in order; a
            `FailedAnswer` for a conversation the engine refused.
        """

    def describe(self):
        """Backend fields of a record."""
        return {"backend": self.name, "model": self.model}

    def close(self):
        pass


def chat_template_digest(text):
    """How a record names a `--chat-template` (None for the model's own): a
    short SHA-256 of its text, so that a resumed file or merged shards are
    known to share it."""
    if not text:
        return None
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def clean_output(text):
    """An answer as text that can always be written as UTF-8 JSON."""
    if text is None:
        return ""
    return text.encode("utf-8", "replace").decode("utf-8").strip()


def chat_template_accepts_system(apply_chat_template):
    """Whether a tokenizer's chat template keeps a system message.

    Args:
        apply_chat_template: callable(messages) -> str.

    Raises:
        BackendError: the template fails even on a lone user message (a
            syntax error, a template that raises): every prompt would fail.
    """
    marker = "kdpvlpa-system-probe"
    try:
        text = apply_chat_template(
            [{"role": "system", "content": marker}, {"role": "user", "content": "hi"}]
        )
    except Exception:  # templates raise their own error types (jinja, ValueError)
        # Some refuse a system role (Gemma's); they must still take a user message.
        try:
            apply_chat_template([{"role": "user", "content": "hi"}])
        except Exception as error:
            raise BackendError(
                "The chat template fails on a plain user message, so it would fail "
                f"on every prompt: {type(error).__name__}: {error}"
            ) from None
        return False
    return marker in text
