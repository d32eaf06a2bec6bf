"""The endpoint client: Retry-After honoured and counted, jittered backoff, bounded concurrency, keep-alive."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from moe_defense.judges import HarmBenchConfig, HarmBenchJudge, JudgeItem
from moe_defense.judges.http import OpenAIClient, retry_after_s

ITEMS = [JudgeItem(f"request {i}", f"reply {i}") for i in range(8)]
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


class FakeSleep:
    """Records the waits instead of sleeping them."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def judge(url, fast_http, **overrides) -> HarmBenchJudge:
    return HarmBenchJudge(HarmBenchConfig(url=url, **{**fast_http, **overrides}))


def client_with_fake_sleep(judge_server, **kwargs) -> tuple[OpenAIClient, FakeSleep]:
    sleep = FakeSleep()
    return OpenAIClient(judge_server.url, "judge", timeout_s=5.0, sleep=sleep, **kwargs), sleep


def test_429_with_retry_after_seconds_is_waited_and_counted(judge_server, fast_http):
    judge_server.mode, judge_server.retry_after, judge_server.flaky_failures = "ratelimited", "1", 1
    rated = judge(judge_server.url, fast_http, timeout_s=5.0, backoff_s=0.0)
    start = time.monotonic()
    (verdict,) = rated.judge_batch(ITEMS[:1])
    elapsed = time.monotonic() - start
    assert (verdict.status, verdict.jailbroken) == ("scored", False)
    assert elapsed >= 1.0  # the 1 s asked for, although the backoff alone would not wait at all
    assert rated.stats() == {"attempts": 2, "retries": 1, "rate_limited": 1, "waited_s": 1.0}


def test_429_with_an_http_date_waits_until_that_time(judge_server):
    judge_server.mode, judge_server.flaky_failures = "ratelimited", 1
    judge_server.retry_after = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    client, sleep = client_with_fake_sleep(judge_server, backoff_s=0.0)
    assert client.complete("prompt") == "no"
    (wait,) = sleep.waits
    assert 25.0 < wait <= 30.0  # the date has one-second resolution and the request took a moment
    assert client.stats.rate_limited == 1 and client.stats.waited_s == wait


def test_retry_after_beyond_max_wait_is_capped_and_persistent_429_is_an_error(judge_server):
    judge_server.mode, judge_server.retry_after, judge_server.flaky_failures = "ratelimited", "3600", 99
    client, sleep = client_with_fake_sleep(judge_server, max_retries=2, max_wait_s=5.0)
    (answer,) = client.complete_many(["prompt"])
    assert not isinstance(answer, str) and answer.reason.startswith("http_429 after 3 attempt(s)")
    assert sleep.waits == [5.0, 5.0]
    assert client.stats.as_dict() == {"attempts": 3, "retries": 2, "rate_limited": 3, "waited_s": 10.0}


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("Thu, 01 Jan 2026 12:00:42 GMT", 42.0),
        ("Thu, 01 Jan 2026 11:59:00 GMT", 0.0),  # already past
        (None, None),
        ("soon", None),
        ("inf", None),
    ],
)
def test_retry_after_reads_seconds_and_http_dates(header, seconds):
    assert retry_after_s(header, now=NOW) == seconds


def test_backoff_is_jittered_within_its_exponential_bounds(judge_server):
    judge_server.mode = "error500"
    client, sleep = client_with_fake_sleep(judge_server, max_retries=3, backoff_s=0.5, concurrency=1)
    answers = client.complete_many(["prompt"] * 8)
    assert all(not isinstance(a, str) and a.reason.startswith("http_500 after 4 attempt(s)") for a in answers)
    assert len(sleep.waits) == 24  # 3 retries per request
    for retry, wait in enumerate(sleep.waits):
        assert 0.0 <= wait <= 0.5 * 2 ** (retry % 3)  # retry k of a request: uniform in [0, backoff_s * 2**(k-1)]
    assert len(set(sleep.waits)) == len(sleep.waits)  # drawn at random, not a fixed schedule
    assert client.stats.retries == 24 and client.stats.waited_s == pytest.approx(sum(sleep.waits))


def test_no_more_requests_in_flight_than_the_concurrency(judge_server, fast_http):
    judge_server.mode, judge_server.delay_s = "slow", 0.3
    verdicts = judge(judge_server.url, fast_http, timeout_s=10.0, concurrency=2).judge_batch(ITEMS)
    assert [v.status for v in verdicts] == ["scored"] * len(ITEMS)
    assert judge_server.max_in_flight == 2


def test_connections_are_kept_alive_and_reused(judge_server, fast_http):
    rated = judge(judge_server.url, fast_http, timeout_s=5.0, concurrency=2)
    rated.judge_batch(ITEMS)
    rated.judge_batch(ITEMS)  # a second batch reuses the judge's pool too
    assert len(judge_server.client_ports) == 16
    assert len(set(judge_server.client_ports)) <= 2  # one TCP connection per worker, not per request
