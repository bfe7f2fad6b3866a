"""The STAG prompt (paper, Figure 3), versioned.

The version is written into every output record; change it whenever the text
below changes, so that captions made with different prompts can be told apart.
"""

from llm_gen.validate import MAX_WORDS, MIN_WORDS

PROMPT_VERSION = "stag-fig3-v2"

SYSTEM_PROMPT = "You are a scene description generator."

_USER_TEMPLATE = """\
Generate a detailed scene description based on: {caption_part}labels [{labels}].
Tail classes are marked with *.
1. First describe the tail classes ({tail_labels}), then the other objects. For tail classes, explain their roles in the scene.
2. Mention how the tail classes interact with the common objects.
3. Keep the sentences concise: {min_words}-{max_words} words in total.
4. Mark every mention of a tail class with <tail> and </tail>, for example <tail>{example}</tail>. Do not mark any other word.
{strict_rule}Answer with the description only."""

_USER_TEMPLATE_NO_TAIL = """\
Generate a detailed scene description based on: {caption_part}labels [{labels}].
1. Describe the labelled objects and explain their roles in the scene.
2. Mention how the objects interact with each other.
3. Keep the sentences concise: {min_words}-{max_words} words in total.
4. No label is a tail class here, so do not use any <tail> tag.
{strict_rule}Answer with the description only."""

# With `--strict-validation`, whose checks refuse any class the image lacks,
# even untagged: the paper's prompt (Figure 3) has no such rule.
_STRICT_RULE = "5. Name only the labelled objects; do not name any other object class.\n"

_RETRY_TEMPLATE = """\
Your description breaks these rules:
{violations}
Write the description again, following every rule. Answer with the description only."""


def format_labels(labels, tail_labels):
    """`person, surfboard*`: tail classes marked with `*` (Figure 3)."""
    tail = set(tail_labels)
    return ", ".join(f"{name}*" if name in tail else name for name in labels)


def user_prompt(item, strict=False):
    """The user message for one `ImageItem`; `strict` adds the rule that
    `validate(strict=True)` checks beyond the paper's."""
    caption = (item.original_caption or "").strip()
    caption_part = f'caption "{caption}" and ' if caption else ""
    template = _USER_TEMPLATE if item.tail_labels else _USER_TEMPLATE_NO_TAIL
    return template.format(
        caption_part=caption_part,
        labels=format_labels(item.labels, item.tail_labels),
        tail_labels=", ".join(item.tail_labels),
        example=item.tail_labels[0] if item.tail_labels else "",
        min_words=MIN_WORDS,
        max_words=MAX_WORDS,
        strict_rule=_STRICT_RULE if strict else "",
    )


def retry_message(violations):
    """The user message that feeds the violations of an output back."""
    return _RETRY_TEMPLATE.format(violations="\n".join(f"- {v}" for v in violations))


def build_messages(item, history=(), system_role=True, strict=False):
    """The chat messages for one image.

    Args:
        item: `ImageItem`.
        history: sequence of `(output, violations)` from earlier attempts; each
            adds the model's answer and a retry message with its violations.
        system_role: bool. False folds the system prompt into the first user
            message, for chat templates without a system role (Gemma).
        strict: bool. The prompt for `--strict-validation`: it adds the rule
            "name only the labelled objects".

    Returns:
        A list of `{"role": ..., "content": ...}` dicts.
    """
    first = user_prompt(item, strict)
    if system_role:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": first},
        ]
    else:
        messages = [{"role": "user", "content": f"{SYSTEM_PROMPT}\n\n{first}"}]
    for output, violations in history:
        messages.append({"role": "assistant", "content": output})
        messages.append({"role": "user", "content": retry_message(violations)})
    return messages
