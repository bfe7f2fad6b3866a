import json

import pytest

from kdpvlpa.data import CaptionFileError, load_caption_file, load_split, strip_tail_tags
from kdpvlpa.data.splits import split_file_path


def _jsonl(path, records, torn=None):
    lines = [json.dumps(r) for r in records]
    text = "\n".join(lines) + "\n"
    if torn is not None:
        text += torn  # an interrupted write: no closing brace, no newline
    path.write_text(text)
    return path


def _record(image_id, caption):
    return {"image_id": image_id, "caption": caption,
            "raw_caption": caption.replace("cow", "<tail>cow</tail>"), "status": "ok"}


def test_strip_tail_tags():
    assert strip_tail_tags("A <tail>cow</tail> and a <TAIL> sheep </tail> .") == "A cow and a sheep."
    assert strip_tail_tags("no tags here") == "no tags here"
    # Tags are removed, not replaced by spaces: words around them stay whole.
    assert strip_tail_tags("Two <tail>cow</tail>s and the <tail>cow</tail>'s calf") == (
        "Two cows and the cow's calf")


def test_jsonl_in_split_order_with_str_and_int_ids(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [_record("b", "cap b"), _record(7, "a <tail>cow</tail>."),
                                         _record("extra", "ignored")])
    assert load_caption_file(path, ["7", "b"]) == ["a cow.", "cap b"]
    assert load_caption_file(path, [7]) == ["a cow."]


def test_packaged_lmpt_format():
    split = load_split("coco_lt", "train")
    ids = split["image_ids"]
    path = split_file_path("coco_lt", "train_captions_lmpt")
    wanted = ids[::-1][:3] + ids[500:502]  # from the end, then the middle
    captions = load_caption_file(path, wanted)
    # Each image's caption, read straight from the packaged file.
    packaged = json.loads(path.read_text(encoding="utf-8"))
    by_id = dict(zip(packaged["image_ids"], packaged["captions"]))
    assert captions == [by_id[i] for i in wanted]
    assert len(set(captions)) == len(wanted)
    # COCO ids are ints in the file; a string id finds the same caption.
    assert load_caption_file(path, [str(ids[-1])]) == captions[:1]
    # Read by eye from the file: image 16837 (labels person, train, backpack)
    # is the train platform scene.
    names = split["class_names"]
    assert [names[c] for c in split["labels"][ids.index(16837)]] == [
        "person", "train", "backpack"]
    (platform,) = load_caption_file(path, [16837])
    assert platform.startswith(
        "Young children standing on a platform waiting for a train to arrive.")


def test_missing_file(tmp_path):
    with pytest.raises(CaptionFileError, match="Caption file not found"):
        load_caption_file(tmp_path / "none.jsonl", ["a"])


def test_bad_line_number(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(_record("a", "x")) + "\n{oops\n" + json.dumps(_record("b", "y")) + "\n")
    with pytest.raises(CaptionFileError, match="line 2 is not valid JSON") as info:
        load_caption_file(path, ["a", "b"])
    assert "generate-captions" not in str(info.value)


def test_torn_last_line_suggests_repair(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [_record("a", "x")], torn='{"image_id": "b", "capt')
    with pytest.raises(CaptionFileError, match="line 2 is not valid JSON.*Rerun generate-captions"):
        load_caption_file(path, ["a", "b"])


def test_missing_keys(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [_record("a", "x"), {"image_id": "b", "text": "y"}])
    with pytest.raises(CaptionFileError, match="line 2: missing key.*caption"):
        load_caption_file(path, ["a", "b"])
    bad_json = tmp_path / "c.json"
    bad_json.write_text(json.dumps({"image_ids": ["a"], "texts": ["x"]}))
    with pytest.raises(CaptionFileError, match="without the key 'captions'"):
        load_caption_file(bad_json, ["a"])


def test_duplicate_ids(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [_record("a", "x"), _record("b", "y"), _record("a", "z")])
    with pytest.raises(CaptionFileError, match="'a' appears more than once.*entries 1 and 3"):
        load_caption_file(path, ["a", "b"])


def test_images_missing_from_file(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [_record("a", "x")])
    ids = ["a"] + [f"m{i}" for i in range(7)]
    with pytest.raises(CaptionFileError, match="no caption for 7 of 8 images") as info:
        load_caption_file(path, ids)
    assert "m0, m1, m2, m3, m4 (and 2 more)" in str(info.value)


def test_caption_not_a_string(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"image_id": "a", "caption": None}])
    with pytest.raises(CaptionFileError, match="must be a string"):
        load_caption_file(path, ["a"])


def test_caption_file_encoding(tmp_path):
    ids = ["a", "b"]
    lines = [json.dumps(_record(i, f"A cow number {i}.")) for i in ids]
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode("utf-8"))
    assert load_caption_file(bom, ids) == ["A cow number a.", "A cow number b."]
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes((lines[0] + "\n").encode("utf-8")
                       + json.dumps({"image_id": "b", "caption": "caf\u00e9"},
                                    ensure_ascii=False).encode("latin-1") + b"\n")
    with pytest.raises(CaptionFileError,
                       match=r"latin1.jsonl is not UTF-8 text: byte 0xe9 on line 2"):
        load_caption_file(latin1, ids)
