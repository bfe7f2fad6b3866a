"""Generation with scripted backends: statuses, retries, fallback, resume,
shards, the CLI, stats and merge."""

import hashlib
import json

import pytest
from click.testing import CliRunner

from kdpvlpa.cli import main
from llm_gen import PROMPT_VERSION, TEMPLATE_VERSION, load_split, template_caption
from llm_gen.generate import Shard, generate_captions, image_seed
from kdpvlpa.data import CaptionFileError as TrainingCaptionFileError
from kdpvlpa.data import load_caption_file
from llm_gen.backends import make_backend
from llm_gen.records import CaptionFileError, read_records
from llm_gen_test_helpers import (
    ScriptedBackend,
    always_valid,
    labels_from_prompt,
    never_valid,
    valid_on_second,
)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def split(tiny_split_files):
    split_path, captions_path = tiny_split_files
    return load_split(split_file=split_path, original_captions=captions_path)


def test_valid_retried_and_fallback(split, tmp_path):
    out = tmp_path / "c.jsonl"
    counts = generate_captions(split, ScriptedBackend(always_valid), out, limit=4)
    assert counts == {"written": 4, "skipped": 0, "valid": 4, "retried": 0, "fallback": 0}
    record = read(out)[0]
    assert record["image_id"] == "img_000" and record["status"] == "valid"
    assert record["labels"] == ["person", "surfboard"] and record["tail_labels"] == ["surfboard"]
    assert record["original_caption"] == "a photo number 0 with a surfboard"
    assert "<tail>surfboard</tail>" in record["raw_caption"]
    assert "<tail>" not in record["caption"] and "surfboard" in record["caption"]
    assert record["attempts"] == 1 and record["violations"] == []
    assert record["backend"] == "scripted" and record["model"] == "scripted-model"
    assert record["prompt_version"] == PROMPT_VERSION and record["source"] == "llm"
    assert record["sampling"] == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 256,
                                  "seed": 42, "image_seed": image_seed(42, "img_000", 1)}

    out2 = tmp_path / "r.jsonl"
    backend = ScriptedBackend(valid_on_second)
    counts = generate_captions(split, backend, out2, limit=3)
    assert counts["retried"] == 3
    # One batched call per attempt, the second with the violations fed back.
    assert [len(convs) for convs, _ in backend.calls] == [3, 3]
    retry_conv = backend.calls[1][0][0]
    assert retry_conv[-2] == {"role": "assistant", "content": "far too short"}
    assert "the description has 3 words; it must have 50-80" in retry_conv[-1]["content"]
    record = read(out2)[0]
    assert record["status"] == "retried" and record["attempts"] == 2
    assert record["failed_attempts"][0]["output"] == "far too short"

    out3 = tmp_path / "f.jsonl"
    backend = ScriptedBackend(never_valid)
    counts = generate_captions(split, backend, out3, limit=2, max_attempts=3)
    assert counts["fallback"] == 2 and len(backend.calls) == 3
    # The third attempt sees the second answer only, not the whole history.
    third = backend.calls[2][0][0]
    assert [m["role"] for m in third] == ["system", "user", "assistant", "user"]
    record = read(out3)[0]
    assert record["status"] == "fallback" and record["source"] == "template"
    assert record["attempts"] == 3 and len(record["failed_attempts"]) == 3
    assert "'dog' is tagged <tail> but is not in the image's labels" in record["violations"]
    assert record["raw_caption"] == template_caption(split.items[0])
    assert record["backend"] == "scripted"


def test_resume_skips_finished_images(split, tmp_path):
    out = tmp_path / "c.jsonl"
    generate_captions(split, ScriptedBackend(always_valid), out, limit=5)
    backend = ScriptedBackend(always_valid)
    counts = generate_captions(split, backend, out)
    assert counts["skipped"] == 5 and counts["written"] == 7
    assert [len(c) for c, _ in backend.calls] == [7]
    ids = [r["image_id"] for r in read(out)]
    assert sorted(ids) == sorted(split.image_ids) and len(ids) == len(set(ids))
    # Nothing pending: the backend factory is never called.
    def factory():
        raise AssertionError("model loaded although every image is done")

    assert generate_captions(split, factory, out)["skipped"] == 12


