"""`lmforge serve`: the HTTP API end to end on a tiny random model, on 127.0.0.1 only.

Greedy outputs through the server must equal direct generation (also with 8 concurrent clients
of different lengths), bad input must be a 4xx with OpenAI-style error JSON and leave the server
working, and a client that disconnects mid-stream must free its slot.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.api import LLM
from lmforge.config import Config
from lmforge.generate import Engine, Event, generate
from lmforge.model import GPT
from lmforge.prompts import encode_chat, stop_tokens
from lmforge.sampling import SamplingParams
from lmforge.serve import Server
from lmforge.serve.app import ServeSettings, create_app
from lmforge.serve.metrics import parse_metrics
from lmforge.serve.schemas import CompletionRequest

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
    "Hello world! How are you today? I am fine, thank you. Numbers: 0 1 2 3 4 5 6 7 8 9.",
] * 5
CONTEXT = 1024  # tokens per slot of the shared server (the model's block_size is 4096)
PROMPTS = ["Hello", "The quick brown fox", "It is a truth universally acknowledged, that a single man",
           "Numbers: 1 2 3", "How are you", "x", "a wife of good fortune must be", "thank you, world. " * 3]


def _wait(cond, timeout: float = 10.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # the test machines are shared and loaded: one intra-op thread is ~10x faster for a tiny model
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A checkpoint dir: random 2-layer Llama-style model + a byte-level BPE with a ChatML template."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from lmforge.checkpoint import save_checkpoint

    out = tmp_path_factory.mktemp("serve_ckpt")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "chat_template": CHATML, "add_bos_token": False}))
    eos = tok.token_to_id("<|im_end|>")
    config = Config(name="tiny-serve", vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=64, n_head=4,
                    n_query_groups=2, intermediate_size=128, block_size=4096, eos_token_id=eos)
    torch.manual_seed(0)
    model = GPT(config)
    # a large init makes the logits peaked: greedy choices never hinge on float rounding
    model.init_weights(std=0.5)
    save_checkpoint(out, model, config)
    return out


@pytest.fixture(scope="module")
def llm(ckpt) -> LLM:
    return LLM.load(ckpt, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def server(llm):
    with Server(llm, max_batch_size=8, max_queue=16, max_seq_length=CONTEXT) as srv:
        yield srv


def reference(llm: LLM, ids: list[int], max_new_tokens: int, chat: bool = False) -> tuple[str, int]:
    """Greedy text and token count generated directly, one request at a time."""
    stop_ids = stop_tokens(llm.tokenizer, llm.config) if chat else []
    out = generate(llm.model, llm.tokenizer, ids, SamplingParams(max_new_tokens=max_new_tokens, stop_token_ids=stop_ids))
    return out.text, len(out.token_ids)


def chat_ids(llm: LLM, messages: list[dict]) -> list[int]:
    return encode_chat(messages, llm.tokenizer, llm.config)


def metrics(server) -> dict[str, float]:
    return parse_metrics(requests.get(server.url + "/metrics", timeout=10).text)


def client(server, api_key: str = "unused"):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=60)


# ------------------------------------------------------------------------------------------------
def test_openai_completion_greedy_matches_generate(server, llm):
    c = client(server)
    prompt = "The quick brown fox"
    want, n = reference(llm, llm.tokenizer.encode(prompt), 12)
    r = c.completions.create(model="tiny-serve", prompt=prompt, max_tokens=12, temperature=0)
    assert r.choices[0].text == want
    assert r.object == "text_completion"
    assert r.usage.prompt_tokens == len(llm.tokenizer.encode(prompt))
    assert r.usage.completion_tokens == n
    assert r.usage.total_tokens == r.usage.prompt_tokens + n
    assert r.choices[0].finish_reason == ("length" if n == 12 else "stop")
    pieces = list(c.completions.create(model="tiny-serve", prompt=prompt, max_tokens=12, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == want
    assert pieces[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_openai_chat_greedy_matches_generate(server, llm):
    c = client(server)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world!"}]
    ids = chat_ids(llm, messages)
    want, n = reference(llm, ids, 16, chat=True)
    r = c.chat.completions.create(model="tiny-serve", messages=messages, max_tokens=16, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), n)
    stream = c.chat.completions.create(model="tiny-serve", messages=messages, max_tokens=16, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == n and not chunks[-1].choices


def test_predict_is_litgpt_compatible(server, llm):
    # the request LitGPT's docs show, verbatim
    r = requests.post(server.url + "/predict", json={"prompt": "Fix typos in the following sentence: Example input"},
                      timeout=60)
    assert r.status_code == 200 and isinstance(r.json()["output"], str)
    # greedy: the prompt is the model's chat template around one user turn, as LitGPT does
    r = requests.post(server.url + "/predict", json={"prompt": "Hello", "temperature": 0, "max_new_tokens": 10},
                      timeout=60)
    want, _ = reference(llm, chat_ids(llm, [{"role": "user", "content": "Hello"}]), 10, chat=True)
    assert r.json() == {"output": want}


def test_concurrent_requests_batch_and_match_sequential(server, llm):
    lengths = [5, 9, 14, 20, 7, 30, 3, 11]
    wants = [reference(llm, llm.tokenizer.encode(p), n)[0] for p, n in zip(PROMPTS, lengths)]
    before = metrics(server)
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            body = {"prompt": PROMPTS[i], "max_tokens": lengths[i], "temperature": 0, "stream": i % 2 == 0}
            if body["stream"]:
                with requests.post(server.url + "/v1/completions", json=body, stream=True, timeout=60) as r:
                    text = ""
                    for line in r.iter_lines():
                        if line.startswith(b"data: {"):
                            text += json.loads(line[6:])["choices"][0]["text"]
                results[i] = text
            else:
                results[i] = requests.post(server.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert [results.get(i) for i in range(8)] == wants
    after = metrics(server)
    steps = after["lmforge_step_batch_size_count"] - before["lmforge_step_batch_size_count"]
    rows = after["lmforge_step_batch_size_sum"] - before["lmforge_step_batch_size_sum"]
    assert rows / steps > 1.5, "requests were not decoded together"
    assert after['lmforge_requests_total{endpoint="/v1/completions",status="200"}'] >= 8


def test_sampling_is_seeded_and_per_request(server):
    c = client(server)
    kw = dict(model="tiny-serve", prompt="Hello", max_tokens=16, temperature=1.0, top_p=0.9)
    a = c.completions.create(seed=1234, **kw).choices[0].text
    b = c.completions.create(seed=1234, **kw).choices[0].text
    others = {c.completions.create(seed=s, **kw).choices[0].text for s in range(4)}
    assert a == b
    assert len(others) > 1


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (b'{"prompt": 5}', 400, "prompt"),
    (b'{"prompt": "hi", "max_tokens": "ten"}', 400, "max_tokens"),
    (b'{"prompt": "hi", "max_tokens": 1000000000}', 400, "max_tokens"),
    (b'{"prompt": "hi", "max_tokens": 0}', 400, "max_tokens"),
    (b'{"prompt": "hi", "temperature": -1}', 400, "temperature"),
    (b'{"prompt": "hi", "n": 2}', 400, "n"),
    (b'{"prompt": ["a", "b"]}', 400, "prompt"),
    (b'{"prompt": [99999999]}', 400, "prompt"),
    (b'{"prompt": "hi", "stop": [""]}', 400, "stop.0"),
    (b'{"prompt": ""}', 400, "prompt"),
    (b'{"prompt": [-1]}', 400, "prompt.0"),
    (b'{"prompt": "hi", "repetition_penalty": 1e-40}', 400, "repetition_penalty"),
    (b'{"prompt": "hi", "repetition_penalty": 5e-324}', 400, "repetition_penalty"),
    (b'{"prompt": "hi", "repetition_penalty": 1e300}', 400, "repetition_penalty"),
    (b'{"prompt": "hi", "top_p": 0}', 400, "top_p"),
    (b'{"prompt": "hi", "temperature": NaN}', 400, "temperature"),
    (b'{"prompt": "hi", "max_tokens": 2.5}', 400, "max_tokens"),
    (b'{"max_tokens": 3}', 400, "prompt"),
])
def test_bad_completion_requests_are_4xx_and_server_keeps_serving(server, body, status, param):
    r = requests.post(server.url + "/v1/completions", data=body, headers={"Content-Type": "application/json"},
                      timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    ok = requests.post(server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=30)
    assert ok.status_code == 200


def test_bad_chat_requests_and_limits(server, llm):
    url = server.url + "/v1/chat/completions"
    cases = [
        ({"messages": []}, 400),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400),
        ({"messages": [{"role": "user", "content": 3}]}, 400),
        ({"messages": "hello"}, 400),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9}, 400),
        ({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 3, "max_tokens": 10**9}, 400),
        ({"messages": [{"role": "user", "content": "hi"}], "logprobs": True}, 400),
        ({"messages": [{"role": "user", "content": "hi"}], "n": True}, 400),
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}, 400),
        ({"messages": [{"role": "user", "content": "hi"}], "presence_penalty": 0.5}, 400),
        ({"messages": [{"role": "user", "content": "word " * CONTEXT}]}, 400),  # longer than the context
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": CONTEXT - 2}, 400),  # prompt + it > context
    ]
    for body, status in cases:
        r = requests.post(url, json=body, timeout=30)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["message"]
    r = requests.post(url, json={"messages": [{"role": "user", "content": "word " * CONTEXT}]}, timeout=30)
    assert r.json()["error"]["code"] == "context_length_exceeded"
    # a 2 MB body is refused before it is parsed
    r = requests.post(url, data=b'{"messages": "' + b"x" * 2_000_000 + b'"}', timeout=30,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert requests.post(server.url + "/predict", json={"prompt": ["not", "a", "string"]}, timeout=30).status_code == 400
    assert requests.get(server.url + "/nowhere", timeout=30).status_code == 404
    assert requests.get(url, timeout=30).status_code == 405
    r = requests.post(url, json={"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                                 "max_tokens": 3}, timeout=30)
    assert r.status_code == 200
    assert not any(k.startswith("lmforge_requests_total") and 'status="5' in k for k in metrics(server))


def test_models_health_openapi_metrics(server):
    assert requests.get(server.url + "/health", timeout=10).json()["status"] == "ok"
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["tiny-serve"]
    schema = requests.get(server.url + "/openapi.json", timeout=10).json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/predict", "/health", "/metrics"} <= set(schema["paths"])
    assert "/v1/classify" not in schema["paths"]  # a language model, not a classifier checkpoint
    assert requests.post(server.url + "/v1/classify", json={"input": "x"}, timeout=10).status_code == 404
    r = requests.get(server.url + "/metrics", timeout=10)
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    for name in ("# TYPE lmforge_requests_total counter", "# TYPE lmforge_queue_depth gauge",
                 "# TYPE lmforge_active_slots gauge", "# TYPE lmforge_time_to_first_token_seconds histogram",
                 "# TYPE lmforge_request_tokens_per_second histogram", "lmforge_generated_tokens_total",
                 "lmforge_prompt_tokens_total"):
        assert name in r.text


def test_client_disconnect_mid_stream_frees_the_slot(server):
    before = metrics(server)
    body = {"prompt": "Hello", "max_tokens": CONTEXT - 10, "temperature": 0, "ignore_eos": True, "stream": True}
    r = requests.post(server.url + "/v1/completions", json=body, stream=True, timeout=30)
    lines = r.iter_lines()
    got = [line for line, _ in zip(lines, range(6)) if line.startswith(b"data: {")]
    assert got
    assert metrics(server)["lmforge_active_slots"] == 1
    r.close()  # hang up mid-stream
    key = 'lmforge_generation_requests_total{outcome="cancelled"}'
    _wait(lambda: metrics(server).get(key, 0) > before.get(key, 0), what="the cancellation")
    m = _wait(lambda: (m := metrics(server))["lmforge_active_slots"] == 0 and m, what="the slot to be freed")
    # it stopped long before its CONTEXT - 10 tokens
    assert m["lmforge_generated_tokens_total"] - before["lmforge_generated_tokens_total"] < CONTEXT - 10
    assert requests.post(server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=30).ok


def test_api_key_required(llm):
    with Server(llm, api_key="s3cret", max_batch_size=2) as srv:
        url = srv.url + "/v1/completions"
        body = {"prompt": "hi", "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = requests.post(url, json=body, headers=headers, timeout=30)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "invalid_api_key"
        assert requests.get(srv.url + "/v1/models", timeout=10).status_code == 401
        assert requests.get(srv.url + "/health", timeout=10).status_code == 200
        assert requests.post(url, json=body, headers={"Authorization": "Bearer s3cret"}, timeout=30).status_code == 200
        import openai

        with pytest.raises(openai.AuthenticationError):
            client(srv, "nope").completions.create(model="m", prompt="hi", max_tokens=2)
        assert client(srv, "s3cret").completions.create(model="m", prompt="hi", max_tokens=2).choices[0].text is not None


class SlowEngine(Engine):
    """Each decode step takes >= 20 ms, so a long request cannot finish while others arrive, however fast
    the machine."""

    def step(self):
        time.sleep(0.02)
        return super().step()


def test_full_queue_is_429_with_retry_after(llm):
    engine = SlowEngine(llm.model, llm.tokenizer, max_batch_size=1, max_seq_length=4096)
    with Server(app=create_app(llm, engine=engine, max_batch_size=1, max_queue=1)) as srv:
        url = srv.url + "/v1/chat/completions"
        # 4000 tokens: far longer than the test (both are cancelled at the end)
        long = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4000, "ignore_eos": True, "stream": True}
        a = requests.post(url, json=long, stream=True, timeout=30)  # takes the only slot
        _wait(lambda: metrics(srv)["lmforge_active_slots"] == 1, what="A to hold the slot")
        b = requests.post(url, json=long, stream=True, timeout=30)  # waits for the slot
        _wait(lambda: metrics(srv)["lmforge_queue_depth"] == 1, what="B to wait")
        c = requests.post(url, json={**long, "stream": False}, timeout=30)
        assert c.status_code == 429
        assert c.headers["Retry-After"] == "1"
        assert c.json()["error"]["code"] == "queue_full"
        a.close()
        b.close()
        _wait(lambda: metrics(srv)["lmforge_active_slots"] + metrics(srv)["lmforge_queue_depth"] == 0, what="idle")
        assert requests.post(url, json={**long, "max_tokens": 3, "stream": False}, timeout=30).status_code == 200
        assert metrics(srv)["lmforge_rejected_requests_total"] == 1


def test_request_timeout_is_504(llm):
    with Server(llm, request_timeout=0.1) as srv:
        r = requests.post(srv.url + "/v1/completions", timeout=30,
                          json={"prompt": "hi", "max_tokens": 4000, "ignore_eos": True})
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "timeout"
        m = metrics(srv)
        assert m['lmforge_generation_requests_total{outcome="timeout"}'] == 1
        assert m["lmforge_active_slots"] == 0


# ------------------------------------------------------------------------------------------------
# hardening (issue #11): isolation, admission, input edge cases, Host/CORS/auth, shutdown, schema
# ------------------------------------------------------------------------------------------------
def sse_lines(response) -> list[bytes]:
    """The `data: ...` lines of a streamed response, up to where the connection ended."""
    lines = []
    try:
        for line in response.iter_lines():
            if line.startswith(b"data: "):
                lines.append(line)
    except requests.RequestException:  # cut mid-response: the caller sees what came before
        pass
    return lines


@pytest.mark.parametrize("field, value", [("temperature", 5e-324), ("temperature", 1e-40), ("top_p", 5e-324),
                                          ("top_p", 1e-40), ("min_p", 5e-324), ("repetition_penalty", 0.01)])
def test_tiny_sampling_values_are_legal(field, value):
    # the API passes them on (a tiny temperature is greedy, a tiny top_p keeps the top token: the sampler's job)
    body = CompletionRequest.model_validate({"prompt": "Hello", field: value})
    assert getattr(body, field) == value


def test_tiny_sampling_values_are_greedy(server, llm):
    want, _ = reference(llm, llm.tokenizer.encode("Hello"), 8)
    for extra in ({"top_p": 5e-324}, {"temperature": 1e-40}, {"top_p": 1e-40, "min_p": 5e-324}):
        r = requests.post(server.url + "/v1/completions", timeout=30,
                          json={"prompt": "Hello", "max_tokens": 8, "temperature": 1.0, **extra})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == want, (extra, r.text)


def test_one_bad_request_does_not_fail_twelve_good_ones(server, llm):
    """Blast radius: a poison request among 12 concurrent good ones (8 slots: some wait)."""
    c = client(server)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(12)]
    assert server.app.state.settings.max_batch_size < 12
    lengths = [10 + 2 * i for i in range(12)]
    results: dict[int, Any] = {}

    def good(i: int) -> None:
        try:
            results[i] = c.completions.create(model="m", prompt=prompts[i], max_tokens=lengths[i], temperature=0).choices[0].text
        except Exception as e:  # checked below
            results[i] = e

    threads = [threading.Thread(target=good, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    # a repetition penalty of 1e-40 divides the logits of seen tokens by 1e-40: inf, then NaN probabilities
    bad = requests.post(server.url + "/v1/completions", timeout=30,
                        json={"prompt": "thank you, world. " * 3, "max_tokens": 20, "temperature": 1.0,
                              "repetition_penalty": 1e-40})
    for t in threads:
        t.join(timeout=120)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "repetition_penalty"
    # all answered (their texts vs sequential generation: test_concurrent_requests_batch_and_match_sequential)
    assert all(isinstance(results.get(i), str) for i in range(12)), results


class FailingEngine(Engine):
    """Fails each request seeded 666 on its first step the way the engine reports one request's failure
    (an Event with finish_reason="error"), and serves every other request normally."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.doomed: set[str] = set()

    def add(self, prompt_ids, params=None, request_id=None) -> str:
        rid = super().add(prompt_ids, params, request_id=request_id)
        if params is not None and params.seed == 666:
            self.doomed.add(rid)
        return rid

    def step(self):
        events = []
        for ev in super().step():
            if ev.request_id in self.doomed:
                self.doomed.discard(ev.request_id)
                self.cancel(ev.request_id)
                ev = Event(ev.request_id, ev.token_id, "", True, "error", ev.prompt_tokens, ev.completion_tokens,
                           error="RuntimeError: probability tensor contains nan")
            events.append(ev)
        return events


