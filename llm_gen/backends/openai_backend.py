"""The `openai` backend: any OpenAI-compatible chat server, e.g. `vllm serve`.

Requests go out concurrently so that the server can batch them. Only the
standard library is used; no key is needed unless the server asks for one.
"""

import concurrent.futures
import json
import time
import urllib.error
import urllib.request

from llm_gen.backends.base import BackendError, CaptionBackend, FailedAnswer, clean_output


class _Refused(BackendError):
    """The server answered a request with a 4xx status."""

    def __init__(self, code, message, body=""):
        super().__init__(message)
        self.code = code
        self.body = body


def _fold_system(messages):
    """The system message folded into the first user message, as
    `build_messages(..., system_role=False)` writes it."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, first, *rest = messages
    return [{"role": "user", "content": f"{system['content']}\n\n{first['content']}"},
            *rest]


class OpenAIBackend(CaptionBackend):
    """Posts to `{base_url}/chat/completions`.

    A server whose chat template has no system role (Gemma) refuses a system
    message; the backend then folds it into the user message, for that
    request and every later one.

    Args:
        base_url: str. The server's API root, e.g. `http://localhost:8000/v1`.
        model: str or None. The served model name; None asks `/models` and
            takes the first.
        sampling: `SamplingSettings`.
        api_key: str or None. Sent as a bearer token when given.
        concurrency: int. Requests in flight at once.
        timeout: float. Seconds to wait for one answer.
        request_retries: int. Tries of a request that failed on the network or
            with a server error (5xx) before the run stops.
    """

    name = "openai"

    def __init__(self, base_url, model=None, sampling=None, api_key=None,
                 concurrency=8, timeout=300.0, request_retries=3):
        super().__init__(model=model, sampling=sampling)
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.concurrency = max(1, int(concurrency))
        self.timeout = timeout
        self.request_retries = max(1, int(request_retries))
        if self.model is None:
            self.model = self._first_model()

    def describe(self):
        fields = super().describe()
        fields["base_url"] = self.base_url
        return fields

    def _request(self, path, payload=None):
        url = f"{self.base_url}{path}"
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        last_error = None
        for attempt in range(self.request_retries):
            request = urllib.request.Request(url, data=data, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                body = e.read().decode("utf-8", "replace")[:500]
                if e.code < 500:
                    raise _Refused(e.code, f"{url} answered HTTP {e.code}: {body}",
                                   body) from None
                last_error = f"HTTP {e.code}: {body}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last_error = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except json.JSONDecodeError as e:
                raise BackendError(f"{url} did not answer JSON: {e}") from None
            if attempt + 1 < self.request_retries:
                time.sleep(min(2 ** attempt, 10))
        raise BackendError(
            f"{url} failed {self.request_retries} times; last error {last_error}. "
            "Is the server running?"
        )

    def _first_model(self):
        answer = self._request("/models")
        models = answer.get("data") if isinstance(answer, dict) else None
        if not models:
            raise BackendError(f"{self.base_url}/models lists no model; pass --model.")
        try:
            return str(models[0]["id"])
        except (KeyError, IndexError, TypeError):
            raise BackendError(
                f"{self.base_url}/models answered without data[0].id: "
                f"{str(answer)[:300]}; pass --model."
            ) from None

    def _one(self, messages, seed):
        if not self.supports_system_role:
            messages = _fold_system(messages)
        payload = {
            "model": self.model,
            "messages": messages,
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "max_tokens": self.sampling.max_tokens,
            "seed": seed,
        }
        try:
            answer = self._request("/chat/completions", payload)
        except _Refused as error:
            if (error.code in (400, 422) and messages[0]["role"] == "system"
                    and "system" in error.body.lower()):
                self.supports_system_role = False
                return self._one(messages, seed)
            # 400, 413 and 422 reject this request (a prompt too long for the
            # model, say); 401, 403 and 404 (key, URL, model) stop the run.
            if error.code in (400, 413, 422):
                return FailedAnswer(str(error))
            raise
        try:
            return clean_output(answer["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise BackendError(
                f"{self.base_url}/chat/completions answered without "
                f"choices[0].message.content: {str(answer)[:300]}"
            ) from None

    def generate(self, conversations, seeds):
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._one, conversations, seeds))