def test_resume_repairs_a_torn_last_line(split, tmp_path):
    out = tmp_path / "c.jsonl"
    generate_captions(split, ScriptedBackend(always_valid), out, limit=3)
    whole = out.read_bytes()
    third = whole.splitlines(keepends=True)[2]
    out.write_bytes(whole[: len(whole) - len(third)] + third[: len(third) // 2])
    messages = []
    counts = generate_captions(split, ScriptedBackend(always_valid), out, log=messages.append)
    assert counts["skipped"] == 2 and counts["written"] == 10
    assert "removed an unfinished last line" in messages[0]
    ids = [r["image_id"] for r in read(out)]
    assert sorted(ids) == sorted(split.image_ids)

    # A last record that only lacks its newline is kept, not generated twice.
    out2 = tmp_path / "n.jsonl"
    generate_captions(split, ScriptedBackend(always_valid), out2, limit=2)
    out2.write_bytes(out2.read_bytes().rstrip(b"\n"))
    counts = generate_captions(split, ScriptedBackend(always_valid), out2, limit=4)
    assert counts["skipped"] == 2 and counts["written"] == 2
    assert len(read(out2)) == 4


def test_damaged_middle_line_is_an_error_and_file_is_kept(split, tmp_path):
    out = tmp_path / "c.jsonl"
    generate_captions(split, ScriptedBackend(always_valid), out, limit=3)
    lines = out.read_bytes().splitlines(keepends=True)
    damaged = lines[0] + b"{not json\n" + lines[2]
    out.write_bytes(damaged)
    with pytest.raises(CaptionFileError, match=r"c.jsonl:2: not a JSON record"):
        generate_captions(split, ScriptedBackend(always_valid), out)
    assert out.read_bytes() == damaged


@pytest.mark.parametrize("content, message", [
    # A caption file of LMPT's kind: one JSON document, no newline at all.
    (b'{"2008_000023": "a bottle", "2008_000028": "two cars"}', "lacks the key"),
    # A plain text file.
    (b"a bottle on a table", "does not look like"),
    # Records of another tool, the last without its newline.
    (b'{"image_id": "a", "caption": "x"}\n{"image_id": "b", "caption": "y"}', "lacks the key"),
    # A pretty-printed JSON document.
    (b'{\n  "images": [\n    "a"\n  ]\n}', "not a JSON record"),
    # An llm_gen file whose second record lacks its newline and has a null caption.
    (None, "caption must be a string"),
])
def test_a_file_llm_gen_did_not_write_is_refused_unchanged(split, tmp_path, content, message):
    # Its last line must not be taken for one that a killed run tore.
    out = tmp_path / "c.jsonl"
    if content is None:
        generate_captions(split, ScriptedBackend(always_valid), out, limit=2)
        first, second = read(out)
        second["caption"] = None
        content = (json.dumps(first) + "\n" + json.dumps(second)).encode()
    out.write_bytes(content)
    with pytest.raises(CaptionFileError, match=message):
        generate_captions(split, ScriptedBackend(always_valid), out)
    assert out.read_bytes() == content


@pytest.mark.parametrize("keep", [0, 20])
def test_a_zero_filled_end_left_by_a_crash_is_removed(split, tmp_path, keep):
    # After a power loss the unsynced end of a file can read back as NUL bytes:
    # the last record (or the start of it) then NULs up to where it ended.
    out = tmp_path / "c.jsonl"
    generate_captions(split, ScriptedBackend(always_valid), out, limit=3)
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:2]) + lines[2][:keep] + b"\0" * (len(lines[2]) - keep))
    messages = []
    counts = generate_captions(split, ScriptedBackend(always_valid), out, log=messages.append)
    assert counts["skipped"] == 2 and counts["written"] == 10
    assert "removed an unfinished last line" in messages[0]
    assert sorted(r["image_id"] for r in read(out)) == sorted(split.image_ids)


def test_a_torn_first_record_is_removed(split, tmp_path):
    # Killed while writing the very first record: no complete line at all.
    out = tmp_path / "c.jsonl"
    generate_captions(split, ScriptedBackend(always_valid), out, limit=1)
    out.write_bytes(out.read_bytes()[:9])  # b'{"image_i'
    messages = []
    counts = generate_captions(split, ScriptedBackend(always_valid), out, log=messages.append)
    assert counts["written"] == 12 and "removed an unfinished last line" in messages[0]


def test_wrong_file_or_shard_is_refused(split, tmp_path):
    out = tmp_path / "c.jsonl"
    generate_captions(split, ScriptedBackend(always_valid), out, shard=Shard(0, 2))
    with pytest.raises(CaptionFileError, match="outside shard 1/2"):
        generate_captions(split, ScriptedBackend(always_valid), out, shard=Shard(1, 2))
    voc = load_split("voc_lt")
    with pytest.raises(CaptionFileError, match="not in the split"):
        generate_captions(voc, ScriptedBackend(always_valid), out)


def test_shard_parsing_and_selection():
    assert Shard.parse("1/3").select(range(7)) == [1, 4]
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ValueError, match="Bad shard"):
            Shard.parse(bad)


def test_seeds_do_not_depend_on_batching(split, tmp_path):
    a, b = ScriptedBackend(always_valid), ScriptedBackend(always_valid)
    generate_captions(split, a, tmp_path / "a.jsonl", batch_size=0)
    generate_captions(split, b, tmp_path / "b.jsonl", batch_size=5)
    seeds_a = [s for _, seeds in a.calls for s in seeds]
    seeds_b = [s for _, seeds in b.calls for s in seeds]
    assert seeds_a == seeds_b and len(set(seeds_a)) == 12
    assert [len(c) for c, _ in b.calls] == [5, 5, 2]


