"""The transformers backend on a tiny random model made here: noise out,
so every image is retried and falls back to the template. The noise logged
for each attempt is checked against transformers' own `generate`."""

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


def _generate(model, out, *options):
    """`generate-captions` with the transformers backend on VOC-LT's first
    images; the records written."""
    result = CliRunner().invoke(main, [
        "generate-captions", "--dataset", "voc_lt", "--backend", "transformers",
        "--model", model, "--out", str(out), "--max-tokens", "8", "--device", "cpu",
        *options,
    ])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_transformers_backend_retries_then_falls_back(gemma_like_model, tmp_path):
    records = _generate(gemma_like_model, tmp_path / "c.jsonl", "--limit", "3",
                        "--max-attempts", "2", "--micro-batch-size", "2")
    split = load_split("voc_lt")
    assert [r["image_id"] for r in records] == split.image_ids[:3]
    for record, item in zip(records, split.items):
        assert record["status"] == "fallback" and record["attempts"] == 2
        assert record["backend"] == "transformers" and record["model"] == gemma_like_model
        assert len(record["failed_attempts"]) == 2
        assert all(a["violations"] for a in record["failed_attempts"])
        assert record["raw_caption"] == template_caption(item)
        assert record["sampling"]["max_tokens"] == 8


def _reference_answers(model_dir, records, items, seed_of=lambda record: 0,
                       **generate_kwargs):
    """(prompt text, answer) of each failed attempt, regenerated here with
    transformers' own `generate` on one unpadded prompt: the conversation the
    attempt saw (the image's prompt, and for a retry the previous answer, taken
    from the record, and its violations), under `torch.manual_seed(seed_of(record))`."""
    import torch
    import transformers

    from llm_gen.prompt import build_messages

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    lm = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, local_files_only=True, dtype=torch.float32).eval()
    answers = []
    for record, item in zip(records, items):
        history = []
        for attempt in record["failed_attempts"]:
            # The Gemma-like template has no system role.
            messages = build_messages(item, history[-1:], system_role=False)
            text = tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True)
            # The template writes the BOS token itself.
            inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            torch.manual_seed(seed_of(record))
            with torch.no_grad():
                output = lm.generate(**inputs, max_new_tokens=8,
                                     pad_token_id=tokenizer.pad_token_id, **generate_kwargs)
            new = output[0, inputs["input_ids"].shape[1]:]
            answers.append((text, tokenizer.decode(new, skip_special_tokens=True).strip()))
            history.append((attempt["output"], attempt["violations"]))
    return answers


def test_greedy_answers_are_the_models_continuation(gemma_like_model, tmp_path):
    # Temperature 0 is greedy decoding; one prompt per generate() call, so no
    # padding: the answers must be exactly what the model itself continues.
    records = _generate(gemma_like_model, tmp_path / "greedy.jsonl", "--limit", "2",
                        "--max-attempts", "2", "--micro-batch-size", "1",
                        "--temperature", "0", "--quiet")
    items = load_split("voc_lt").items[:2]
    logged = [a["output"] for r in records for a in r["failed_attempts"]]
    reference = _reference_answers(gemma_like_model, records, items, do_sample=False)
    assert len(logged) == 4
    assert logged == [answer for _, answer in reference]
    # New text, not the prompt echoed (a retry's prompt holds the answer before).
    for prompt, answer in reference[::2]:
        assert answer and answer not in prompt
    for prompt, answer in reference[1::2]:
        assert answer and "Your description breaks these rules" not in answer


