"""The openai backend against a small OpenAI-compatible server on 127.0.0.1."""

import http.server
import json
import threading

import pytest
from click.testing import CliRunner

from kdpvlpa.cli import main
from llm_gen_test_helpers import labels_from_prompt, valid_answer


class _Handler(http.server.BaseHTTPRequestHandler):
    requests = []
    refuse_label = None  # prompts with this label get HTTP 400
    no_system_role = False  # a Gemma chat template: system messages get HTTP 400
    models = {"object": "list", "data": [{"id": "tiny-served"}]}  # GET /v1/models

    def log_message(self, *args):
        pass

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self._send(200, type(self).models)
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": "not found"})
            return
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(payload)
        messages = payload["messages"]
        if type(self).no_system_role and messages[0]["role"] == "system":
            # What vLLM's server answers when Gemma's template raises.
            self._send(400, {"error": {"message": "System role not supported"}})
            return
        labels, _ = labels_from_prompt(messages)
        retry = any(m["role"] == "assistant" for m in messages)
        if type(self).refuse_label in labels:
            self._send(400, {"error": {"message": "prompt is too long for this model"}})
            return
        if "bus" in labels and not retry:
            content = "A <tail>bus</tail>."  # too short: retried
        elif "hot dog" in labels:
            content = "A dog and a hot dog."  # never valid: fallback
        else:
            content = valid_answer(messages)
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})


