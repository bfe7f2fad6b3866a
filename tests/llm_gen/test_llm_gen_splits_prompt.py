"""Reading splits and caption files; the Figure 3 prompt; the template."""

import json

import pytest

from llm_gen import PROMPT_VERSION, build_messages, load_split, template_caption, validate
from llm_gen.splits import ImageItem, SplitError, natural_class_name, read_original_captions
from llm_gen.validate import strip_tags, word_count


@pytest.mark.parametrize("dataset, num_images, num_tail", [("voc_lt", 1142, 8), ("coco_lt", 1909, 25)])
def test_packaged_splits(dataset, num_images, num_tail):
    split = load_split(dataset)
    assert split.dataset == dataset
    assert len(split.items) == num_images and len(split.tail_classes) == num_tail
    assert all(item.original_caption for item in split.items)
    # Tail = class_freq < 20, which is the packaged 'tail' list.
    from importlib.resources import files

    raw = json.loads((files("kdpvlpa.data") / "splits" / f"{dataset}_train.json").read_text())
    assert list(split.tail_classes) == [natural_class_name(raw["class_names"][c]) for c in raw["tail"]]
    assert split.image_ids == raw["image_ids"]
    assert type(split.image_ids[0]) is (str if dataset == "voc_lt" else int)


def test_voc_natural_names():
    split = load_split("voc_lt")
    assert {"dining table", "potted plant", "tv monitor"} <= set(split.class_names)
    assert not {"diningtable", "pottedplant", "tvmonitor"} & set(split.class_names)
    first = split.items[0]
    assert first.image_id == "2008_000023"
    assert first.labels == ("bottle", "person", "tv monitor") and first.tail_labels == ()


def test_split_file_and_original_captions(tiny_split_files):
    split_path, captions_path = tiny_split_files
    split = load_split(split_file=split_path, original_captions=captions_path)
    assert split.dataset == "tiny"
    assert split.tail_classes == ("surfboard", "hot dog", "bus")
    assert split.items[0].labels == ("person", "surfboard")
    assert split.items[0].tail_labels == ("surfboard",)
    assert split.items[1].labels == ("person", "potted plant")
    assert split.items[0].original_caption == "a photo number 0 with a surfboard"
    assert load_split(split_file=split_path).items[0].original_caption is None


def test_bad_split_and_caption_files(tmp_path, tiny_split_files):
    split_path, captions_path = tiny_split_files
    with pytest.raises(SplitError, match="Split file not found"):
        load_split(split_file=tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"class_names": [')
    with pytest.raises(SplitError, match="not valid JSON"):
        load_split(split_file=broken)
    lacking = tmp_path / "lacking.json"
    lacking.write_text(json.dumps({"class_names": ["a"], "image_ids": ["x"]}))
    with pytest.raises(SplitError, match=r"lacks the key\(s\) \['labels'\]"):
        load_split(split_file=lacking)
    bad_label = tmp_path / "bad_label.json"
    bad_label.write_text(json.dumps({"class_names": ["a"], "image_ids": ["x"], "labels": [[3]]}))
    with pytest.raises(SplitError, match="class indices"):
        load_split(split_file=bad_label)
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"image_ids": ["img_000"], "captions": []}))
    with pytest.raises(SplitError, match="as long as 'image_ids'"):
        load_split(split_file=split_path, original_captions=short)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"image_ids": [1], "captions": ["c"]}))
    with pytest.raises(SplitError, match="not in the split"):
        read_original_captions(foreign, ["img_000"])


def test_prompt_follows_figure_3():
    item = ImageItem("001", ("person", "surfboard"), ("surfboard",),
                     "A man squatting on a longboard in the sea")
    messages = build_messages(item)
    assert messages[0] == {"role": "system", "content": "You are a scene description generator."}
    user = messages[1]["content"]
    assert 'caption "A man squatting on a longboard in the sea"' in user
    assert "labels [person, surfboard*]" in user
    assert "First describe the tail classes (surfboard), then the other objects" in user
    assert "interact with the common objects" in user
    assert "50-80 words" in user
    assert "<tail>surfboard</tail>" in user
    # Figure 3 has no rule against naming other things; strict validation adds one.
    assert "Name only the labelled objects" not in user
    assert user.endswith("Do not mark any other word.\nAnswer with the description only.")
    strict = build_messages(item, strict=True)[1]["content"]
    assert strict == user.replace(
        "\nAnswer", "\n5. Name only the labelled objects; do not name any other object "
        "class.\nAnswer")
    assert PROMPT_VERSION