def test_a_request_failing_in_the_engine_fails_alone(llm):
    engine = FailingEngine(llm.model, llm.tokenizer, max_batch_size=4, max_seq_length=CONTEXT)
    with Server(app=create_app(llm, engine=engine, max_batch_size=4)) as srv:
        url = srv.url + "/v1/completions"
        want, _ = reference(llm, llm.tokenizer.encode("Hello"), 30)
        good = requests.post(url, json={"prompt": "Hello", "max_tokens": 30, "temperature": 0, "stream": True},
                             stream=True, timeout=30)
        bad = requests.post(url, json={"prompt": "Hello", "max_tokens": 30, "seed": 666}, timeout=30)
        assert bad.status_code == 500
        assert "probability tensor contains nan" in bad.json()["error"]["message"]
        bad_stream = sse_lines(requests.post(url, json={"prompt": "Hello", "max_tokens": 30, "seed": 666,
                                                        "stream": True}, stream=True, timeout=30))
        assert bad_stream[-1] == b"data: [DONE]"
        assert json.loads(bad_stream[-2][6:])["error"]["type"] == "server_error"
        lines = sse_lines(good)
        assert "".join(json.loads(line[6:])["choices"][0]["text"] for line in lines[:-1]) == want
        m = metrics(srv)
        assert m['lmforge_generation_requests_total{outcome="error"}'] == 2