def test_cli_template_backend_on_voc(tmp_path):
    out = tmp_path / "voc.jsonl"
    runner = CliRunner()
    result = runner.invoke(main, ["generate-captions", "--dataset", "voc_lt",
                                  "--backend", "template", "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = read(out)
    assert len(records) == 1142
    assert {r["status"] for r in records} == {"valid"}
    assert {r["backend"] for r in records} == {"template"}
    assert records[0]["image_id"] == "2008_000023"
    # Not a terminal: a progress line at every tenth, none blank.
    progress = [line for line in result.output.splitlines() if line.startswith("captions: ")]
    assert len(progress) == 10 and progress[-1].startswith("captions: 1142/1142 images (100%")
    assert "" not in result.output.splitlines()
    # The file is the contract with training: its reader gets every caption,
    # in the split's order.
    image_ids = load_split("voc_lt").image_ids
    captions = load_caption_file(out, image_ids)
    by_id = {r["image_id"]: r["caption"] for r in records}
    assert captions == [by_id[i] for i in image_ids] and len(captions) == 1142

    result = runner.invoke(main, ["captions", "stats", str(out), "--dataset", "voc_lt"])
    assert result.exit_code == 0, result.output
    assert "valid             1142 (100.0 %)" in result.output
    assert "tail-class mentions per tail-class instance" in result.output
    assert "missing images    0 of 1142" in result.output


def test_cli_shards_then_merge(tmp_path, tiny_split_files):
    split_path, captions_path = tiny_split_files
    runner = CliRunner()
    shards = []
    for i in range(3):
        shard = tmp_path / f"s{i}.jsonl"
        result = runner.invoke(main, ["generate-captions", "--split-file", str(split_path),
                                      "--original-captions", str(captions_path),
                                      "--out", str(shard), "--shard", f"{i}/3"])
        assert result.exit_code == 0, result.output
        shards.append(str(shard))
    merged = tmp_path / "all.jsonl"
    # Without the split the tiny dataset cannot be checked for completeness.
    result = runner.invoke(main, ["captions", "merge", *shards, "--out", str(merged)])
    assert result.exit_code != 0 and "--split-file" in result.output
    result = runner.invoke(main, ["captions", "merge", *shards, "--out", str(merged),
                                  "--split-file", str(split_path)])
    assert result.exit_code == 0, result.output
    assert [r["image_id"] for r in read(merged)] == [f"img_{i:03d}" for i in range(12)]

    # A missing shard, or one given twice, is refused; nothing is written.
    bad = tmp_path / "bad.jsonl"
    result = runner.invoke(main, ["captions", "merge", *shards[:2], "--out", str(bad),
                                  "--split-file", str(split_path)])
    assert result.exit_code != 0 and "4 images of the split are missing" in result.output
    result = runner.invoke(main, ["captions", "merge", *shards, shards[0], "--out",
                                  str(bad), "--split-file", str(split_path)])
    assert result.exit_code != 0 and "appear more than once" in result.output
    assert not bad.exists()
    result = runner.invoke(main, ["captions", "merge", *shards, "--out", str(merged),
                                  "--split-file", str(split_path)])
    assert result.exit_code != 0 and "--overwrite" in result.output

    # Shards written with other settings are not merged into one file.
    other = tmp_path / "other.jsonl"
    result = runner.invoke(main, ["generate-captions", "--split-file", str(split_path),
                                  "--original-captions", str(captions_path),
                                  "--out", str(other), "--shard", "2/3"])
    assert result.exit_code == 0, result.output
    records = read(other)
    other.write_text("".join(json.dumps({**r, "model": "template-v0"}) + "\n"
                             for r in records))
    result = runner.invoke(main, ["captions", "merge", *shards[:2], str(other), "--out",
                                  str(bad), "--split-file", str(split_path)])
    assert result.exit_code != 0 and "Cannot merge" in result.output
    assert f"with model {TEMPLATE_VERSION!r}" in result.output
    assert "'template-v0'" in result.output
    assert not bad.exists()


def test_cli_errors_are_clear(tmp_path, tiny_split_files):
    split_path, _ = tiny_split_files
    runner = CliRunner()
    out = str(tmp_path / "c.jsonl")
    result = runner.invoke(main, ["generate-captions", "--split-file",
                                  str(tmp_path / "missing.json"), "--out", out])
    assert result.exit_code != 0 and "Split file not found" in result.output
    result = runner.invoke(main, ["generate-captions", "--split-file", str(split_path),
                                  "--out", out, "--shard", "2/2"])
    assert result.exit_code != 0 and "Bad shard '2/2'" in result.output
    result = runner.invoke(main, ["generate-captions", "--dataset", "voc_lt",
                                  "--backend", "vllm", "--out", out])
    assert result.exit_code != 0 and "needs --model" in result.output
    result = runner.invoke(main, ["generate-captions", "--dataset", "voc_lt",
                                  "--backend", "template", "--model", "models/gemma",
                                  "--out", out])
    assert result.exit_code == 2 and "uses no model; drop --model" in result.output
    result = runner.invoke(main, ["generate-captions", "--dataset", "voc_lt",
                                  "--backend", "vllm", "--model", "google/gemma-2-9b-it",
                                  "--out", out])
    assert result.exit_code != 0 and "is not a local folder" in result.output
    assert not (tmp_path / "c.jsonl").exists()  # no empty file left behind
    bad_captions = tmp_path / "caps.json"
    bad_captions.write_text("[1, 2]")
    result = runner.invoke(main, ["generate-captions", "--split-file", str(split_path),
                                  "--original-captions", str(bad_captions), "--out", out])
    assert result.exit_code != 0 and "must be a JSON object" in result.output
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"image_id": "img_000"}\n')
    result = runner.invoke(main, ["captions", "stats", str(junk)])
    assert result.exit_code != 0 and "junk.jsonl:1: record lacks the key(s)" in result.output


def test_cli_file_system_and_option_errors_are_clear(tmp_path, tiny_split_files):
    split_path, _ = tiny_split_files
    runner = CliRunner()
    base = ["generate-captions", "--split-file", str(split_path)]
    # --out under a file: the system's error with the path, no traceback.
    (tmp_path / "afile").write_text("keep")
    result = runner.invoke(main, [*base, "--out", str(tmp_path / "afile" / "c.jsonl")])
    assert result.exit_code == 1 and result.exception.__class__ is SystemExit
    assert "Error: File exists: " in result.output or "Not a directory" in result.output
    assert str(tmp_path / "afile") in result.output
    assert (tmp_path / "afile").read_text() == "keep"
    result = runner.invoke(main, ["captions", "merge", str(tmp_path / "afile"), "--out",
                                  str(tmp_path / "m.jsonl"), "--split-file", str(split_path)])
    assert result.exit_code == 1 and "afile:1" in result.output
    result = runner.invoke(main, ["captions", "stats", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory" in result.output
    # A dtype torch lacks, and a chat template that is not UTF-8, are refused
    # before any model is loaded (`tmp_path` holds none).
    out = str(tmp_path / "c.jsonl")
    for dtype in ("float33", "nn"):
        result = runner.invoke(main, [*base, "--out", out, "--backend", "transformers",
                                      "--model", str(tmp_path), "--dtype", dtype])
        assert result.exit_code == 1
        assert f"--dtype {dtype!r} is not a torch dtype" in result.output
    template = tmp_path / "t.jinja"
    template.write_bytes(b"\xff\xfe{{ messages }}")
    result = runner.invoke(main, [*base, "--out", out, "--backend", "transformers",
                                  "--model", str(tmp_path), "--chat-template", str(template)])
    assert result.exit_code == 2 and "--chat-template" in result.output
    assert "is not UTF-8 text: byte 0xff on line 1" in result.output
    assert not (tmp_path / "c.jsonl").exists()


def test_training_reader_refuses_incomplete_files(split, tmp_path):
    out = tmp_path / "c.jsonl"
    generate_captions(split, ScriptedBackend(always_valid), out, limit=4)
    with pytest.raises(TrainingCaptionFileError, match="no caption for 8 of 12 images"):
        load_caption_file(out, split.image_ids)
    records, torn = read_records(out)
    assert len(records) == 4 and torn == b""


def test_import_stays_light():
    import subprocess
    import sys

    # kdpvlpa's pure-Python helpers (its progress lines) are allowed; its
    # models, data and training are not.
    code = ("import sys, llm_gen, llm_gen.cli, llm_gen.backends; "
            "heavy = [m for m in ('keras', 'vllm', 'torch', 'transformers', 'numpy') "
            "if m in sys.modules] + [m for m in sys.modules if m.startswith('kdpvlpa.') "
            "and m.split('.')[1] not in ('backend', 'utils')]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_resuming_with_other_settings_is_refused(split, tmp_path):
    from llm_gen.backends import SamplingSettings, make_backend

    out = tmp_path / "c.jsonl"
    generate_captions(split, make_backend("template"), out, limit=4)
    before = out.read_bytes()
    with pytest.raises(CaptionFileError, match="written with backend 'template'.*"
                       "this run uses backend 'scripted'"):
        generate_captions(split, ScriptedBackend(always_valid), out)
    assert out.read_bytes() == before

    out2 = tmp_path / "s.jsonl"
    generate_captions(split, ScriptedBackend(always_valid), out2, limit=4)
    other = ScriptedBackend(always_valid)
    other.sampling = SamplingSettings(temperature=0.2)
    with pytest.raises(CaptionFileError, match="written with sampling"):
        generate_captions(split, other, out2)
    # The same settings resume; each image's own seed does not count.
    assert generate_captions(split, ScriptedBackend(always_valid), out2)["written"] == 8


def test_resuming_with_other_original_captions_is_refused(tiny_split_files, tmp_path):
    # The original caption is part of an LLM's prompt.
    split_path, captions_path = tiny_split_files
    with_originals = load_split(split_file=split_path, original_captions=captions_path)
    without = load_split(split_file=split_path, use_original_captions=False)
    assert any(item.original_caption for item in with_originals.items)
    out = tmp_path / "c.jsonl"
    generate_captions(with_originals, ScriptedBackend(always_valid), out, limit=4)
    before = out.read_bytes()
    with pytest.raises(CaptionFileError, match="written with the original caption .* "
                       "but this run gives None"):
        generate_captions(without, ScriptedBackend(always_valid), out)
    assert out.read_bytes() == before
    assert generate_captions(with_originals, ScriptedBackend(always_valid), out)["written"] == 8
    # The template backend reads no caption: its files resume either way.
    out2 = tmp_path / "t.jsonl"
    generate_captions(with_originals, make_backend("template"), out2, limit=4)
    assert generate_captions(without, make_backend("template"), out2)["written"] == 8


def test_cli_refuses_another_model_before_loading_it(tmp_path, tiny_split_files):
    split_path, _ = tiny_split_files
    out = tmp_path / "c.jsonl"
    runner = CliRunner()
    args = ["generate-captions", "--split-file", str(split_path), "--out", str(out)]
    result = runner.invoke(main, args + ["--limit", "3"])
    assert result.exit_code == 0, result.output
    model_dir = tmp_path / "model"
    model_dir.mkdir()  # not a model: loading it would fail differently
    for limit in (["--limit", "3"], []):  # all done, or images pending
        result = runner.invoke(main, args + ["--model", str(model_dir)] + limit)
        assert result.exit_code != 0
        assert "written with backend 'template'" in result.output
        assert "this run uses backend 'vllm'" in result.output
    assert len(read(out)) == 3


def test_model_resolved_by_the_backend_is_checked_once_built(split, tmp_path):
    # An openai server names its model itself: without --model the settings
    # given up front hold no model, and the built backend's is compared.
    from llm_gen.generate import run_settings

    out = tmp_path / "c.jsonl"
    generate_captions(split, ScriptedBackend(always_valid), out, limit=3)
    before = out.read_bytes()

    def other_model():
        backend = ScriptedBackend(always_valid)
        backend.model = "another-model"
        return backend

    settings = run_settings("scripted", None, ScriptedBackend(always_valid).sampling)
    with pytest.raises(CaptionFileError, match="written with model 'scripted-model'"):
        generate_captions(split, other_model, out, settings=settings)
    assert out.read_bytes() == before


def test_the_same_model_at_another_path_resumes(split, tmp_path):
    out = tmp_path / "c.jsonl"
    first = ScriptedBackend(always_valid)
    first.model = "models/gemma-2-9b-it"
    generate_captions(split, first, out, limit=3)
    moved = ScriptedBackend(always_valid)
    moved.model = "/data/other/models/gemma-2-9b-it/"
    assert generate_captions(split, moved, out)["written"] == 9


def test_a_shard_without_images_leaves_an_empty_file(split, tmp_path):
    out = tmp_path / "empty.jsonl"
    counts = generate_captions(split, ScriptedBackend(always_valid), out, shard=Shard(15, 16))
    assert counts["written"] == 0 and out.exists() and out.read_bytes() == b""


def test_a_writer_never_keeps_a_lock_on_a_removed_file(tmp_path, monkeypatch):
    # Another run removes the (empty) file between this writer's open and its
    # lock: the lock on the removed file is dropped and the path made again.
    import fcntl

    from llm_gen.records import CaptionWriter

    path = tmp_path / "c.jsonl"
    real_flock = fcntl.flock
    calls = []

    def flock_after_removal(fd, operation):
        calls.append(fd)
        if len(calls) == 1:
            path.unlink()
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_removal)
    writer = CaptionWriter(path)
    writer.write({"image_id": "a", "caption": "x"})
    writer.close()
    assert len(calls) == 2
    assert json.loads(path.read_text()) == {"image_id": "a", "caption": "x"}


def test_a_refused_prompt_falls_back_without_retries(split, tmp_path):
    from llm_gen.backends import FailedAnswer

    def script(conversation, attempt):
        labels, _ = labels_from_prompt(conversation)
        if "hot dog" in labels:
            return FailedAnswer("prompt longer than the model's context")
        return always_valid(conversation, attempt)

    out = tmp_path / "c.jsonl"
    backend = ScriptedBackend(script)
    counts = generate_captions(split, backend, out, max_attempts=3)
    assert counts["fallback"] == 2 and counts["valid"] == 10
    assert [len(c) for c, _ in backend.calls] == [12]  # nothing asked twice
    records = {r["image_id"]: r for r in read(out)}
    refused = records["img_003"]  # labels person, dog, hot dog
    assert refused["status"] == "fallback" and refused["attempts"] == 1
    assert refused["violations"] == [
        "the model could not answer this prompt (prompt longer than the model's context)"]
    assert refused["raw_caption"] == template_caption(split.items[3])


def test_rerun_with_a_smaller_limit_keeps_the_file(split, tmp_path):
    out = tmp_path / "c.jsonl"
    generate_captions(split, ScriptedBackend(always_valid), out, limit=6)
    counts = generate_captions(split, ScriptedBackend(always_valid), out, limit=3)
    assert counts["skipped"] == 3 and counts["written"] == 0
    assert len(read(out)) == 6


def test_fallback_records_the_templates_own_violations(split, tmp_path, monkeypatch):
    import llm_gen.generate as generate_module

    out = tmp_path / "ok.jsonl"
    generate_captions(split, ScriptedBackend(never_valid), out, limit=2, max_attempts=1)
    assert all("template_violations" not in r for r in read(out))
    # A template that cannot be valid (in practice: dozens of tail classes in
    # one image) is written, and its violations are kept apart from the LLM's.
    monkeypatch.setattr(generate_module, "template_caption", lambda item: "too short")
    out = tmp_path / "bad.jsonl"
    generate_captions(split, ScriptedBackend(never_valid), out, limit=1, max_attempts=1)
    (record,) = read(out)
    assert record["status"] == "fallback" and record["caption"] == "too short"
    assert "the description has 2 words; it must have 50-80" in record["template_violations"]
    assert "the description has 2 words; it must have 50-80" not in record["violations"]


def test_interrupted_generation_says_that_a_rerun_resumes(tmp_path, tiny_split_files,
                                                          monkeypatch):
    import llm_gen.cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(llm_gen.cli, "generate_captions", interrupted)
    split_path, _ = tiny_split_files
    result = CliRunner().invoke(main, ["generate-captions", "--split-file", str(split_path),
                                       "--out", str(tmp_path / "c.jsonl"), "--quiet"])
    assert result.exit_code == 130
    assert "Interrupted. Rerun the same command to resume" in result.output


def mentions_untagged(conversation, attempt):
    """A valid answer plus an untagged mention of an absent class (and of its
    tail class): valid by METHOD.md's rules, not by the strict ones."""
    labels, tails = labels_from_prompt(conversation)
    absent = "bus" if "bus" not in labels else "dog"
    extra = f" A {absent} waits." + (f" The {tails[0]} rests." if tails else "")
    return always_valid(conversation, attempt) + extra


def test_strict_validation_decides_validity_and_is_recorded(split, tmp_path):
    out = tmp_path / "method.jsonl"
    backend = ScriptedBackend(mentions_untagged)
    counts = generate_captions(split, backend, out, limit=3)
    assert counts["valid"] == 3
    assert not any("Name only the labelled objects" in m["content"]
                   for conversation in backend.calls[0][0] for m in conversation)
    records = read(out)
    assert {r["validation"] for r in records} == {"method"}
    assert "A bus waits. The surfboard rests." in records[0]["caption"]

    out = tmp_path / "strict.jsonl"
    backend = ScriptedBackend(mentions_untagged)
    counts = generate_captions(split, backend, out, limit=3,
                               max_attempts=2, strict_validation=True)
    assert counts["fallback"] == 3
    # The strict prompt states the rule its checks add, in every attempt.
    first_prompts = [next(m["content"] for m in conversation if m["role"] == "user")
                     for conversations, _ in backend.calls for conversation in conversations]
    assert len(first_prompts) == 6  # 3 images, 2 attempts each
    assert all("Name only the labelled objects" in prompt for prompt in first_prompts)
    records = read(out)
    assert {r["validation"] for r in records} == {"strict"}
    first = records[0]
    assert first["violations"] == [
        "tail class 'surfboard' is mentioned without <tail> tags; wrap every mention "
        "of a tail class",
        "mentions 'bus', which is not in the image's labels",
    ]
    assert first["source"] == "template" and "template_violations" not in first


def test_resuming_with_the_other_validation_is_refused(split, tmp_path):
    from llm_gen.generate import run_settings

    out = tmp_path / "c.jsonl"
    generate_captions(split, ScriptedBackend(always_valid), out, limit=3,
                      strict_validation=True)
    before = out.read_bytes()
    with pytest.raises(CaptionFileError, match="written with validation 'strict'.*"
                       "this run uses validation 'method'.*--strict-validation"):
        generate_captions(split, ScriptedBackend(always_valid), out)

    # With a factory, the file is refused before the backend is built, even when
    # the settings given were made for the other validation.
    def must_not_build():
        raise AssertionError("the backend was built")

    settings = run_settings("scripted", "scripted-model",
                            ScriptedBackend(always_valid).sampling, strict_validation=True)
    with pytest.raises(CaptionFileError, match="this run uses validation 'method'"):
        generate_captions(split, must_not_build, out, settings=settings)
    assert out.read_bytes() == before
    assert generate_captions(split, ScriptedBackend(always_valid), out,
                             strict_validation=True)["written"] == 9

    out = tmp_path / "m.jsonl"
    generate_captions(split, ScriptedBackend(always_valid), out, limit=3)
    with pytest.raises(CaptionFileError, match="written with validation 'method'.*"
                       "this run uses validation 'strict'"):
        generate_captions(split, ScriptedBackend(always_valid), out, strict_validation=True)


def test_records_without_the_setting_read_as_strict(split, tmp_path):
    from llm_gen.generate import record_settings
    from llm_gen.stats import merge_shards

    # Before the setting existed, answers were checked with the strict rules.
    old = tmp_path / "old.jsonl"
    generate_captions(split, ScriptedBackend(always_valid), old, limit=3,
                      strict_validation=True)
    records = read(old)
    old.write_text("".join(
        json.dumps({k: v for k, v in r.items() if k != "validation"}) + "\n"
        for r in records))
    assert record_settings(read(old)[0])["validation"] == "strict"
    before = old.read_bytes()
    with pytest.raises(CaptionFileError, match="written with validation 'strict'"):
        generate_captions(split, ScriptedBackend(always_valid), old)
    assert old.read_bytes() == before

    # merge compares the same way: an old shard joins a strict one, not a default one.
    shards = {}
    for name, strict, index in [("strict", True, 1), ("method", False, 1)]:
        path = tmp_path / f"{name}.jsonl"
        generate_captions(split, ScriptedBackend(always_valid), path, strict_validation=strict,
                          shard=Shard(index, 2))
        shards[name] = path
    old0 = tmp_path / "old0.jsonl"
    generate_captions(split, ScriptedBackend(always_valid), old0, shard=Shard(0, 2),
                      strict_validation=True)
    old0.write_text("".join(
        json.dumps({k: v for k, v in r.items() if k != "validation"}) + "\n"
        for r in read(old0)))
    assert merge_shards([old0, shards["strict"]], tmp_path / "ok.jsonl", split=split) == 12
    with pytest.raises(CaptionFileError, match="Cannot merge.*with validation 'strict'.*"
                       "'method'"):
        merge_shards([old0, shards["method"]], tmp_path / "bad.jsonl", split=split)
    assert not (tmp_path / "bad.jsonl").exists()


def test_template_backend_records_no_validation_setting(split, tmp_path):
    from llm_gen.backends import make_backend

    out = tmp_path / "c.jsonl"
    generate_captions(split, make_backend("template"), out, limit=4)
    assert {r["validation"] for r in read(out)} == {None}
    # Its captions are valid under both rule sets: the setting is not compared,
    # and records written before it existed resume too.
    counts = generate_captions(split, make_backend("template"), out, limit=8,
                               strict_validation=True)
    assert counts["written"] == 4 and counts["valid"] == 4
    out.write_text("".join(
        json.dumps({k: v for k, v in r.items() if k != "validation"}) + "\n"
        for r in read(out)))
    assert generate_captions(split, make_backend("template"), out)["written"] == 4


class _ServedScripted(ScriptedBackend):
    name = "openai"  # what the CLI asked for, so only validation differs


def test_cli_strict_validation_reaches_the_records(tmp_path, tiny_split_files,
                                                   monkeypatch):
    import llm_gen.cli

    split_path, _ = tiny_split_files
    # The CLI builds the scripted backend in place of an openai one.
    monkeypatch.setattr(llm_gen.cli, "make_backend",
                        lambda name, **kwargs: _ServedScripted(mentions_untagged))
    runner = CliRunner()
    args = ["generate-captions", "--split-file", str(split_path), "--backend", "openai",
            "--base-url", "http://127.0.0.1:9/v1", "--quiet", "--max-attempts", "1"]
    for flag, status, validation in [([], "valid", "method"),
                                     (["--strict-validation"], "fallback", "strict")]:
        out = tmp_path / f"{validation}.jsonl"
        result = runner.invoke(main, args + ["--out", str(out), "--limit", "3"] + flag)
        assert result.exit_code == 0, result.output
        records = read(out)
        assert {r["status"] for r in records} == {status}
        assert {r["validation"] for r in records} == {validation}
    # Resuming the strict file without the flag is refused; with it, it resumes.
    strict = tmp_path / "strict.jsonl"
    result = runner.invoke(main, args + ["--out", str(strict)])
    assert result.exit_code != 0
    assert "written with validation 'strict'" in result.output
    assert "this run uses validation 'method'" in result.output
    assert len(read(strict)) == 3
    result = runner.invoke(main, args + ["--out", str(strict), "--limit", "4",
                                         "--strict-validation"])
    assert result.exit_code == 0, result.output
    assert [r["validation"] for r in read(strict)] == ["strict"] * 4


def test_cli_sampling_chat_template_and_original_caption_options_reach_the_run(
        tmp_path, monkeypatch):
    import importlib.resources

    import llm_gen.cli

    # The CLI builds a scripted backend in place of the transformers one and
    # hands it the sampling settings and options it would have built it with.
    built = []

    def scripted_transformers(name, sampling=None, **options):
        backend = ScriptedBackend(always_valid)
        backend.name, backend.model, backend.sampling = name, options["model"], sampling
        built.append((name, options, backend))
        return backend

    monkeypatch.setattr(llm_gen.cli, "make_backend", scripted_transformers)
    template = tmp_path / "chat.jinja"
    template_text = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    template.write_text(template_text)
    model_dir = tmp_path / "gemma"
    model_dir.mkdir()
    runner = CliRunner()
    args = ["generate-captions", "--dataset", "voc_lt", "--backend", "transformers",
            "--model", str(model_dir), "--limit", "2", "--quiet", "--temperature", "0.25",
            "--top-p", "0.5", "--max-tokens", "64", "--seed", "7",
            "--chat-template", str(template)]
    out = tmp_path / "plain.jsonl"
    result = runner.invoke(main, args + ["--out", str(out), "--no-original-captions"])
    assert result.exit_code == 0, result.output
    (name, options, backend), = built
    assert name == "transformers" and options["chat_template"] == template_text
    records = read(out)
    assert [r["image_id"] for r in records] == ["2008_000023", "2008_000028"]
    sent_seeds = backend.calls[0][1]
    for record, seed in zip(records, sent_seeds):
        assert record["sampling"] == {"temperature": 0.25, "top_p": 0.5, "max_tokens": 64,
                                      "seed": 7, "image_seed": seed}
        assert record["original_caption"] is None
    for conversation in backend.calls[0][0]:
        assert conversation[1]["content"].startswith(
            "Generate a detailed scene description based on: labels [")

    # Without the flag, the prompt quotes the packaged LMPT caption of each
    # image, read here straight from the packaged file.
    lmpt = json.loads((importlib.resources.files("kdpvlpa.data") / "splits"
                       / "voc_lt_train_captions_lmpt.json").read_text(encoding="utf-8"))
    lmpt = dict(zip(lmpt["image_ids"], lmpt["captions"]))
    assert lmpt["2008_000023"] == ("a bottle of beer and a candle on a table with pizza "
                                   "and a television.")
    built.clear()
    out = tmp_path / "quoted.jsonl"
    result = runner.invoke(main, args + ["--out", str(out)])
    assert result.exit_code == 0, result.output
    (_, _, backend), = built
    for record, conversation in zip(read(out), backend.calls[0][0]):
        assert record["original_caption"] == lmpt[record["image_id"]]
        assert conversation[1]["content"].startswith(
            "Generate a detailed scene description based on: caption "
            f"\"{lmpt[record['image_id']]}\" and labels [")

    # Values the options cannot take are refused with the option named.
    result = runner.invoke(main, args + ["--out", str(out), "--top-p", "0"])
    assert result.exit_code == 2
    assert "Invalid value for '--top-p': 0.0 is not in the range 0<x<=1" in result.output
    result = runner.invoke(main, args + ["--out", str(out), "--chat-template",
                                         str(tmp_path / "absent.jinja")])
    assert result.exit_code == 2
    assert "Invalid value for '--chat-template'" in result.output
    assert "absent.jinja' does not exist" in result.output
    assert len(read(out)) == 2


@pytest.mark.parametrize("args, message", [
    (["--temperature", "0.2"], "--temperature does not apply to the template backend"),
    (["--top-p", "0.5", "--seed", "3"], "--top-p, --seed do not apply to the template"),
    (["--chat-template", "{tmpl}"], "--chat-template does not apply to the template"),
    (["--base-url", "http://localhost:1/v1", "--micro-batch-size", "2"],
     "--micro-batch-size does not apply to the openai backend (read by: transformers)"),
    (["--model", "m", "--backend", "vllm", "--concurrency", "3"],
     "--concurrency does not apply to the vllm backend (read by: openai)"),
    (["--model", "m", "--backend", "transformers", "--engine-arg", "a=1"],
     "--engine-arg does not apply to the transformers backend (read by: vllm)"),
    (["--model", "m", "--backend", "vllm", "--base-url", "http://localhost:1/v1"],
     "--base-url does not apply to the vllm backend (read by: openai)"),
])
def test_options_another_backend_reads_are_refused(tmp_path, args, message):
    template = tmp_path / "chat.jinja"
    template.write_text("{{ messages }}")
    out = tmp_path / "c.jsonl"
    args = [a.replace("{tmpl}", str(template)) for a in args]
    result = CliRunner().invoke(main, ["generate-captions", "--dataset", "voc_lt",
                                       "--out", str(out), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()


def test_an_api_key_from_the_environment_is_no_error_for_other_backends(tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("KDPVLPA_LLM_API_KEY", "secret")
    out = tmp_path / "c.jsonl"
    result = CliRunner().invoke(main, ["generate-captions", "--dataset", "voc_lt",
                                       "--out", str(out), "--limit", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 2


def test_progress_counts_an_llm_batch_once_its_records_are_on_disk(split, tmp_path):
    out = tmp_path / "c.jsonl"
    calls, lines = [], []

    def progress(n):
        calls.append(n)
        lines.append(len(out.read_text().splitlines()))

    generate_captions(split, ScriptedBackend(always_valid), out, batch_size=5, limit=4)
    generate_captions(split, ScriptedBackend(always_valid), out, batch_size=5, limit=12,
                      progress=progress)
    # The 4 done before, 0 once the backend is ready, then per batch of 5.
    assert calls == [4, 0, 5, 3]
    assert lines == [4, 4, 9, 12]  # each count is already in the file
    calls.clear()
    from llm_gen.backends import make_backend

    generate_captions(split, make_backend("template"), tmp_path / "t.jsonl", limit=3,
                      progress=calls.append)
    assert calls == [0, 1, 1, 1]  # the template backend counts per image


def test_merge_refuses_shards_made_from_other_original_captions(split, tiny_split_files,
                                                                tmp_path):
    from llm_gen.stats import merge_shards

    split_path, _ = tiny_split_files
    bare = load_split(split_file=split_path, use_original_captions=False)
    # The digest covers every image's original caption, by hand here.
    pairs = [[f"img_{i:03d}", f"a photo number {i} with a surfboard"] for i in range(12)]
    digest = "sha256:" + hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]
    assert split.original_captions_digest == digest and bare.original_captions_digest == "none"

    shards = [tmp_path / f"s{i}.jsonl" for i in range(3)]
    generate_captions(split, ScriptedBackend(always_valid), shards[0], shard=Shard(0, 2))
    generate_captions(bare, ScriptedBackend(always_valid), shards[1], shard=Shard(1, 2))
    generate_captions(split, ScriptedBackend(always_valid), shards[2], shard=Shard(1, 2))
    assert {r["original_captions"] for r in read(shards[0])} == {digest}
    assert {r["original_captions"] for r in read(shards[1])} == {"none"}
    merged = tmp_path / "merged.jsonl"
    with pytest.raises(CaptionFileError, match=f"original_captions '{digest}' but .* with "
                                               "'none' \\(prompts made from other original"):
        merge_shards(shards[:2], merged, split=split)
    assert not merged.exists()
    assert merge_shards([shards[0], shards[2]], merged, split=split) == 12
    # Records written before the field existed are not compared on it.
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "original_captions"})
                           + "\n" for r in read(shards[1])))
    assert merge_shards([shards[0], old], merged, split=split, overwrite=True) == 12
    # The template backend reads no caption: its records carry none.
    template = tmp_path / "t.jsonl"
    generate_captions(split, make_backend("template"), template, limit=1)
    assert read(template)[0]["original_captions"] is None
