"""An OpenAI-compatible client (httpx + tenacity) for judge models served by vLLM, TGI, llama.cpp or an API.

One keep-alive connection pool per client (so per judge), at most `concurrency` requests in flight.
Transient failures (connection refused, timeout, HTTP 408/429/5xx) are retried with exponential
backoff and full jitter; a 429 or 503 carrying `Retry-After` (seconds or an HTTP date) is waited out
as asked (capped at `max_wait_s`). Whatever still fails becomes an `EndpointError` for that one
request, so a batch always completes and the judge records `Verdict.error` for exactly those items.
Retries, rate limits and time waited are counted in `OpenAIClient.stats`.
"""

from __future__ import annotations

import email.utils
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from moe_defense.errors import JudgeError

Api = Literal["chat", "completions"]
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_RETRY_AFTER_STATUS = frozenset({429, 503})


class EndpointError(JudgeError):
    """One request failed for good (after retries); `reason` is short enough for a results record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Transient(Exception):
    """An attempt failed in a way worth retrying; `retry_after_s` is what the server asked us to wait."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class _Fatal(Exception):
    """An attempt failed in a way retrying cannot fix (HTTP 4xx other than 408/429)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ClientStats:
    """What a client cost beyond one attempt per request, summed over its lifetime."""

    attempts: int = 0
    retries: int = 0
    rate_limited: int = 0  # HTTP 429 answers
    waited_s: float = 0.0  # time slept between attempts (backoff and Retry-After)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def endpoint_url(base_url: str, api: Api) -> str:
    """`http://host:8000` and `http://host:8000/v1` both become `.../v1/chat/completions` (or `/v1/completions`)."""
    base = base_url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    return f"{base}/{'chat/completions' if api == 'chat' else 'completions'}"


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delay-seconds or an HTTP date (RFC 9110); None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


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
        max_wait_s: float = 60.0,
        concurrency: int = 4,
        max_tokens: int = 16,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = endpoint_url(base_url, api)
        self.model = model
        self.api = api
        self.max_retries = max_retries
        self.max_wait_s = max_wait_s
        self.concurrency = max(1, concurrency)
        self.max_tokens = max_tokens
        self.stats = ClientStats()
        self._sleep = sleep
        self._backoff = wait_random_exponential(multiplier=backoff_s, max=max_wait_s)
        self._lock = threading.Lock()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
        )

    def complete(self, request: Sequence[Mapping[str, str]] | str) -> str:
        """One answer: `request` is a message list for the chat API, a prompt string for completions."""
        payload: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "temperature": 0.0}
        payload["messages" if self.api == "chat" else "prompt"] = list(request) if self.api == "chat" else request
        body = self._post(payload)
        try:
            choice = body.json()["choices"][0]
            text = choice["message"]["content"] if self.api == "chat" else choice["text"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise EndpointError(f"malformed_response: {body.content[:200]!r}") from error
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

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, requests))

    def wait_s(self, state: RetryCallState) -> float:
        """Before a retry: the server's `Retry-After` when it gave one, else backoff with full jitter
        (uniform in [0, backoff_s * 2**(retry - 1)]); never more than `max_wait_s`."""
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, _Transient) and error.retry_after_s is not None:
            return min(error.retry_after_s, self.max_wait_s)
        return self._backoff(state)

    def _post(self, payload: dict[str, Any]) -> httpx.Response:
        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self.wait_s,
            retry=retry_if_exception_type(_Transient),
            sleep=self._sleep,
            before_sleep=self._count_retry,
            reraise=True,
        )
        try:
            return retrying(self._attempt, payload)
        except (_Transient, _Fatal) as error:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise EndpointError(f"{error.reason} after {attempts} attempt(s) to {self.url}") from None

    def _attempt(self, payload: dict[str, Any]) -> httpx.Response:
        with self._lock:
            self.stats.attempts += 1
        try:
            response = self._http.post(self.url, json=payload)
        except httpx.TimeoutException:
            raise _Transient("timeout") from None
        except httpx.ConnectError as error:
            raise _Transient(f"unreachable: {error}") from None
        except httpx.TransportError as error:
            raise _Transient(f"connection: {error}") from None
        status = response.status_code
        if status == 429:
            with self._lock:
                self.stats.rate_limited += 1
        if status in _RETRY_STATUS:
            wait = retry_after_s(response.headers.get("Retry-After")) if status in _RETRY_AFTER_STATUS else None
            raise _Transient(f"http_{status}", retry_after_s=wait)
        if response.is_error:
            raise _Fatal(f"http_{status}")
        return response

    def _count_retry(self, state: RetryCallState) -> None:
        with self._lock:
            self.stats.retries += 1
            self.stats.waited_s += state.upcoming_sleep