def test_any_integer_seed_is_accepted(server):
    def text(seed) -> str:
        r = requests.post(server.url + "/v1/completions", timeout=30,
                          json={"prompt": "Hello", "max_tokens": 12, "temperature": 1.0, "seed": seed})
        assert r.status_code == 200, (seed, r.text)
        return r.json()["choices"][0]["text"]

    assert text(2**64 + 1234) == text(1234)  # taken modulo 2**64
    assert text(-1) == text(2**64 - 1)
    for seed in (2**63, 10**30, -(10**30), 1.0):
        text(seed)


def test_lone_surrogates_are_replaced_not_500(server, llm):
    raw = b'"Hello \\ud800 world \\udfff"'  # JSON escapes of lone UTF-16 surrogates
    fixed = "Hello \ufffd world \ufffd"
    h = {"Content-Type": "application/json"}
    r = requests.post(server.url + "/v1/completions", timeout=30, headers=h,
                      data=b'{"max_tokens": 6, "temperature": 0, "prompt": ' + raw + b"}")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == reference(llm, llm.tokenizer.encode(fixed), 6)[0]
    r = requests.post(server.url + "/v1/chat/completions", timeout=30, headers=h,
                      data=b'{"max_tokens": 6, "temperature": 0, "stop": ' + raw +
                      b', "messages": [{"role": "user", "content": ' + raw + b"}]}")
    assert r.status_code == 200, r.text
    want, _ = reference(llm, chat_ids(llm, [{"role": "user", "content": fixed}]), 6, chat=True)
    assert r.json()["choices"][0]["message"]["content"] == want
    r = requests.post(server.url + "/predict", timeout=30, headers=h,
                      data=b'{"max_new_tokens": 6, "temperature": 0, "prompt": ' + raw + b"}")
    assert r.status_code == 200, r.text