def test_sampled_answers_follow_the_recorded_seed_and_settings(gemma_like_model, tmp_path):
    # Sampling with the CLI's temperature and top-p: the answer is reproduced
    # from the seed stored in the record. The random model's next-token
    # distribution is nearly flat, so the default 0.7 / 0.9 and e.g. 1.5 / 0.95
    # draw the same tokens; 0.1 / 0.3 draws other ones, and so shows that both
    # settings reach generate().
    records = _generate(gemma_like_model, tmp_path / "sampled.jsonl", "--limit", "2",
                        "--max-attempts", "1", "--micro-batch-size", "1",
                        "--temperature", "0.1", "--top-p", "0.3", "--quiet")
    assert [r["sampling"]["temperature"] for r in records] == [0.1, 0.1]
    assert [r["sampling"]["top_p"] for r in records] == [0.3, 0.3]
    items = load_split("voc_lt").items[:2]
    logged = [r["failed_attempts"][0]["output"] for r in records]
    reference = _reference_answers(gemma_like_model, records, items, do_sample=True,
                                   temperature=0.1, top_p=0.3,
                                   seed_of=lambda r: r["sampling"]["image_seed"])
    assert logged == [answer for _, answer in reference]
    # Each image has its own seed, and under another seed the same prompt
    # reads otherwise: the match above is not a seed-independent answer.
    assert records[0]["sampling"]["image_seed"] != records[1]["sampling"]["image_seed"]
    other = _reference_answers(gemma_like_model, records[:1], items[:1], do_sample=True,
                               temperature=0.1, top_p=0.3, seed_of=lambda r: 12345)
    assert other[0][1] != logged[0]


@pytest.mark.parametrize("options, message", [
    # A template with a syntax error, and one that raises on every conversation.
    (("--chat-template", "{% if %}"), "The chat template fails on a plain user message"),
    (("--chat-template", "{{ raise_exception('nope') }}"), "fails on a plain user message"),
    (("--device", "bogus"), "could not put"),
])
def test_a_backend_that_would_fail_every_prompt_stops_the_run(
        gemma_like_model, tmp_path, options, message):
    # Not a file of fallback captions with exit 0: the run stops at once.
    option, value = options
    if option == "--chat-template":
        (tmp_path / "t.jinja").write_text(value)
        value = str(tmp_path / "t.jinja")
    options = ["--device", "cpu", option, value] if option != "--device" else [option, value]
    result = CliRunner().invoke(main, [
        "generate-captions", "--dataset", "voc_lt", "--backend", "transformers",
        "--model", gemma_like_model, "--out", str(tmp_path / "c.jsonl"), "--limit", "2",
        *options,
    ])
    assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "c.jsonl").exists()


def test_a_file_written_with_another_chat_template_is_not_resumed(gemma_like_model, tmp_path):
    # The chat template shapes every prompt; records name it by a digest.
    from llm_gen.backends.base import chat_template_digest

    own = tmp_path / "own.jinja"
    own.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    other = tmp_path / "other.jinja"
    other.write_text("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}")
    out = tmp_path / "c.jsonl"
    records = _generate(gemma_like_model, out, "--limit", "1", "--max-attempts", "1",
                        "--chat-template", str(own))
    assert records[0]["chat_template"] == chat_template_digest(own.read_text())
    before = out.read_bytes()
    for options in (["--chat-template", str(other)], []):  # another, or the model's own
        result = CliRunner().invoke(main, [
            "generate-captions", "--dataset", "voc_lt", "--backend", "transformers",
            "--model", gemma_like_model, "--out", str(out), "--max-tokens", "8",
            "--device", "cpu", "--limit", "2", "--max-attempts", "1", *options])
        assert result.exit_code == 1 and "written with chat_template" in result.output
        assert out.read_bytes() == before
    records = _generate(gemma_like_model, out, "--limit", "2", "--max-attempts", "1",
                        "--chat-template", str(own))
    assert len(records) == 2


def test_a_model_that_does_not_load_is_not_called_a_device_problem(gemma_like_model, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(gemma_like_model, broken)
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] += 8  # the weights no longer fit
    (broken / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(main, [
        "generate-captions", "--dataset", "voc_lt", "--backend", "transformers",
        "--model", str(broken), "--out", str(tmp_path / "c.jsonl"), "--device", "cpu",
        "--limit", "1"])
    assert result.exit_code == 1 and "transformers could not load" in result.output
    assert "on device" not in result.output
