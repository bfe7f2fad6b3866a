"""Checking a generated description against the STAG rules (METHOD.md).

By default a description is valid when every tail class of the image is
mentioned inside `<tail>...</tail>`, no absent class and no non-tail class is
tagged, the tags are well formed, and the clean text (tags removed) has 50-80
words: METHOD.md's rules. Well formed includes that no tag sits between two
letters, which would join or split words of the clean text (our reading).
`strict=True` adds two rules: every mention of a tail class is tagged, and no
dataset class that the image lacks is mentioned at all, even untagged.
`validate` returns the broken rules as sentences that are fed back to the
model on a retry.
"""

import functools
import re

MIN_WORDS = 50
MAX_WORDS = 80

OPEN_TAG = "<tail>"
CLOSE_TAG = "</tail>"

_TAG_RE = re.compile(r"<\s*(/?)\s*tail\s*>", re.IGNORECASE)
# One or more tags written back to back.
_TAG_RUN_RE = re.compile(r"(?:<\s*/?\s*tail\s*>)+", re.IGNORECASE)
_ANY_TAG_RE = re.compile(r"<[^<>]*>")
_WORD_RE = re.compile(r"[^\W_]", re.UNICODE)

# Other names people and models use for a class. Ambiguous single words such as
# "table", "plant" or "monitor" are deliberately left out: they would turn
# ordinary sentences into mentions of absent classes.
ALIASES = {
    "aeroplane": ("airplane", "plane"),
    "airplane": ("aeroplane", "plane"),
    "motorbike": ("motorcycle",),
    "motorcycle": ("motorbike",),
    "tv monitor": ("tvmonitor", "tv", "television"),
    "tv": ("television", "tv monitor"),
    "dining table": ("diningtable",),
    "potted plant": ("pottedplant", "houseplant"),
    "sofa": ("couch",),
    "couch": ("sofa",),
    "person": ("people", "persons"),
    "cell phone": ("mobile phone", "cellphone", "smartphone"),
    "hair drier": ("hair dryer", "hairdryer"),
    "sports ball": ("ball",),
    "donut": ("doughnut",),
}

# Plurals that the suffix rules below get wrong.
_IRREGULAR_PLURALS = {
    "person": ("people", "persons"),
    "mouse": ("mice", "mouses"),
    "knife": ("knives",),
    "sheep": ("sheep",),
    "man": ("men",),
    "woman": ("women",),
    "child": ("children",),
    "foot": ("feet",),
    "tooth": ("teeth",),
    "goose": ("geese",),
    "broccoli": ("broccoli",),
    "scissors": ("scissors",),
    "skis": ("skis", "ski"),
    "bus": ("buses", "busses"),
    "tomato": ("tomatoes",),
    "potato": ("potatoes",),
}


def plural_forms(word):
    """Return the singular and plural spellings of an English noun."""
    word = word.lower()
    if word in _IRREGULAR_PLURALS:
        return (word,) + _IRREGULAR_PLURALS[word]
    if re.search(r"(s|x|z|ch|sh)$", word):
        return (word, word + "es")
    if re.search(r"[^aeiou]y$", word):
        return (word, word[:-1] + "ies")
    if word.endswith("fe"):
        return (word, word[:-2] + "ves", word + "s")
    if word.endswith("f"):
        return (word, word[:-1] + "ves", word + "s")
    return (word, word + "s")


def _phrase_pattern(phrase):
    """Regex for a phrase whose last word may be plural; words may be joined by
    spaces or hyphens."""
    words = phrase.lower().split()
    head = [re.escape(w) for w in words[:-1]]
    last = "(?:" + "|".join(re.escape(f) for f in plural_forms(words[-1])) + ")"
    return r"[\s\-]+".join(head + [last])