def test_a_burst_fills_free_slots_before_the_queue(llm):
    """max_batch_size + max_queue requests arriving at once on an idle server are all accepted."""
    engine = SlowEngine(llm.model, llm.tokenizer, max_batch_size=2, max_seq_length=CONTEXT)
    with Server(app=create_app(llm, engine=engine, max_batch_size=2, max_queue=2)) as srv:
        url = srv.url + "/v1/completions"
        body = {"prompt": "hi", "max_tokens": 400, "ignore_eos": True, "stream": True}
        responses: list[Any] = [None] * 4

        def send(i: int) -> None:
            responses[i] = requests.post(url, json=body, stream=True, timeout=30)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert [r.status_code for r in responses] == [200] * 4
        m = metrics(srv)
        assert (m["lmforge_active_slots"], m["lmforge_queue_depth"]) == (2, 2)
        assert requests.post(url, json=body, timeout=30).status_code == 429  # the fifth is one too many
        for r in responses:
            r.close()


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
def test_tokenizing_big_prompts_does_not_block_the_event_loop(llm, endpoint):
    prompt = ("It is a truth universally acknowledged, that a single man " * 20000)[:1_000_000]
    body = ({"prompt": prompt} if endpoint == "/v1/completions"
            else {"messages": [{"role": "user", "content": prompt}]})
    with Server(llm, max_body_bytes=2_000_000) as srv:
        def health() -> float:
            t = time.perf_counter()
            assert requests.get(srv.url + "/health", timeout=30).ok
            return time.perf_counter() - t

        idle = min(health() for _ in range(3))
        done = threading.Event()

        def big() -> None:
            try:  # longer than the context: tokenized, then refused
                requests.post(srv.url + endpoint, json=body, timeout=60)
            finally:
                done.set()

        start = time.perf_counter()
        threads = [threading.Thread(target=big) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)  # the bodies are read; tokenizing has begun
        latencies = []
        while not done.is_set() and len(latencies) < 50:
            latencies.append(health())
        for t in threads:
            t.join(timeout=60)
        busy = time.perf_counter() - start
        assert busy > 1.0, f"tokenizing took {busy:.2f} s: too fast to tell"
        # the median: one late answer on a busy 2-core machine is noise; a blocked loop delays them all
        assert len(latencies) >= 3 and statistics.median(latencies) < max(0.25, 10 * idle), (idle, latencies)