def test_prompt_without_caption_or_tail_and_without_system_role():
    item = ImageItem(1, ("car",), (), None)
    messages = build_messages(item, system_role=False)
    assert len(messages) == 1 and messages[0]["role"] == "user"
    assert messages[0]["content"].startswith("You are a scene description generator.")
    assert "caption" not in messages[0]["content"]
    assert "do not use any <tail> tag" in messages[0]["content"]


def test_retry_feeds_back_violations():
    item = ImageItem("001", ("person", "surfboard"), ("surfboard",), None)
    messages = build_messages(item, history=[("too short", ["the description has 2 words"])])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == "too short"
    assert "- the description has 2 words" in messages[3]["content"]


@pytest.mark.parametrize("dataset", ["voc_lt", "coco_lt"])
def test_template_is_valid_for_every_image(dataset):
    split = load_split(dataset)
    for item in split.items:
        raw = template_caption(item)
        # Valid under the strict rules, so under METHOD.md's too.
        assert validate(raw, item.labels, item.tail_labels, split.class_names,
                        strict=True) == [], item
        assert template_caption(item) == raw  # deterministic


def test_template_describes_tail_classes_first():
    item = ImageItem("a", ("bus", "car", "person"), ("bus",), None)
    raw = template_caption(item)
    clean = strip_tags(raw)
    assert raw.index("<tail>bus</tail>") < clean.index("car")
    assert 50 <= word_count(clean) <= 80
    many = ImageItem("b", tuple(f"thing{i}" for i in range(14)), ("thing0", "thing1"), None)
    assert validate(template_caption(many), many.labels, many.tail_labels, many.labels,
                    strict=True) == []


def test_split_files_with_wrong_types_or_the_test_split_are_refused(tmp_path, tiny_split_files):
    split_path, _ = tiny_split_files
    good = json.loads(split_path.read_text())
    n = len(good["image_ids"])
    cases = {
        "labels": ([1] * n, "'labels' must be a list with one list of class indices"),
        "image_ids": ([["x"]] * n, "'image_ids' must be a list of strings or integers"),
        "class_names": ("abcdef", "'class_names' must be a list of non-empty strings"),
        "class_freq": ([5, None, 1, 1, 1, 1], "'class_freq' must be a list of non-negative"),
        "split": ("test", "is the 'test' split; captions are written for the training"),
    }
    for key, (value, message) in cases.items():
        path = tmp_path / f"bad_{key}.json"
        path.write_text(json.dumps({**good, key: value}))
        with pytest.raises(SplitError, match=message):
            load_split(split_file=path)
    floats = tmp_path / "float_ids.json"
    floats.write_text(json.dumps({**good, "image_ids": [i + 0.5 for i in range(n)]}))
    with pytest.raises(SplitError, match="'image_ids' must be a list of strings or integers"):
        load_split(split_file=floats)


def test_template_fits_80_words_for_many_labels():
    coco = load_split("coco_lt")
    tails = list(coco.tail_classes)
    commons = [c for c in coco.class_names if c not in tails]
    # With the full wording these exceed 80 words (6 tail + 8 common classes
    # gave 85); the compact one names every tail class and fits.
    for num_tail, num_common in [(6, 8), (5, 4), (3, 11), (10, 40), (0, 60), (25, 55)]:
        labels = tuple(tails[:num_tail] + commons[:num_common])
        item = ImageItem("many", labels, tuple(tails[:num_tail]), None)
        raw = template_caption(item)
        assert validate(raw, item.labels, item.tail_labels, coco.class_names,
                        strict=True) == [], (
            num_tail, num_common, raw)
        for tail in item.tail_labels:
            assert f"<tail>{tail}</tail>" in raw
