"""llm_gen.validate on hand-written good and bad outputs, one rule a test."""

import pytest

from llm_gen import strip_tags, validate, word_count
from llm_gen.validate import count_class_mentions, find_mentions, plural_forms

VOC = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
       "cow", "dining table", "dog", "horse", "motorbike", "person", "potted plant",
       "sheep", "sofa", "train", "tv monitor"]
COCO_SOME = ["person", "dog", "hot dog", "bear", "teddy bear", "surfboard", "skis",
             "dining table", "potted plant", "tv", "bus", "knife", "mouse"]

FILLER = ("The light is soft and even, and the colours stay calm across the whole "
          "view, so every detail remains easy to see for anyone looking at it.")


def pad(text, words=55):
    """Append neutral words until the clean text has at least `words` words."""
    extra = FILLER.split()
    i = 0
    while word_count(strip_tags(text)) < words:
        text += " " + extra[i % len(extra)]
        i += 1
    return text


SURF_GOOD = pad(
    "A man crouches on a <tail>surfboard</tail> in the water, keeping his balance "
    "as small waves ripple around him. The <tail>surfboard</tail> is his only "
    "support, and the person steers it with his weight."
)


def test_paper_example_is_valid():
    assert validate(SURF_GOOD, ["person", "surfboard"], ["surfboard"], COCO_SOME) == []


def test_spaces_inside_tags_as_in_figure_3():
    text = SURF_GOOD.replace("<tail>surfboard</tail>", "<tail> surfboard </tail>")
    assert validate(text, ["person", "surfboard"], ["surfboard"], COCO_SOME) == []
    assert "< " not in strip_tags(text) and "  " not in strip_tags(text)


def test_missing_tail_class():
    text = pad("A person stands on the beach near the water, looking at the sea.")
    v = validate(text, ["person", "surfboard"], ["surfboard"], COCO_SOME)
    assert v == ["tail class 'surfboard' is not mentioned inside <tail> tags"]


def test_untagged_mention_of_a_tail_class():
    text = SURF_GOOD + " Later the surfboard drifts away."
    # METHOD.md asks for a tagged mention, not for every mention tagged.
    assert validate(text, ["person", "surfboard"], ["surfboard"], COCO_SOME) == []
    v = validate(text, ["person", "surfboard"], ["surfboard"], COCO_SOME, strict=True)
    assert v == ["tail class 'surfboard' is mentioned without <tail> tags; wrap "
                 "every mention of a tail class"]


def test_non_tail_class_tagged():
    text = SURF_GOOD.replace("the person steers", "the <tail>person</tail> steers")
    v = validate(text, ["person", "surfboard"], ["surfboard"], COCO_SOME)
    assert v == ["'person' is tagged <tail> but is not a tail class; tag only tail classes"]


def test_absent_class_tagged_and_mentioned():
    text = SURF_GOOD + " A <tail>dog</tail> watches."
    v = validate(text, ["person", "surfboard"], ["surfboard"], COCO_SOME)
    assert "'dog' is tagged <tail> but is not in the image's labels" in v
    assert len(v) == 1


def test_unlabeled_class_mentioned_without_tag():
    text = SURF_GOOD + " Two dogs run along the shore."
    # METHOD.md forbids tagging an absent class, not naming it.
    assert validate(text, ["person", "surfboard"], ["surfboard"], COCO_SOME) == []
    v = validate(text, ["person", "surfboard"], ["surfboard"], COCO_SOME, strict=True)
    assert v == ["mentions 'dog', which is not in the image's labels"]


def test_default_rules_still_apply_beside_untagged_mentions():
    # Untagged mentions pass by default, but the other rules still hold.
    labels, tails = ["person", "surfboard"], ["surfboard"]
    untagged_only = pad("A person waits on the beach with a surfboard while two dogs "
                        "run past.")
    assert validate(untagged_only, labels, tails, COCO_SOME) == [
        "tail class 'surfboard' is not mentioned inside <tail> tags"]
    text = SURF_GOOD + " Two dogs chase a <tail>dog</tail> and the <tail>person</tail>."
    v = validate(text, labels, tails, COCO_SOME)
    assert v == ["'dog' is tagged <tail> but is not in the image's labels",
                 "'person' is tagged <tail> but is not a tail class; tag only tail classes"]
    glued = SURF_GOOD + " Later the surfboard and a<tail>surfboard</tail> drift."
    v = validate(glued, labels, tails, COCO_SOME)
    assert len(v) == 1 and "a tag between two letters" in v[0]
    short = "A <tail>surfboard</tail> and two dogs."
    assert validate(short, labels, tails, COCO_SOME) == [
        "the description has 5 words; it must have 50-80"]
    # Strict adds its two rules to the same list.
    v = validate(text, labels, tails, COCO_SOME, strict=True)
    assert v[:2] == ["'dog' is tagged <tail> but is not in the image's labels",
                     "'person' is tagged <tail> but is not a tail class; tag only "
                     "tail classes"]
    assert v[2:] == ["mentions 'dog', which is not in the image's labels"]


def test_tag_around_no_class():
    text = SURF_GOOD + " The <tail>ocean</tail> glitters."
    v = validate(text, ["person", "surfboard"], ["surfboard"], COCO_SOME)
    assert v == ["<tail>ocean</tail> does not name any class"]


