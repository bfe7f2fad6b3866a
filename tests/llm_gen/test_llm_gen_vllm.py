"""The real vLLM engine (CPU build in CI) end to end through
`kdpvlpa generate-captions`, on a tiny random Llama made here.

Random weights answer noise, so every output fails validation: the test checks
the file, the retries (violations fed back, one batched call per attempt) and
the template fallback. Run with `pytest -m vllm`; CI runs it in its own step
with KDPVLPA_REQUIRE_VLLM=1, where a missing vLLM fails instead of skipping.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from llm_gen import load_split, template_caption
from llm_gen.generate import image_seed
from llm_gen_test_helpers import write_tiny_split

pytestmark = pytest.mark.vllm

# vLLM's CPU backend would reserve most of the machine's memory for its KV
# cache; a tiny model needs a few MiB.
ENGINE_ARGS = [
    "dtype=\"float32\"",
    "max_model_len=2048",
    f"kv_cache_memory_bytes={64 * 1024 * 1024}",
    "enforce_eager=true",
]


@pytest.fixture(scope="module")
def vllm_available():
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("KDPVLPA_REQUIRE_VLLM"):
            pytest.fail("vLLM is not installed but KDPVLPA_REQUIRE_VLLM is set.")
        pytest.skip("vLLM is not installed (see llm_gen/README.md).")


def test_vllm_engine_retries_then_falls_back(vllm_available, tmp_path):
    from llm_gen.testing import build_tiny_chat_model

    model = build_tiny_chat_model(tmp_path / "model")
    split_path, captions_path = write_tiny_split(tmp_path, num_images=4)
    # Image 1's original caption makes a prompt longer than max_model_len:
    # vLLM refuses it, and only it, without retries.
    original = json.loads(captions_path.read_text())
    original["captions"][1] = "a very long caption " * 1500
    captions_path.write_text(json.dumps(original))
    out = tmp_path / "captions.jsonl"
    command = [
        sys.executable, "-m", "kdpvlpa.cli", "generate-captions",
        "--split-file", str(split_path), "--original-captions", str(captions_path),
        "--model", model, "--out", str(out), "--max-attempts", "2",
        "--max-tokens", "24", "--seed", "3", "--quiet",
    ]
    for arg in ENGINE_ARGS:
        command += ["--engine-arg", arg]
    result = subprocess.run(command, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "wrote 4 records (valid 0, retried 0, fallback 4)" in result.stdout

    records = [json.loads(line) for line in out.read_text().splitlines()]
    split = load_split(split_file=split_path, original_captions=captions_path)
    assert [r["image_id"] for r in records] == split.image_ids
    for index, (record, item) in enumerate(zip(records, split.items)):
        assert record["status"] == "fallback" and record["source"] == "template"
        assert record["backend"] == "vllm" and record["model"] == model
        assert record["violations"] == record["failed_attempts"][-1]["violations"]
        if index == 1:
            assert record["attempts"] == 1
            (violation,) = record["violations"]
            assert "could not answer this prompt" in violation
            assert "maximum context length" in violation
            continue
        assert record["attempts"] == 2 and len(record["failed_attempts"]) == 2
        for attempt in record["failed_attempts"]:
            assert attempt["output"] and attempt["violations"]
        assert record["raw_caption"] == template_caption(item)
        assert record["labels"] == list(item.labels)
        assert record["tail_labels"] == list(item.tail_labels)
        assert record["original_caption"] == item.original_caption
        assert record["sampling"] == {
            "temperature": 0.7, "top_p": 0.9, "max_tokens": 24, "seed": 3,
            "image_seed": image_seed(3, item.image_id, 2),
        }
        assert record["tensor_parallel_size"] == 1

    # Rerunning resumes: every image is done, so the engine is not even started.
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "wrote 0 records" in again.stdout and "4 were already done" in again.stdout
    assert len(out.read_text().splitlines()) == 4
