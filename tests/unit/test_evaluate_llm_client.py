"""Chat client (on the openai package) retries and the LLM judge against a loopback stub
server with fault injection (no model)."""

from __future__ import annotations

import os
import random
import sys

import pytest

from fixtures.chat_server import Fault, LocalChatServer, ScriptedBackend
from tl_latentlens.evaluate.chat_client import (
    ChatClient,
    ChatError,
    MissingExtraError,
    RetryPolicy,
    parse_retry_after,
)
from tl_latentlens.evaluate.judges import JudgeCase
from tl_latentlens.evaluate.llm_judge import LLMJudge, LLMJudgeConfig

YES = '{"interpretable": "yes", "candidates": [1], "kind": "concrete"}'
MSG = [{"role": "user", "content": "hi"}]


def client(server, sleeps, **kw):
    retry = kw.pop(
        "retry", RetryPolicy(max_attempts=4, backoff_base_s=0.5, backoff_max_s=2.0, jitter=0.5)
    )
    return ChatClient(
        server.base_url,
        "stub",
        timeout_s=kw.pop("timeout_s", 5.0),
        retry=retry,
        sleep=sleeps.append,
        seed=0,
        **kw,
    )


def test_plain_request_and_payload():
    with LocalChatServer(ScriptedBackend(["hello"])) as server:
        sleeps = []
        c = client(server, sleeps, api_key="secret")
        assert c.chat(MSG, max_tokens=7, temperature=0.0) == "hello"
        assert server.requests[0]["model"] == "stub" and server.requests[0]["max_tokens"] == 7
        assert server.headers[0]["authorization"] == "Bearer secret"
        assert server.base_url.startswith("http://127.0.0.1:")
        assert sleeps == []


def test_429_retry_after_then_success():
    faults = [Fault(status=429, headers={"Retry-After": "3"}), Fault(status=429)]
    with LocalChatServer(ScriptedBackend(["ok"]), faults=faults) as server:
        sleeps = []
        assert client(server, sleeps).chat(MSG) == "ok"
        assert len(server.requests) == 3
        assert sleeps[0] == 3.0  # the server's Retry-After
        assert 0.5 * 2 * 0.5 <= sleeps[1] <= 0.5 * 2  # backoff of attempt 2, jittered


def test_retry_after_capped():
    faults = [Fault(status=503, headers={"Retry-After": "9999"})]
    with LocalChatServer(ScriptedBackend(["ok"]), faults=faults) as server:
        sleeps = []
        retry = RetryPolicy(max_attempts=2, retry_after_max_s=4.0)
        assert client(server, sleeps, retry=retry).chat(MSG) == "ok"
        assert sleeps == [4.0]


def test_backoff_exponential_with_jitter_and_give_up():
    faults = [Fault(status=500)] * 4
    with LocalChatServer(ScriptedBackend(["never"]), faults=faults) as server:
        sleeps = []
        with pytest.raises(ChatError, match="gave up after 4 attempts") as err:
            client(server, sleeps).chat(MSG)
        assert err.value.status == 500 and err.value.attempts == 4
        assert len(server.requests) == 4 and len(sleeps) == 3
        for i, s in enumerate(sleeps):
            cap = min(2.0, 0.5 * 2**i)
            assert cap * 0.5 <= s <= cap


def test_delays_are_seeded():
    policy = RetryPolicy(backoff_base_s=1.0, jitter=1.0)
    a = [policy.delay(i, random.Random(3)) for i in range(4)]
    b = [policy.delay(i, random.Random(3)) for i in range(4)]
    assert a == b and all(0 <= d <= 30 for d in a)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=2)


def test_timeout_then_success():
    with LocalChatServer(ScriptedBackend(["late", "fine"]), faults=[Fault(delay_s=1.0)]) as server:
        sleeps = []
        out = client(server, sleeps, timeout_s=0.3).chat(MSG)
        assert len(sleeps) == 1
        # the slow first answer was abandoned; the retry is served
        assert out in ("late", "fine") and len(server.requests) == 2


def test_unreadable_body_is_retried():
    with LocalChatServer(
        ScriptedBackend(["ok"]), faults=[Fault(body="<html>oops"), Fault(body='{"choices": []}')]
    ) as server:
        sleeps = []
        assert client(server, sleeps).chat(MSG) == "ok"
        assert len(sleeps) == 2


def test_client_errors_are_not_retried():
    with LocalChatServer(ScriptedBackend(["ok"]), faults=[Fault(status=401)]) as server:
        sleeps = []
        with pytest.raises(ChatError, match="HTTP 401") as err:
            client(server, sleeps).chat(MSG)
        assert not err.value.retryable and sleeps == [] and len(server.requests) == 1


def test_connection_refused_is_retried():
    with LocalChatServer(ScriptedBackend(["x"])) as server:
        url = server.base_url
    sleeps = []
    c = ChatClient(
        url,
        "stub",
        timeout_s=1,
        retry=RetryPolicy(max_attempts=2, backoff_base_s=0.1),
        sleep=sleeps.append,
    )
    with pytest.raises(ChatError, match="cannot reach"):
        c.chat(MSG)
    assert len(sleeps) == 1


