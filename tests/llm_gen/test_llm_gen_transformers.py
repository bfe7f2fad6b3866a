"""The transformers backend on a tiny random model made here: noise out,
so every image is retried and falls back to the template."""

import json

import pytest
from click.testing import CliRunner

from kdpvlpa.cli import main
from llm_gen import load_split, template_caption


@pytest.fixture(scope="module")
def gemma_like_model(tmp_path_factory):
    pytest.importorskip("transformers")
    from llm_gen.testing import build_tiny_chat_model

    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model", system_role=False)


def test_transformers_backend_retries_then_falls_back(gemma_like_model, tmp_path):
    out = tmp_path / "c.jsonl"
    result = CliRunner().invoke(main, [
        "generate-captions", "--dataset", "voc_lt", "--backend", "transformers",
        "--model", gemma_like_model, "--out", str(out), "--limit", "3",
        "--max-attempts", "2", "--max-tokens", "8", "--device", "cpu",
        "--micro-batch-size", "2",
    ])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    split = load_split("voc_lt")
    assert [r["image_id"] for r in records] == split.image_ids[:3]
    for record, item in zip(records, split.items):
        assert record["status"] == "fallback" and record["attempts"] == 2
        assert record["backend"] == "transformers" and record["model"] == gemma_like_model
        assert len(record["failed_attempts"]) == 2
        assert all(a["violations"] for a in record["failed_attempts"])
        assert record["raw_caption"] == template_caption(item)
        assert record["sampling"]["max_tokens"] == 8
