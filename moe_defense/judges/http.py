"""A small OpenAI-compatible client (stdlib only) for judge models served by vLLM, TGI, llama.cpp or an API.

Transient failures (connection refused, timeout, HTTP 429/5xx) are retried with exponential backoff;
whatever still fails becomes an `EndpointError` for that one request, so a batch always completes
and the judge records `Verdict.error` for exactly the items that could not be judged.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from moe_defense.errors import JudgeError

Api = Literal["chat", "completions"]
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class EndpointError(JudgeError):
    """One request failed for good (after retries); `reason` is short enough for a results record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def endpoint_url(base_url: str, api: Api) -> str:
    """`http://host:8000` and `http://host:8000/v1` both become `.../v1/chat/completions` (or `/v1/completions`)."""
    base = base_url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    return f"{base}/{'chat/completions' if api == 'chat' else 'completions'}"


class OpenAIClient:
    """POSTs chat messages to `/v1/chat/completions` (or raw text to `/v1/completions`) and returns the text."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api: Api = "chat",
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        backoff_s: float = 1.0,
        concurrency: int = 4,
        max_tokens: int = 16,
    ) -> None:
        self.url = endpoint_url(base_url, api)
        self.model = model
        self.api = api
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.concurrency = concurrency
        self.max_tokens = max_tokens

    def complete(self, request: Sequence[Mapping[str, str]] | str) -> str:
        """One answer: `request` is a message list for the chat API, a prompt string for completions."""
        payload: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "temperature": 0.0}
        payload["messages" if self.api == "chat" else "prompt"] = list(request) if self.api == "chat" else request
        body = self._post(json.dumps(payload).encode())
        try:
            choice = json.loads(body)["choices"][0]
            text = choice["message"]["content"] if self.api == "chat" else choice["text"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise EndpointError(f"malformed_response: {body[:200]!r}") from error
        if not isinstance(text, str):
            raise EndpointError(f"malformed_response: content is {type(text).__name__}")
        return text

    def complete_many(self, requests: Sequence[Sequence[Mapping[str, str]] | str]) -> list[str | EndpointError]:
        """Answers in request order; a failed request yields its `EndpointError` instead of stopping the batch."""

        def one(request: Sequence[Mapping[str, str]] | str) -> str | EndpointError:
            try:
                return self.complete(request)
            except EndpointError as error:
                return error

        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(one, requests))

    def _post(self, data: bytes) -> bytes:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        reason = "not_attempted"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return response.read()
            except urllib.error.HTTPError as error:
                reason = f"http_{error.code}"
                if error.code not in _RETRY_STATUS:
                    break
            except urllib.error.URLError as error:
                reason = "timeout" if isinstance(error.reason, TimeoutError) else f"unreachable: {error.reason}"
            except TimeoutError:
                reason = "timeout"
            except ConnectionError as error:
                reason = f"connection: {error}"
        raise EndpointError(f"{reason} after {attempt + 1} attempt(s) to {self.url}")