@functools.lru_cache(maxsize=64)
def _class_matcher(class_names):
    """One regex over every spelling of every class, longest first, so that
    "hot dog" wins over "dog" and "teddy bear" over "bear"."""
    spellings = []
    for name in class_names:
        for spelling in (name,) + ALIASES.get(name.lower(), ()):
            spellings.append((spelling, name))
    owner = {}
    patterns = []
    for spelling, name in sorted(spellings, key=lambda s: -len(s[0])):
        key = spelling.lower()
        if key in owner:
            continue
        owner[key] = name
        patterns.append((name, _phrase_pattern(spelling)))
    groups = {}
    alternatives = []
    for i, (name, pattern) in enumerate(patterns):
        group = f"c{i}"
        groups[group] = name
        alternatives.append(f"(?P<{group}>{pattern})")
    regex = re.compile(
        r"(?<![^\W_])(?:" + "|".join(alternatives) + r")(?![^\W_])",
        re.IGNORECASE,
    )
    return regex, groups


def find_mentions(text, class_names):
    """Find class mentions in text.

    Args:
        text: str. Clean text (or a span of it).
        class_names: iterable of str. The classes to look for.

    Returns:
        A list of `(class_name, start, end)`, in text order, non-overlapping.
    """
    class_names = tuple(dict.fromkeys(class_names))
    if not class_names:
        return []
    regex, groups = _class_matcher(class_names)
    return [
        (groups[m.lastgroup], m.start(), m.end()) for m in regex.finditer(text)
    ]


def strip_tags(text):
    """Remove `<tail>` tags and normalise whitespace: the clean caption.

    Tags are removed without a trace, so `two <tail>surfboard</tail>'s` reads
    "two surfboard's"; `validate` rejects a tag between two letters
    (`a<tail>dog</tail>`), which would join words here.
    """
    text = _TAG_RE.sub("", text)
    text = re.sub(r"\s+", " ", text).strip()
    # "the <tail> surfboard </tail> ." leaves a space before punctuation.
    return re.sub(r"\s+([.,;:!?])", r"\1", text)


def word_count(text):
    """Words of a text: whitespace-separated tokens holding a letter or digit."""
    return sum(1 for token in text.split() if _WORD_RE.search(token))


def parse_tags(text):
    """Split a raw caption into tagged spans and tag errors.

    Returns:
        `(spans, errors)`: spans is a list of `(start, end)` of the text inside
        each well-formed `<tail>...</tail>` pair, errors a list of messages.
    """
    errors = []
    spans = []
    open_at = None
    for m in _TAG_RE.finditer(text):
        closing = m.group(1) == "/"
        if m.group(0) != (CLOSE_TAG if closing else OPEN_TAG):
            errors.append(
                f"tag {m.group(0)!r} should be written exactly "
                f"{CLOSE_TAG if closing else OPEN_TAG!r}"
            )
        if not closing:
            if open_at is not None:
                errors.append("a <tail> tag opens inside another <tail> span")
            open_at = m.end()
        else:
            if open_at is None:
                errors.append("a </tail> tag closes a span that was never opened")
                continue
            if not text[open_at:m.start()].strip():
                errors.append("an empty <tail></tail> pair")
            spans.append((open_at, m.start()))
            open_at = None
    if open_at is not None:
        errors.append("a <tail> tag is never closed")
    for m in _TAG_RUN_RE.finditer(text):
        before, after = text[m.start() - 1:m.start()], text[m.end():m.end() + 1]
        if _WORD_RE.match(before) and _WORD_RE.match(after):
            snippet = (re.search(r"\S*$", text[:m.start()]).group(0) + m.group(0)
                       + re.match(r"\S*", text[m.end():]).group(0))
            errors.append(
                f"a tag between two letters ({snippet!r}) joins or splits words; put "
                "tags around whole words, e.g. 'two <tail>surfboards</tail>'"
            )
    leftover = _TAG_RE.sub(" ", text)
    for m in _ANY_TAG_RE.finditer(leftover):
        errors.append(f"unknown tag {m.group(0)!r}; only <tail> and </tail> are allowed")
    leftover = _ANY_TAG_RE.sub(" ", leftover)
    if "<" in leftover or ">" in leftover:
        errors.append("a stray '<' or '>' (broken tag)")
    return spans, errors


