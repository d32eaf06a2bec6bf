"""The OpenAI-compatible path against a real loopback server: healthy, slow, garbage, 5xx, flaky, malformed, down."""

from __future__ import annotations

import pytest

from moe_defense.errors import ConfigError
from moe_defense.judges import HarmBenchConfig, HarmBenchJudge, JudgeItem, asr
from moe_defense.judges.http import EndpointError, OpenAIClient, endpoint_url

HARMFUL = "HARMFUL-CONTENT"  # the scripted judge calls a generation harmful when it carries this marker
ITEMS = [JudgeItem(f"request {i}", f"{HARMFUL} reply {i}" if i % 2 else f"I refuse {i}") for i in range(6)]
EXPECTED = [bool(i % 2) for i in range(6)]


def harmbench_answer(server):
    """A scripted classifier: "Yes" for the generation that carries the harmful marker, "No" otherwise."""
    return lambda payload: "Yes" if HARMFUL in server.text(payload).split("[GENERATION]:")[1] else "No"


def judge(url, fast_http, **overrides):
    return HarmBenchJudge(HarmBenchConfig(url=url, **{**fast_http, **overrides}))


def test_healthy_endpoint_gives_each_item_its_own_verdict(judge_server, fast_http):
    judge_server.answer = harmbench_answer(judge_server)
    verdicts = judge(judge_server.url, fast_http).judge_batch(ITEMS)
    assert [v.status for v in verdicts] == ["scored"] * 6
    assert [v.jailbroken for v in verdicts] == EXPECTED  # order survives concurrent requests
    assert asr(verdicts) == {
        "asr": 0.5,
        "asr_ci95": [0.1876, 0.8124],
        "n_scored": 6,
        "n_success": 3,
        "n_judge_errors": 0,
        "n_total": 6,
    }
    path, payload, _ = judge_server.requests[0]
    assert path == "/v1/chat/completions"
    assert payload["model"] == "judge" and payload["temperature"] == 0.0 and payload["max_tokens"] == 4
    assert [m["role"] for m in payload["messages"]] == ["system", "user"]


def test_garbage_answers_are_unscored_never_a_verdict(judge_server, fast_http):
    judge_server.mode = "garbage"
    verdicts = judge(judge_server.url, fast_http).judge_batch(ITEMS)
    assert {(v.status, v.reason, v.jailbroken) for v in verdicts} == {("unscored", "parse_failure", None)}
    assert verdicts[0].raw == "I am a teapot; no verdict from me."
    assert asr(verdicts)["asr"] is None and asr(verdicts)["n_judge_errors"] == 6


def test_http_500_is_retried_then_an_error(judge_server, fast_http):
    judge_server.mode = "error500"
    verdicts = judge(judge_server.url, fast_http).judge_batch(ITEMS)
    assert len(verdicts) == 6
    assert all(v.status == "error" and v.reason.startswith("http_500 after 2 attempt(s)") for v in verdicts)
    assert len(judge_server.requests) == 12  # one retry per item


def test_slow_endpoint_times_out_into_errors(judge_server, fast_http):
    judge_server.mode, judge_server.delay_s = "slow", 1.0
    verdicts = judge(judge_server.url, fast_http, max_retries=0).judge_batch(ITEMS[:3])
    assert [v.status for v in verdicts] == ["error"] * 3
    assert all(v.reason.startswith("timeout") for v in verdicts)


def test_endpoint_down_completes_the_batch_with_errors(closed_port_url, fast_http):
    verdicts = judge(closed_port_url, fast_http).judge_batch(ITEMS)
    assert len(verdicts) == 6
    assert all(v.status == "error" and v.reason.startswith("unreachable") for v in verdicts)
    assert asr(verdicts) == {
        "asr": None,
        "asr_ci95": None,
        "n_scored": 0,
        "n_success": 0,
        "n_judge_errors": 6,
        "n_total": 6,
    }


def test_transient_failure_recovers_on_retry(judge_server, fast_http):
    judge_server.mode, judge_server.flaky_failures, judge_server.answer = "flaky", 1, harmbench_answer(judge_server)
    verdicts = judge(judge_server.url, fast_http, concurrency=1).judge_batch(ITEMS[:2])
    assert [(v.status, v.jailbroken) for v in verdicts] == [("scored", False), ("scored", True)]
    assert len(judge_server.requests) == 3


def test_malformed_body_is_an_error_not_a_parse_failure(judge_server, fast_http):
    judge_server.mode = "malformed"
    verdict = judge(judge_server.url, fast_http).judge_batch(ITEMS[:1])[0]
    assert verdict.status == "error" and verdict.reason.startswith("malformed_response")


def test_some_items_failing_leaves_the_others_scored(judge_server, fast_http):
    healthy = harmbench_answer(judge_server)

    def answer(payload):
        if "request 2" in judge_server.text(payload):
            raise ConnectionResetError  # the handler dies: the client sees a dropped connection
        return healthy(payload)

    judge_server.answer = answer
    verdicts = judge(judge_server.url, fast_http).judge_batch(ITEMS)
    assert [v.status for v in verdicts] == ["scored", "scored", "error", "scored", "scored", "scored"]
    assert [v.jailbroken for i, v in enumerate(verdicts) if i != 2] == [e for i, e in enumerate(EXPECTED) if i != 2]


def test_completions_api_sends_the_official_raw_prompt(judge_server, fast_http):
    judge_server.answer = harmbench_answer(judge_server)
    verdicts = judge(judge_server.url, fast_http, api="completions").judge_batch(ITEMS[:2])
    assert [v.jailbroken for v in verdicts] == EXPECTED[:2]
    path, payload, _ = judge_server.requests[0]
    assert path == "/v1/completions"
    assert payload["prompt"].startswith("[INST] <<SYS>>\nYou are a classifier for red teaming")
    assert payload["prompt"].endswith("Answer: [/INST]")


def test_api_key_comes_from_the_named_environment_variable(judge_server, fast_http, monkeypatch):
    monkeypatch.setenv("MOE_DEFENSE_TEST_JUDGE_KEY", "sk-test")
    judge(judge_server.url, fast_http, api_key_env="MOE_DEFENSE_TEST_JUDGE_KEY").judge_batch(ITEMS[:1])
    assert judge_server.requests[0][2]["Authorization"] == "Bearer sk-test"
    monkeypatch.delenv("MOE_DEFENSE_TEST_JUDGE_KEY")
    with pytest.raises(ConfigError, match="MOE_DEFENSE_TEST_JUDGE_KEY"):
        judge(judge_server.url, fast_http, api_key_env="MOE_DEFENSE_TEST_JUDGE_KEY")


def test_client_raises_endpoint_error_per_request(closed_port_url):
    client = OpenAIClient(closed_port_url, "judge", max_retries=0)
    with pytest.raises(EndpointError, match="unreachable"):
        client.complete([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("base", ["http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/"])
def test_endpoint_url_accepts_base_with_or_without_v1(base):
    assert endpoint_url(base, "chat") == "http://h:8000/v1/chat/completions"
    assert endpoint_url(base, "completions") == "http://h:8000/v1/completions"
