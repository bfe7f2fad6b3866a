"""Kill a generation run in the middle (SIGKILL), rerun, and find every image
exactly once."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from llm_gen import load_split
from llm_gen.generate import generate_captions
from llm_gen.records import CaptionFileError
from llm_gen_test_helpers import ScriptedBackend, always_valid, write_tiny_split

HELPER = os.path.join(os.path.dirname(__file__), "llm_gen_test_helpers.py")


def _lines(path):
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sigkill_then_resume_gives_every_image_once(tmp_path):
    split_path, _ = write_tiny_split(tmp_path, num_images=40)
    out = tmp_path / "captions.jsonl"
    proc = subprocess.Popen([sys.executable, HELPER, str(split_path), str(out), "0.05"])
    try:
        deadline = time.monotonic() + 60
        while _lines(out) < 5:
            assert proc.poll() is None, "generation ended before it could be killed"
            assert time.monotonic() < deadline, "no records written within 60 s"
            time.sleep(0.02)
        # While it runs, a second writer of the same file is refused.
        split = load_split(split_file=split_path)
        with pytest.raises(CaptionFileError, match="Another process is writing"):
            generate_captions(split, ScriptedBackend(always_valid), out)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done_before = _lines(out)
    assert 5 <= done_before < 40
    finished = out.read_bytes()[: out.read_bytes().rfind(b"\n") + 1]

    # Simulate the worst moment of the kill: half a record at the end.
    with open(out, "ab") as f:
        f.write(b'{"image_id": "img_039", "caption": "cut sho')

    result = subprocess.run([sys.executable, HELPER, str(split_path), str(out), "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["image_id"] for r in records]
    assert sorted(ids) == [f"img_{i:03d}" for i in range(40)]
    assert len(ids) == len(set(ids)) == 40
    # The finished records of the killed run were kept byte for byte.
    assert out.read_bytes().startswith(finished)
    assert {r["status"] for r in records} == {"retried"}