@pytest.mark.parametrize("key", ["clé-ü", "s3cret"])
def test_api_key_compared_as_bytes(llm, key):
    import httpx

    with Server(llm, api_key=key, max_batch_size=2) as srv:
        body = {"prompt": "hi", "max_tokens": 2}
        if key.isascii():
            assert client(srv, key).completions.create(model="m", **body).choices[0].text is not None
        else:  # the openai client (httpx) encodes headers as ASCII: it cannot send this key at all
            with pytest.raises(UnicodeEncodeError):
                client(srv, key).completions.create(model="m", **body)
        for encoding in ("utf-8", "latin-1"):  # httpx/curl send UTF-8; requests/http.client send Latin-1
            header = b"Bearer " + key.encode(encoding)
            assert httpx.post(srv.url + "/v1/completions", json=body, headers={"Authorization": header},
                              timeout=30).status_code == 200
            wrong = b"Bearer " + (key + "x").encode(encoding)
            assert httpx.post(srv.url + "/v1/completions", json=body, headers={"Authorization": wrong},
                              timeout=30).status_code == 401
        assert requests.post(srv.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                             timeout=30).status_code == 200


def test_host_header_checked_on_loopback_and_no_cors_by_default(server):
    def get(host: str) -> requests.Response:
        return requests.get(server.url + "/v1/models", headers={"Host": host}, timeout=10)

    for host in ("localhost", "localhost:8000", "127.0.0.1", f"127.0.0.1:{server.port}", "[::1]", "[::1]:80",
                 "LOCALHOST"):
        assert get(host).status_code == 200, host
    for host in ("evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.evil.example", ""):
        r = get(host)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host", host
    r = requests.get(server.url + "/v1/models", headers={"Origin": "http://evil.example"}, timeout=10)
    assert r.ok and not any(h.lower().startswith("access-control-") for h in r.headers)
    r = requests.options(server.url + "/v1/completions", timeout=10, headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert not any(h.lower().startswith("access-control-") for h in r.headers)


def test_allowed_hosts_and_cors_origins(llm):
    with Server(llm, allowed_hosts=["api.example"], cors_origins=["http://app.example"], api_key="k") as srv:
        auth = {"Authorization": "Bearer k"}
        assert requests.get(srv.url + "/v1/models", headers={"Host": "api.example:443", **auth}, timeout=10).ok
        assert requests.get(srv.url + "/v1/models", headers={"Host": "localhost", **auth}, timeout=10).ok
        assert requests.get(srv.url + "/v1/models", headers={"Host": "other.example", **auth},
                            timeout=10).status_code == 400
        pre = requests.options(srv.url + "/v1/completions", timeout=10, headers={
            "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "http://app.example"
        r = requests.get(srv.url + "/v1/models", headers={"Origin": "http://app.example", **auth}, timeout=10)
        assert r.headers["access-control-allow-origin"] == "http://app.example"
        r = requests.get(srv.url + "/v1/models", headers={"Origin": "http://evil.example", **auth}, timeout=10)
        assert "access-control-allow-origin" not in r.headers


@settings(max_examples=200, deadline=None, derandomize=True)
@given(bind=st.sampled_from(["127.0.0.1", "::1", "localhost", "0.0.0.0", "192.168.1.7"]),
       allowed=st.none() | st.lists(st.sampled_from(["api.example", "*", "LOCALHOST"]), max_size=2),
       name=st.sampled_from(["localhost", "127.0.0.1", "[::1]", "api.example", "evil.example", "127.0.0.2", ""])
       | st.text(max_size=12), port=st.none() | st.integers(0, 65535))
def test_host_allowed_property(bind, allowed, name, port):
    opts = ServeSettings(host=bind, allowed_hosts=allowed)
    header = name if port is None else f"{name}:{port}"
    extra = {h.lower() for h in allowed or ()}
    loopback = bind in ("127.0.0.1", "::1", "localhost")
    want = ("*" in extra or (not extra and not loopback) or name.lower() in extra
            or (loopback and name.lower() in ("localhost", "127.0.0.1", "[::1]")))
    assert opts.host_allowed(header) == want


def test_shutdown_ends_open_streams_with_an_error_event_and_done(llm):
    engine = SlowEngine(llm.model, llm.tokenizer, max_batch_size=2, max_seq_length=CONTEXT)
    srv = Server(app=create_app(llm, engine=engine, max_batch_size=2), shutdown_timeout=0.5).start()
    body = {"prompt": "hi", "max_tokens": 900, "ignore_eos": True, "stream": True}
    r = requests.post(srv.url + "/v1/completions", json=body, stream=True, timeout=30)
    lines = r.iter_lines()
    assert next(line for line in lines if line.startswith(b"data: "))
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    rest = sse_lines(r)
    stopper.join(timeout=30)
    assert rest[-1] == b"data: [DONE]", rest[-3:]
    assert json.loads(rest[-2][6:])["error"]["code"] == "shutting_down"


def test_busy_port_or_bad_host_is_one_error_line_before_loading(ckpt):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for host_args in (["--port", str(port)], ["--host", "10.255.255.1", "--port", "0"]):
            t = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "lmforge", "serve", str(ckpt), *host_args],
                                  capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
            lines = (proc.stdout + proc.stderr).strip().splitlines()
            assert proc.returncode != 0
            assert len(lines) == 1 and lines[0].startswith("error: "), lines
            assert "serving" not in lines[0]


def test_openapi_documents_what_the_server_answers(llm):
    with Server(llm, api_key="k", max_batch_size=2) as srv:
        schema = requests.get(srv.url + "/openapi.json", timeout=10).json()
    assert schema["components"]["securitySchemes"] == {"HTTPBearer": {"type": "http", "scheme": "bearer"}}
    for path in ("/v1/completions", "/v1/chat/completions", "/predict"):
        op = schema["paths"][path]["post"]
        assert "422" not in op["responses"]
        assert {"400", "401", "413", "429"} <= set(op["responses"]), path
        assert op["security"] == [{"HTTPBearer": []}]
    for path in ("/v1/completions", "/v1/chat/completions"):
        assert "text/event-stream" in schema["paths"][path]["post"]["responses"]["200"]["content"]
    assert "security" not in schema["paths"]["/health"]["get"]
    props = schema["components"]["schemas"]["CompletionRequest"]["properties"]
    assert props["n"]["const"] == 1 or props["n"].get("enum") == [1]


def test_schema_valid_oddities_are_served(server):
    url = server.url + "/v1/completions"
    r = requests.post(url, json={"prompt": "hi", "n": 1.0, "max_tokens": 2.0, "top_k": 5.0}, timeout=30)
    assert r.status_code == 200, r.text


# random bodies: whatever a client sends, the answer is never a 5xx. Each field is a plausible value, an
# edge case or random JSON, so many bodies are valid but for one field (and some valid throughout).
TEXT = st.text(max_size=20) | st.builds(lambda a, c, b: a + chr(c) + b, st.text(max_size=8),  # lone surrogates
                                        st.integers(0xD800, 0xDFFF), st.text(max_size=8))
ODD = st.sampled_from([0, 1, 1.0, -1, 2, 2**63, 2**64, 10**30, 5e-324, 1e-40, 1e300, -0.0, float("nan"),
                       float("inf"), "", [], [0], [-1], [10**9], ["a", "b"], True, None, {"include_usage": True}])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)
PLAUSIBLE = {
    "prompt": TEXT | st.lists(TEXT, max_size=2) | st.lists(st.integers(-2, 400), max_size=5),
    "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "developer", "tool", "x"]),
         "content": TEXT | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=2)}),
        max_size=3),
    "max_tokens": st.integers(-1, 10), "max_new_tokens": st.integers(-1, 10), "max_completion_tokens": st.integers(-1, 10),
    "temperature": st.floats(-0.1, 2.1), "top_p": st.floats(0, 1.1), "top_k": st.integers(-1, 400),
    "min_p": st.floats(-0.1, 1.1), "repetition_penalty": st.floats(0, 200), "presence_penalty": st.floats(-1, 1),
    "stop": TEXT | st.lists(TEXT, max_size=3), "seed": st.integers(), "n": st.integers(0, 2), "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}), "echo": st.booleans(),
    "suffix": TEXT, "logprobs": st.integers(0, 2), "best_of": st.integers(0, 2), "ignore_eos": st.booleans(),
    "model": TEXT, "user": TEXT,
}
REQUIRED = ("prompt", "messages")
BODY = st.builds(lambda body, odd: {**body, **odd},
                 st.fixed_dictionaries({k: PLAUSIBLE[k] for k in REQUIRED},
                                       optional={k: v for k, v in PLAUSIBLE.items() if k not in REQUIRED}),
                 st.dictionaries(st.sampled_from(sorted(PLAUSIBLE)), ODD | JSON, max_size=2))


