"""`lmforge serve`: the HTTP API end to end on a tiny random model, on 127.0.0.1 only.

Greedy outputs through the server must equal direct generation (also with 8 concurrent clients
of different lengths), bad input must be a 4xx with OpenAI-style error JSON and leave the server
working, and a client that disconnects mid-stream must free its slot.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import torch

from lmforge.api import LLM
from lmforge.config import Config
from lmforge.generate import generate
from lmforge.model import GPT
from lmforge.prompts import encode_chat, stop_tokens
from lmforge.sampling import SamplingParams
from lmforge.serve import Server
from lmforge.serve.metrics import parse_metrics

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
    (b'{"prompt": "hi", "stop": [""]}', 400, None),
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


def test_full_queue_is_429_with_retry_after(llm):
    from lmforge.generate import Engine
    from lmforge.serve.app import create_app

    class SlowEngine(Engine):
        """Each decode step takes >= 20 ms, so A cannot finish while B and C arrive, however fast the machine."""

        def step(self):
            time.sleep(0.02)
            return super().step()

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
                          json={"prompt": "hi", "max_tokens": 250, "ignore_eos": True})
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "timeout"
        m = metrics(srv)
        assert m['lmforge_generation_requests_total{outcome="timeout"}'] == 1
        assert m["lmforge_active_slots"] == 0


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
