"""A deterministic STAG description built from the labels alone.

This is what the `template` backend writes and what replaces an LLM output that
stayed invalid after every attempt. It follows the same rules as the prompt:
tail classes first and tagged, their link to the common objects, then the
other objects, 50-80 words, and no word that names a class the image lacks.
The phrasing varies with the image id, reproducibly. `TEMPLATE_VERSION` names
the wording and is stored in every record.
"""

import zlib

from llm_gen.validate import MAX_WORDS, MIN_WORDS, OPEN_TAG, CLOSE_TAG, strip_tags, word_count

TEMPLATE_VERSION = "template-v2"

_OPENINGS_TAIL = (
    "The scene centres on the {t1}, an uncommon sight that gives the picture its "
    "main point of interest.",
    "At the heart of the picture we find the {t1}, a rarely seen element that "
    "sets the theme of the whole view.",
    "The first thing to notice is the {t1}, a rare presence that defines the "
    "character of the whole setting.",
)
_MORE_TAILS = (
    "Close by, we also find the {rest}, adding another rare element with its own "
    "part in the setting."
)
_ROLE = "One can easily recognise the {t1} thanks to its clear role in the composition."
_LINK = (
    "There is a clear link between the {tails} and the {commons}, tying the rare "
    "objects to the familiar parts of the scene."
)
_ALONE = "No other labelled object appears, so the {t1} alone carries the composition."
_OTHERS = "Alongside, the frame also contains the {commons}, giving the {t1} a clear context."

_OPENINGS_COMMON = (
    "The scene shows the {c1} as its main subject, placed clearly within the frame.",
    "At the centre of the picture we find the {c1}, drawing the eye first.",
    "The view is organised around the {c1}, which is the main subject here.",
)
_MORE_COMMONS = "Around the {c1}, we also find the {rest}, adding detail and depth to the setting."
_RELATION = "There is a natural relation between the {all}, which makes the layout easy to read."

# The compact wording, for images with many labels.
_COMPACT_TAILS = "The scene centres on rare objects: the {tails}."
_COMPACT_LINK = "They appear together with the {commons}."
_COMPACT_COMMONS = "The scene shows the {commons}."

_FILLERS = (
    "Light falls evenly across the view, and each object remains easy to pick out.",
    "The colours are calm and the background stays simple, keeping attention on the "
    "main elements.",
    "Everything appears in a natural arrangement that makes the layout of the place "
    "easy to follow.",
    "Nothing in the picture looks staged, and the moment feels ordinary and real.",
    "The whole composition is balanced, with enough space around each element to "
    "see it clearly.",
    "Overall, the picture gives a calm and coherent impression of an everyday moment.",
)


def _tag(name):
    return f"{OPEN_TAG}{name}{CLOSE_TAG}"


def _join(names):
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _words(sentences):
    return word_count(strip_tags(" ".join(sentences)))


def template_caption(item):
    """Build the template description of one image.

    The full wording is used when it fits in 80 words. An image with many
    labels gets a compact wording instead, and when even that is too long the
    common objects after the first few are summed up as "other objects" (every
    tail class is always named).

    Args:
        item: `ImageItem` (its `image_id`, `labels`, `tail_labels`).

    Returns:
        The raw description, with `<tail>` tags.
    """
    seed = zlib.crc32(repr(item.image_id).encode("utf-8"))
    tails = list(item.tail_labels)
    commons = [name for name in item.labels if name not in set(tails)]
    for core, optional in _layouts(tails, commons, seed):
        text = _pad(core, optional, seed)
        if _words([text]) <= MAX_WORDS:
            break
    # The shortest layout may still be too long (dozens of tail classes in one
    # image); it is returned, and `validate` reports the length.
    return text


def _layouts(tails, commons, seed):
    """Yield `(core, optional)` sentence lists, longest wording first."""
    core = []  # always kept
    optional = []  # dropped first when the text is too long
    if tails:
        t1 = _tag(tails[0])
        core.append(_OPENINGS_TAIL[seed % len(_OPENINGS_TAIL)].format(t1=t1))
        if len(tails) > 1:
            core.append(_MORE_TAILS.format(rest=_join(_tag(t) for t in tails[1:])))
        if commons:
            core.append(
                _LINK.format(
                    tails=_join(_tag(t) for t in tails), commons=_join(commons)
                )
            )
            optional.append(_OTHERS.format(commons=_join(commons), t1=t1))
        else:
            core.append(_ALONE.format(t1=t1))
        optional.insert(0, _ROLE.format(t1=t1))
    elif commons:
        c1 = commons[0]
        core.append(_OPENINGS_COMMON[seed % len(_OPENINGS_COMMON)].format(c1=c1))
        if len(commons) > 1:
            core.append(_MORE_COMMONS.format(c1=c1, rest=_join(commons[1:])))
            optional.append(_RELATION.format(all=_join(commons)))
    else:
        core.append("The picture shows an everyday scene without any labelled object.")
    yield core, optional
    if len(tails) + len(commons) < 2:
        return
    # Compact: every name once, then fewer and fewer common objects by name.
    for kept in range(len(commons), -1, -1):
        named = commons[:kept] + (["other objects"] if kept < len(commons) else [])
        if tails:
            core = [_COMPACT_TAILS.format(tails=_join(_tag(t) for t in tails))]
            if named:
                core.append(_COMPACT_LINK.format(commons=_join(named)))
        else:
            core = [_COMPACT_COMMONS.format(commons=_join(named))]
        yield core, []


def _pad(core, optional, seed):
    """Drop optional sentences while too long, then pad with fillers."""
    optional = list(optional)
    while optional and _words(core + optional) > MAX_WORDS:
        optional.pop()
    sentences = core + optional
    start = seed % len(_FILLERS)
    fillers = _FILLERS[start:] + _FILLERS[:start]
    for filler in fillers:
        if _words(sentences) >= MIN_WORDS:
            break
        if _words(sentences + [filler]) > MAX_WORDS:
            continue
        sentences.append(filler)
    # A first filler chosen above may still leave the text short when all
    # others would overshoot; short sentences close the gap.
    for extra in ("The scene is quiet.", "Details are clear.", "All is calm."):
        if _words(sentences) >= MIN_WORDS:
            break
        sentences.append(extra)
    return " ".join(sentences)