@pytest.fixture(scope="module")
def small_server(llm):
    """Short answers (default 4 tokens, at most 8) so hundreds of random requests take seconds."""
    with Server(llm, max_batch_size=4, max_queue=64, max_seq_length=256, default_max_tokens=4,
                max_tokens_limit=8) as srv:
        yield srv


def test_predict_default_length_respects_the_server_limit(small_server):
    # LitGPT's default max_new_tokens (50) is over this server's limit (8): a body without it is still served
    r = requests.post(small_server.url + "/predict", json={"prompt": "hi", "temperature": 0}, timeout=30)
    assert r.status_code == 200, r.text
    r = requests.post(small_server.url + "/predict", json={"prompt": "hi", "max_new_tokens": 9}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_new_tokens"
    schema = requests.get(small_server.url + "/openapi.json", timeout=10).json()["components"]["schemas"]
    assert schema["PredictRequest"]["properties"]["max_new_tokens"]["maximum"] == 8


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/predict"]), body=BODY)
def test_random_bodies_are_never_5xx(small_server, path, body):
    data = json.dumps(body)  # NaN/Infinity as Python's json writes them; surrogates as \\u escapes
    r = requests.post(small_server.url + path, data=data, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code < 500, (body, r.text)
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a second process: ~30 s of imports on a loaded machine
def test_sigterm_finishes_in_flight_requests_and_exits_0(ckpt):
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMFORGE_API_KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", "serve", str(ckpt), "--port", str(port),
                             "--log-level", "warning", "--device", "cpu"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return requests.get(url + "/health", timeout=1).ok
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stdout.read().decode()
                return False

        _wait(up, timeout=60, what="the server to start")
        auth = {"Authorization": "Bearer k"}  # from LMFORGE_API_KEY
        assert requests.post(url + "/predict", json={"prompt": "hi"}, timeout=30).status_code == 401
        body = {"prompt": "Hello", "max_tokens": 60, "ignore_eos": True, "temperature": 0, "stream": True}
        r = requests.post(url + "/v1/completions", json=body, headers=auth, stream=True, timeout=30)
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith(b"data: "))
        proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line.startswith(b"data: ")]
        # the in-flight request ran to its end: 60 tokens, a finish_reason and [DONE]
        assert rest[-1] == b"data: [DONE]"
        assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "length"
        assert proc.wait(timeout=60) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/health", timeout=2)
        assert first
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.slow  # ~1,500 generated requests: a few minutes on a loaded 2-core machine
def test_schemathesis_finds_no_server_error_or_schema_mismatch(llm, tmp_path):
    """Schemathesis against the live server: every check, seeded; no 5xx; the server healthy afterwards."""
    pytest.importorskip("schemathesis")
    report = tmp_path / "st.ndjson"
    # the largest context the model has (4096), short answers: hundreds of requests per operation
    with Server(llm, api_key="k", max_batch_size=4, max_queue=64, default_max_tokens=4, max_tokens_limit=8) as srv:
        proc = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", srv.url + "/openapi.json", "--checks", "all",
             "--max-examples", "250", "--seed", "20261130", "--workers", "1", "--no-shrink", "--continue-on-failure",
             "-H", "Authorization: Bearer k", "--report", "ndjson", "--report-ndjson-path", str(report)],
            capture_output=True, text=True, timeout=1500, cwd=tmp_path)  # its example database goes there
        assert requests.get(srv.url + "/health", timeout=10).status_code == 200
    requests_made, failures = 0, []
    for line in report.read_text().splitlines():
        (kind, event), = json.loads(line).items()
        if kind != "ScenarioFinished":
            continue
        interactions = event["recorder"].get("interactions", {})
        requests_made += len(interactions)
        for case_id, checks in event["recorder"].get("checks", {}).items():
            response = interactions.get(case_id, {}).get("response") or {}
            for check in checks:
                if check["status"] != "failure":
                    continue
                body = base64.b64decode(response.get("content", {}).get("$base64", "")).decode(errors="replace")
                # The one schema-valid request a JSON Schema cannot rule out: a prompt longer than the
                # context in tokens (documented 400, context_length_exceeded); anything else fails the test.
                if check["name"] == "positive_data_acceptance" and '"context_length_exceeded"' in body:
                    continue
                failures.append((check["name"], response.get("status_code"), body[:200]))
    assert requests_made >= 1000, (requests_made, proc.stdout[-3000:])
    assert not failures, (requests_made, sorted(set(failures)), proc.stdout[-2000:])


def test_chat_page_is_served_without_the_key_and_the_api_still_needs_it(llm):
    from html.parser import HTMLParser

    from fastapi.testclient import TestClient

    with TestClient(create_app(llm, api_key="s3cret", max_batch_size=1), base_url="http://127.0.0.1") as tc:
        page = tc.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        # nothing loaded from elsewhere: the page's CSP allows only its own inline script and style
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "connect-src 'self'" in page.headers["content-security-policy"]

        urls: list[str] = []

        class Links(HTMLParser):
            def handle_starttag(self, tag, attrs):
                urls.extend(v for k, v in attrs if k in ("src", "href", "action") and v)

        Links().feed(page.text)
        assert urls == []  # no CDN, no external script or stylesheet
        # the page calls this server's own endpoints, which still answer 401 without the key
        for path in ("/v1/chat/completions", "/v1/models"):
            assert path in page.text
        r = tc.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert tc.get("/v1/models").status_code == 401
        ok = tc.post("/v1/chat/completions", headers={"Authorization": "Bearer s3cret"},
                     json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True})
        assert ok.status_code == 200 and ok.text.rstrip().endswith("data: [DONE]")
        assert "/" not in tc.get("/openapi.json").json()["paths"]  # the page is no API endpoint
