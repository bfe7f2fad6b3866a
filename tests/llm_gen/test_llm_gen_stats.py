"""Caption statistics (Table 4 figure) on hand-made records, and merging the
shards of a packaged dataset."""

import json

from click.testing import CliRunner

from kdpvlpa.cli import main
from kdpvlpa.data import load_split as load_packaged_split
from llm_gen.stats import caption_stats


def _record(image_id, status, caption, tails, original, labels=None, source="llm"):
    return {"image_id": image_id, "status": status, "caption": caption,
            "raw_caption": caption, "tail_labels": tails, "labels": labels or tails,
            "original_caption": original, "source": source, "attempts": 1}


def test_table_4_figure_by_hand():
    records = [
        # 2 tail instances; generated mentions: bear 2 (the teddy bear is not
        # one), kite 1; original mentions: bear 1, kite 0.
        _record(1, "valid", "A bear and another bear near a teddy bear and a kite.",
                ["bear", "kite"], "a bear in the woods",
                labels=["bear", "kite", "teddy bear"]),
        # 1 instance; generated: 2 (plural counts); no original caption.
        _record(2, "retried", "Two surfboards, then one more surfboard.",
                ["surfboard"], None),
        # No tail class: no instance.
        _record(3, "fallback", "A person.", [], "a person", labels=["person"],
                source="template"),
    ]
    stats = caption_stats(records, ["bear", "kite", "teddy bear", "surfboard", "person"])
    assert stats["status"] == {"valid": 1, "retried": 1, "fallback": 1}
    assert stats["tail_instances"] == 3
    assert stats["tail_mentions_per_instance_generated"] == 5 / 3
    # Only instances whose image has an original caption count there.
    assert stats["tail_mentions_per_instance_original"] == 1 / 2
    assert stats["images_with_original_caption"] == 2
    assert stats["mean_words"] == (12 + 6 + 2) / 3
    assert stats["source"] == {"llm": 2, "template": 1}


def test_merge_infers_a_packaged_dataset(tmp_path):
    runner = CliRunner()
    shards = []
    for i in range(2):
        path = tmp_path / f"voc.{i}.jsonl"
        result = runner.invoke(main, ["generate-captions", "--dataset", "voc_lt", "--out",
                                      str(path), "--shard", f"{i}/2", "--quiet"])
        assert result.exit_code == 0, result.output
        shards.append(str(path))
    merged = tmp_path / "voc.jsonl"
    result = runner.invoke(main, ["captions", "merge", *shards, "--out", str(merged)])
    assert result.exit_code == 0, result.output
    assert "1142 records from 2 shard files" in result.output
    ids = [json.loads(line)["image_id"] for line in merged.read_text().splitlines()]
    assert ids[:2] == ["2008_000023", "2008_000028"] and len(set(ids)) == 1142
    result = runner.invoke(main, ["captions", "stats", str(merged), "--json"])
    assert result.exit_code == 0
    stats = json.loads(result.output)
    assert stats["images"] == 1142 and stats["duplicate_images"] == 0
    # Tail instances are (image, tail class) pairs: counted here from the
    # packaged split's own labels and tail list, and, since class_freq counts
    # training images per class, equal to the tail classes' summed frequency.
    voc = load_packaged_split("voc_lt", "train")
    tail = set(voc["tail"])
    pairs = sum(len(set(labels) & tail) for labels in voc["labels"])
    assert pairs == sum(voc["class_freq"][c] for c in tail)
    assert stats["tail_instances"] == pairs