def validate(text, labels, tail_labels, class_names,
             min_words=MIN_WORDS, max_words=MAX_WORDS, strict=False):
    """Check a generated description against the STAG rules.

    The default rules are METHOD.md's: every tail class of the image is
    mentioned inside `<tail>` tags; no absent class, no non-tail class and no
    span naming no class is tagged; the tags are well formed (exactly
    `<tail>` / `</tail>`, paired, not nested, not empty, no other tag, and no
    tag between two letters, which would join or split words of the clean
    text); and the clean text has `min_words`-`max_words` words.

    Args:
        text: str. The raw model output, with `<tail>` tags.
        labels: iterable of str. The image's class names.
        tail_labels: iterable of str. The image's tail classes (a subset of
            `labels`).
        class_names: iterable of str. Every class of the dataset; those not in
            `labels` may not be tagged (nor, with `strict`, mentioned).
        min_words: int. Fewest words of the clean text.
        max_words: int. Most words of the clean text.
        strict: bool. Also require that every mention of a tail class is
            tagged, and that no class the image lacks is mentioned even
            without tags (rules beyond METHOD.md).

    Returns:
        A list of violations, each a sentence; empty when the text is valid.

    Example:
    >>> validate("A <tail>surfboard</tail> ...", ["person", "surfboard"],
    ...          ["surfboard"], ["person", "surfboard", "dog"])
    ['the description has 2 words; it must have 50-80']
    """
    if not isinstance(text, str) or not text.strip():
        return ["the description is empty"]
    labels = [str(n) for n in labels]
    tail = {n.lower() for n in tail_labels}
    present = {n.lower() for n in labels}
    all_classes = tuple(dict.fromkeys(list(class_names) + labels))
    violations = []

    spans, tag_errors = parse_tags(text)
    violations.extend(dict.fromkeys(tag_errors))

    tagged_tail = set()
    span_mentions = []
    for start, end in spans:
        span_text = text[start:end]
        mentions = find_mentions(span_text, all_classes)
        span_mentions.extend((name, start + s, start + e) for name, s, e in mentions)
        if not mentions:
            violations.append(
                f"<tail>{span_text.strip()}</tail> does not name any class"
            )
        for name, _, _ in mentions:
            key = name.lower()
            if key not in present:
                violations.append(
                    f"'{name}' is tagged <tail> but is not in the image's labels"
                )
            elif key not in tail:
                violations.append(
                    f"'{name}' is tagged <tail> but is not a tail class; tag only "
                    "tail classes"
                )
            else:
                tagged_tail.add(key)

    for name in labels:
        if name.lower() in tail and name.lower() not in tagged_tail:
            violations.append(f"tail class '{name}' is not mentioned inside <tail> tags")

    if strict:
        violations.extend(_untagged_violations(text, spans, all_classes, present, tail))

    words = word_count(strip_tags(text))
    if not min_words <= words <= max_words:
        violations.append(
            f"the description has {words} words; it must have {min_words}-{max_words}"
        )
    return violations


def _untagged_violations(text, spans, all_classes, present, tail):
    """The strict rules: mentions outside the tagged spans, found on the raw
    text with the tags blanked out (same length, so positions stay
    comparable)."""
    blanked = _TAG_RE.sub(lambda m: " " * len(m.group(0)), text)
    untagged_tail = []
    unlabeled = []
    for name, s, e in find_mentions(blanked, all_classes):
        if any(a <= s and e <= b for a, b in spans):
            continue
        key = name.lower()
        if key not in present:
            unlabeled.append(name)
        elif key in tail:
            untagged_tail.append(name)
    violations = [
        f"tail class '{name}' is mentioned without <tail> tags; wrap every "
        "mention of a tail class"
        for name in dict.fromkeys(untagged_tail)
    ]
    violations.extend(
        f"mentions '{name}', which is not in the image's labels"
        for name in dict.fromkeys(unlabeled)
    )
    return violations


def count_class_mentions(text, class_name, class_names=()):
    """Count mentions of one class in a clean text (Table 4 of the paper).

    Mentions are found among all `class_names` at once, so "teddy bear" is not
    counted as a mention of "bear".
    """
    if not text:
        return 0
    names = tuple(dict.fromkeys(list(class_names) + [class_name]))
    key = class_name.lower()
    return sum(1 for name, _, _ in find_mentions(text, names) if name.lower() == key)