def test_request_budget():
    with LocalChatServer(ScriptedBackend(["x"]), max_requests=1) as server:
        sleeps = []
        c = client(server, sleeps, retry=RetryPolicy(max_attempts=1))
        assert c.chat(MSG) == "x"
        with pytest.raises(ChatError, match="503"):
            c.chat(MSG)


def test_parse_retry_after():
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480 - 10) == pytest.approx(
        10.0
    )
    assert parse_retry_after("soon") is None and parse_retry_after("") is None


CASE = JudgeCase(None, "im", 0, 0, (4, 4), ("dog", "the"), label="dog", caption="A dog.")


def judge_for(server, **kw):
    cfg = LLMJudgeConfig(
        base_url=server.base_url,
        model="stub",
        vision=False,
        retry=RetryPolicy(max_attempts=2, backoff_base_s=0.01),
        **kw,
    )
    return LLMJudge(cfg)


def test_llm_judge_reads_answer_and_reasks_malformed():
    with LocalChatServer(ScriptedBackend(["no json here", "still {broken", YES])) as server:
        v = judge_for(server).judge(CASE)
        assert (
            v.kind == "concrete" and v.matches == (0,) and v.candidate_kinds == ("concrete", "none")
        )
        temps = [r["temperature"] for r in server.requests]
        assert temps == [0.0, 0.7, 0.7]  # re-asks sample
        assert isinstance(server.requests[0]["messages"][1]["content"], str)  # text-only mode


def test_llm_judge_malformed_after_attempts_is_error_not_no():
    with LocalChatServer(ScriptedBackend(["maybe?"])) as server:
        v = judge_for(server, answer_attempts=2).judge(CASE)
        assert v.is_error and "unreadable answer after 2 attempts" in v.error and v.raw == "maybe?"
        assert len(server.requests) == 2


def test_llm_judge_http_failure_is_error():
    with LocalChatServer(ScriptedBackend([YES]), faults=[Fault(status=429)] * 5) as server:
        judge = judge_for(server)
        judge.client.sleep = lambda s: None
        v = judge.judge(CASE)
        assert v.is_error and "request failed" in v.error


def test_llm_judge_config_from_env():
    env = {
        "TL_LATENTLENS_JUDGE_BASE_URL": "http://127.0.0.1:9/v1",
        "TL_LATENTLENS_JUDGE_MODEL": "m",
        "TL_LATENTLENS_JUDGE_API_KEY": "sekrit-key",
        "TL_LATENTLENS_JUDGE_VISION": "0",
    }
    cfg = LLMJudgeConfig.from_env(env)
    assert (cfg.base_url, cfg.model, cfg.api_key, cfg.vision) == (
        "http://127.0.0.1:9/v1",
        "m",
        "sekrit-key",
        False,
    )
    assert "sekrit" not in repr(cfg)
    d = LLMJudge(cfg).describe()
    assert d["api_key_set"] is True and "api_key" not in d
    assert LLMJudgeConfig.from_env(env, model="other", vision=None).model == "other"
    with pytest.raises(ValueError, match="TL_LATENTLENS_JUDGE_BASE_URL"):
        LLMJudgeConfig.from_env({})
    with pytest.raises(ValueError, match="http"):
        ChatClient("127.0.0.1:9", "m")


def test_openai_environment_is_honoured(monkeypatch):
    with LocalChatServer(ScriptedBackend(["env"])) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "from-env")
        c = ChatClient(None, "stub", retry=RetryPolicy(max_attempts=1))
        assert c.chat(MSG) == "env"
        assert c.url == server.base_url + "/chat/completions"
        assert server.headers[0]["authorization"] == "Bearer from-env"
        cfg = LLMJudgeConfig.from_env({"TL_LATENTLENS_JUDGE_MODEL": "m", **os.environ})
        assert (cfg.base_url, cfg.api_key) == (server.base_url, "from-env")
        own = {"TL_LATENTLENS_JUDGE_BASE_URL": "http://h:1/v1", "TL_LATENTLENS_JUDGE_API_KEY": "k"}
        cfg = LLMJudgeConfig.from_env({**os.environ, **own}, model="m")
        assert (cfg.base_url, cfg.api_key) == ("http://h:1/v1", "k")  # ours win


def test_no_key_configured_still_reaches_a_local_server(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with LocalChatServer(ScriptedBackend(["ok"])) as server:
        assert ChatClient(server.base_url, "stub").chat(MSG) == "ok"


def test_missing_openai_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai -> ImportError
    with pytest.raises(MissingExtraError, match=r"pip install \"tl_latentlens\[llm\]\""):
        ChatClient("http://127.0.0.1:9/v1", "m")
    cfg = LLMJudgeConfig(base_url="http://127.0.0.1:9/v1", model="m")
    with pytest.raises(ImportError, match="openai"):
        LLMJudge(cfg)