@pytest.fixture
def server():
    _Handler.requests = []
    _Handler.refuse_label = None
    _Handler.no_system_role = False
    _Handler.models = {"object": "list", "data": [{"id": "tiny-served"}]}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_openai_backend_end_to_end(server, tmp_path, tiny_split_files):
    split_path, captions_path = tiny_split_files
    out = tmp_path / "c.jsonl"
    result = CliRunner().invoke(main, [
        "generate-captions", "--split-file", str(split_path), "--original-captions",
        str(captions_path), "--base-url", server, "--out", str(out),
        "--max-attempts", "2", "--seed", "7", "--concurrency", "4",
        "--strict-validation",
    ])
    assert result.exit_code == 0, result.output
    records = {r["image_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(records) == 12
    assert {r["validation"] for r in records.values()} == {"strict"}
    by_status = {s: sorted(i for i, r in records.items() if r["status"] == s)
                 for s in ("valid", "retried", "fallback")}
    # Labels cycle: images 3 and 11 have "hot dog"; 4 and 6 have "bus".
    assert by_status["fallback"] == ["img_003", "img_011"]
    assert by_status["retried"] == ["img_004", "img_006"]
    assert len(by_status["valid"]) == 8
    retried = records["img_004"]
    assert retried["attempts"] == 2 and retried["backend"] == "openai"
    assert retried["model"] == "tiny-served" and retried["base_url"] == server
    assert retried["failed_attempts"][0]["output"] == "A <tail>bus</tail>."
    fallback = records["img_003"]
    assert ("tail class 'hot dog' is mentioned without <tail> tags; wrap every mention "
            "of a tail class") in fallback["violations"]
    assert fallback["source"] == "template" and fallback["attempts"] == 2
    # 12 first attempts + 4 retries; sampling settings and per-image seeds sent.
    assert len(_Handler.requests) == 16
    first = _Handler.requests[0]
    assert first["model"] == "tiny-served" and first["temperature"] == 0.7
    assert first["top_p"] == 0.9 and first["max_tokens"] == 256
    assert len({r["seed"] for r in _Handler.requests}) == 16


def test_openai_backend_checks_method_rules_by_default(server, tmp_path,
                                                      tiny_split_files):
    split_path, _ = tiny_split_files
    out = tmp_path / "c.jsonl"
    result = CliRunner().invoke(main, [
        "generate-captions", "--split-file", str(split_path), "--base-url", server,
        "--out", str(out), "--max-attempts", "1", "--limit", "4", "--quiet",
    ])
    assert result.exit_code == 0, result.output
    records = {r["image_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert {r["validation"] for r in records.values()} == {"method"}
    # "A dog and a hot dog.": the untagged mention is not a rule of its own here.
    assert records["img_003"]["violations"] == [
        "tail class 'hot dog' is not mentioned inside <tail> tags",
        "the description has 6 words; it must have 50-80",
    ]


def test_openai_server_down_is_a_clear_error(tmp_path, tiny_split_files):
    split_path, _ = tiny_split_files
    out = tmp_path / "c.jsonl"
    result = CliRunner().invoke(main, [
        "generate-captions", "--split-file", str(split_path), "--backend", "openai",
        "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--out", str(out),
    ])
    assert result.exit_code != 0
    assert "failed 3 times" in result.output and "Is the server running?" in result.output


@pytest.mark.parametrize("models, message", [
    ({"object": "list", "data": []}, "lists no model; pass --model"),
    ([{"id": "x"}], "lists no model; pass --model"),
    ({"data": [{"name": "x"}]}, "answered without data[0].id"),
])
def test_a_models_list_without_a_model_id_is_a_clear_error(server, tmp_path, tiny_split_files,
                                                          models, message):
    split_path, _ = tiny_split_files
    _Handler.models = models
    result = CliRunner().invoke(main, [
        "generate-captions", "--split-file", str(split_path), "--backend", "openai",
        "--base-url", server, "--out", str(tmp_path / "c.jsonl")])
    assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "c.jsonl").exists()


def test_a_prompt_the_server_refuses_falls_back(server, tmp_path, tiny_split_files):
    split_path, _ = tiny_split_files
    _Handler.refuse_label = "potted plant"
    out = tmp_path / "c.jsonl"
    result = CliRunner().invoke(main, [
        "generate-captions", "--split-file", str(split_path), "--base-url", server,
        "--out", str(out), "--max-attempts", "3",
    ])
    assert result.exit_code == 0, result.output
    records = {r["image_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    refused = sorted(i for i, r in records.items() if "potted plant" in r["labels"])
    assert refused == ["img_001", "img_005", "img_009"]
    for image_id in refused:
        record = records[image_id]
        assert record["status"] == "fallback" and record["attempts"] == 1
        (violation,) = record["violations"]
        assert "could not answer this prompt" in violation and "HTTP 400" in violation
    assert len(records) == 12


def test_a_server_without_a_system_role_gets_the_prompt_folded(server, tmp_path,
                                                               tiny_split_files):
    from llm_gen.prompt import SYSTEM_PROMPT

    _Handler.no_system_role = True
    split_path, captions_path = tiny_split_files
    out = tmp_path / "c.jsonl"
    result = CliRunner().invoke(main, [
        "generate-captions", "--split-file", str(split_path), "--original-captions",
        str(captions_path), "--base-url", server, "--out", str(out), "--concurrency", "1",
    ])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # No image fell back because of the refused system message.
    assert all("System role" not in str(r["violations"]) for r in records)
    assert {r["status"] for r in records if "hot dog" not in r["labels"]} <= {"valid",
                                                                             "retried"}
    # One request was refused; every later one folds the system line into the
    # user message, as for a Gemma template under vLLM.
    with_system = [p for p in _Handler.requests if p["messages"][0]["role"] == "system"]
    assert len(with_system) == 1
    for payload in _Handler.requests[1:]:
        first = payload["messages"][0]
        assert first["role"] == "user" and first["content"].startswith(SYSTEM_PROMPT + "\n\n")


def test_only_a_refusal_about_the_system_role_folds_the_prompt(monkeypatch):
    from llm_gen.backends.base import FailedAnswer
    from llm_gen.backends.openai_backend import OpenAIBackend, _Refused

    backend = OpenAIBackend("http://ai-system.lan:8000/v1", model="served")

    def refuse(path, payload=None):
        raise _Refused(400, "http://ai-system.lan:8000/v1/chat/completions answered HTTP "
                       "400: prompt is too long", body="prompt is too long")

    monkeypatch.setattr(backend, "_request", refuse)
    messages = [{"role": "system", "content": "rules"}, {"role": "user", "content": "go"}]
    (answer,) = backend.generate([messages], [1])
    assert isinstance(answer, FailedAnswer) and backend.supports_system_role