@pytest.mark.parametrize(
    "broken, message",
    [
        ("<tail>surfboard", "a <tail> tag is never closed"),
        ("surfboard</tail>", "a </tail> tag closes a span that was never opened"),
        ("<tail><tail>surfboard</tail>", "a <tail> tag opens inside another <tail> span"),
        ("<tail></tail><tail>surfboard</tail>", "an empty <tail></tail> pair"),
        ("<Tail>surfboard</Tail>", "tag '<Tail>' should be written exactly '<tail>'"),
        ("<b>surf</b> <tail>surfboard</tail>",
         "unknown tag '<b>'; only <tail> and </tail> are allowed"),
        ("<tail>surfboard</tail> <tail", "a stray '<' or '>' (broken tag)"),
    ],
)
def test_malformed_tags(broken, message):
    text = pad(f"A man rides {broken} in the sea while waves roll in.")
    v = validate(text, ["person", "surfboard"], ["surfboard"], COCO_SOME)
    assert message in v


@pytest.mark.parametrize("words, ok", [(49, False), (50, True), (80, True), (81, False)])
def test_word_count_bounds_on_clean_text(words, ok):
    head = "A <tail>surfboard</tail> floats"  # 3 words once the tags are gone
    text = head + " " + " ".join(["calm"] * (words - 3))
    assert word_count(strip_tags(text)) == words
    v = validate(text, ["surfboard"], ["surfboard"], COCO_SOME)
    assert (v == []) is ok
    if not ok:
        assert v == [f"the description has {words} words; it must have 50-80"]


def test_empty_output():
    assert validate("", ["person"], [], COCO_SOME) == ["the description is empty"]
    assert validate("   \n", ["person"], [], COCO_SOME) == ["the description is empty"]


def test_plurals_count_as_mentions():
    text = pad("Two <tail>surfboards</tail> lie on the sand while people chat nearby.")
    assert validate(text, ["person", "surfboard"], ["surfboard"], COCO_SOME) == []
    buses = pad("Three <tail>buses</tail> wait at the stop while a person boards.")
    assert validate(buses, ["bus", "person"], ["bus"], VOC) == []
    # "buses" outside tags is an untagged tail mention (a strict rule).
    v = validate(buses + " More buses arrive.", ["bus", "person"], ["bus"], VOC,
                 strict=True)
    assert any("'bus' is mentioned without <tail> tags" in x for x in v)
    knives = pad("Two knives rest beside a person at the counter.")
    v = validate(knives, ["person"], [], COCO_SOME, strict=True)
    assert "mentions 'knife', which is not in the image's labels" in v


def test_multi_word_classes():
    text = pad("A <tail>potted plant</tail> stands by the window next to a tv monitor "
               "and a dining table where a person reads.")
    labels = ["dining table", "person", "potted plant", "tv monitor"]
    assert validate(text, labels, ["potted plant"], VOC) == []
    # Tagging only one word of a multi-word class names no class.
    half = text.replace("<tail>potted plant</tail>", "potted <tail>plant</tail>")
    v = validate(half, labels, ["potted plant"], VOC)
    assert "<tail>plant</tail> does not name any class" in v
    # Hyphens, capitals and the plural of the last word.
    other = pad("Several <tail>Potted-Plants</tail> line the room beside a person.")
    assert validate(other, ["person", "potted plant"], ["potted plant"], VOC) == []


def test_longer_class_wins_over_contained_one():
    text = pad("A person holds a <tail>hot dog</tail> at the fair while talking.")
    # "hot dog" is not a mention of "dog".
    assert validate(text, ["hot dog", "person"], ["hot dog"], COCO_SOME) == []
    teddy = pad("A child hugs a teddy bear on the bed while a person smiles.")
    assert validate(teddy, ["person", "teddy bear"], [], COCO_SOME, strict=True) == []
    assert count_class_mentions("a teddy bear and a bear", "bear", COCO_SOME) == 1


def test_case_insensitive_and_aliases():
    text = pad("An <tail>AEROPLANE</tail> sits on the runway while a Person walks by.")
    assert validate(text, ["aeroplane", "person"], ["aeroplane"], VOC) == []
    plane = pad("A <tail>plane</tail> sits on the runway while a person walks by.")
    assert validate(plane, ["aeroplane", "person"], ["aeroplane"], VOC) == []
    tv = pad("A person watches the television in the evening.")
    v = validate(tv, ["person"], [], VOC, strict=True)
    assert v == ["mentions 'tv monitor', which is not in the image's labels"]


def test_words_inside_other_words_are_not_mentions():
    text = pad("The catalogue and the scattered dogmatic notes lie near a person.")
    assert find_mentions(text, VOC) == [("person", text.index("person"),
                                         text.index("person") + len("person"))]


def test_plural_forms():
    assert "surfboards" in plural_forms("surfboard")
    assert "buses" in plural_forms("bus")
    assert "people" in plural_forms("person")
    assert "knives" in plural_forms("knife")
    assert "mice" in plural_forms("mouse")
    assert "sheep" in plural_forms("sheep")
    assert "ski" in plural_forms("skis")
    assert "toothbrushes" in plural_forms("toothbrush")
    assert "ponies" in plural_forms("pony")


def test_tags_are_removed_without_adding_spaces():
    text = "two <tail>surfboards</tail>; the <tail>surfboard</tail>'s fin (\"<tail>surfboard</tail>\")"
    assert strip_tags(text) == "two surfboards; the surfboard's fin (\"surfboard\")"
    assert word_count(strip_tags(text)) == 6


@pytest.mark.parametrize("glued", ["two <tail>surfboard</tail>s on the sand",
                                   "a<tail>surfboard</tail> on the sand",
                                   "a <tail>surf</tail><tail>board</tail> on the sand"])
def test_a_tag_between_two_letters_is_refused(glued):
    # Removing these tags would join or split words of the clean caption.
    v = validate(pad(glued), ["surfboard"], ["surfboard"], COCO_SOME)
    assert any("a tag between two letters" in m and "joins or splits words" in m for m in v)
