"""Generation: greedy parity with transformers, batching, speculative decoding, sampling, stops, streaming."""

from __future__ import annotations

import os
import threading
from functools import partial

import helpers
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.config import Config
from lmforge.errors import LmforgeError
from lmforge.generate import (Engine, PrefixCache, SpeculativeStats, StopMatcher, generate, speculative_generate,
                              stream)
from lmforge.model import GPT
from lmforge.sampling import SamplingParams

VOCAB = 160
_GQA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, max_position_embeddings=256)
# three families: rope + GQA (llama), learned positions + LayerNorm + conv1d (gpt2),
# sliding window + soft-capping + post-norms (gemma2)
HF_CASES = {
    "llama": ("llama", _GQA),
    "gpt2": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=256,
                          bos_token_id=0, eos_token_id=0)),
    "gemma2": ("gemma2", dict(_GQA, head_dim=32, sliding_window=8, query_pre_attn_scalar=24,
                              attn_logit_softcapping=20.0, final_logit_softcapping=30.0, pad_token_id=0)),
}
PROMPTS = [[5, 17, 33, 9], [70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82], [99], [3, 44, 4, 44, 5, 44, 6]]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models gain nothing from threads, and on a busy machine OpenMP spinning costs 100x
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# large weights: confident, varied next-token choices
tiny_gpt = partial(helpers.tiny_gpt, std=0.3, vocab_size=VOCAB, n_query_groups=2, block_size=128)


@pytest.fixture(scope="module")
def model() -> GPT:
    return tiny_gpt()


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """family -> (transformers model, our GPT loaded from its save_pretrained dir)."""
    transformers = pytest.importorskip("transformers")
    from lmforge.api import LLM

    transformers.logging.set_verbosity_error()
    out = {}
    for name, (model_type, kwargs) in HF_CASES.items():
        torch.manual_seed(0)
        cfg = transformers.AutoConfig.for_model(model_type, **kwargs)
        hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
        with torch.no_grad():  # default init is too uniform: every greedy step would tie-break on noise
            for p in hf.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        path = tmp_path_factory.mktemp(name)
        hf.save_pretrained(path)
        out[name] = (hf, LLM.load(path, device="cpu", dtype="float32").model)
    return out


def sequential(model: GPT, params: SamplingParams, prompts=PROMPTS) -> list[list[int]]:
    return [generate(model, None, p, params).token_ids for p in prompts]


# ---------------------------------------------------------------------------------------------
# parity and batching
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(HF_CASES))
def test_greedy_matches_transformers(hf_models, family):
    hf, ours = hf_models[family]
    eos = ours.config.eos_ids
    assert eos, "the converted config must carry the EOS id"
    for prompt in PROMPTS:
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, pad_token_id=0,
                              eos_token_id=eos)[0, len(prompt):].tolist()
        got = generate(ours, None, prompt, SamplingParams(max_new_tokens=24))
        assert got.token_ids == ref, f"{family} prompt {prompt}"
        assert got.finish_reason == ("stop" if ref[-1] in eos else "length")


@pytest.mark.parametrize("family", list(HF_CASES))
def test_batched_greedy_equals_sequential_hf_families(hf_models, family):
    ours = hf_models[family][1]
    params = SamplingParams(max_new_tokens=20, ignore_eos=True)
    batched = [c.token_ids for c in generate(ours, None, PROMPTS, params, max_batch_size=4)]
    assert batched == sequential(ours, params)


def test_greedy_matches_uncached_forward(model):
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    for prompt in PROMPTS:
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(12):
                ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        assert generate(model, None, prompt, params).token_ids == ids[len(prompt):]


@pytest.mark.parametrize("max_batch_size", [2, 3, 4])
def test_batched_equals_sequential_continuous(model, max_batch_size):
    # with fewer slots than prompts, waiting requests join as others finish (different lengths)
    params = [SamplingParams(max_new_tokens=n, ignore_eos=True) for n in (5, 17, 9, 12)]
    expected = [generate(model, None, p, sp).token_ids for p, sp in zip(PROMPTS, params)]
    engine = Engine(model, None, max_batch_size=max_batch_size, max_seq_length=64)
    got = [c.token_ids for c in engine.run(PROMPTS, params)]
    assert got == expected
    assert [len(g) for g in got] == [5, 17, 9, 12]


def test_request_joins_midway(model):
    params = SamplingParams(max_new_tokens=15, ignore_eos=True)
    expected = sequential(model, params)
    engine = Engine(model, None, max_batch_size=4, max_seq_length=64)
    tokens: dict[str, list[int]] = {}
    engine.add(PROMPTS[0], params, request_id="a")
    engine.add(PROMPTS[1], params, request_id="b")
    steps = 0
    while engine.has_work():
        if steps == 3:
            engine.add(PROMPTS[2], params, request_id="c")  # joins while a and b are mid-way
        if steps == 6:
            engine.add(PROMPTS[3], params, request_id="d")
        for ev in engine.step():
            tokens.setdefault(ev.request_id, []).append(ev.token_id)
        steps += 1
    assert [tokens[r] for r in "abcd"] == expected


def test_slot_reuse_after_finish_and_cancel(model):
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    expected = sequential(model, params)
    engine = Engine(model, None, max_batch_size=2, max_seq_length=64)
    engine.add(PROMPTS[3], SamplingParams(max_new_tokens=50, ignore_eos=True), request_id="long")
    engine.add(PROMPTS[1], params, request_id="x")
    engine.step()
    assert engine.cancel("long") and not engine.cancel("nope")
    engine.add(PROMPTS[0], params, request_id="y")  # takes the cancelled request's (dirty) slot
    tokens: dict[str, list[int]] = {}
    while engine.has_work():
        for ev in engine.step():
            assert ev.request_id != "long"
            tokens.setdefault(ev.request_id, []).append(ev.token_id)
    assert tokens["y"] == expected[0]
    assert len(tokens["x"]) == 9  # its first token came from the step before


def test_add_from_another_thread(model):
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    expected = sequential(model, params)
    engine = Engine(model, None, max_batch_size=4, max_seq_length=64)
    done: dict[str, list[int]] = {}

    def producer():
        for i, p in enumerate(PROMPTS):
            engine.add(p, params, request_id=str(i))

    t = threading.Thread(target=producer)
    t.start()
    t.join()
    while engine.has_work():
        for ev in engine.step():
            done.setdefault(ev.request_id, []).append(ev.token_id)
    assert [done[str(i)] for i in range(4)] == expected


# ---------------------------------------------------------------------------------------------
# limits and errors
# ---------------------------------------------------------------------------------------------
def test_eos_and_length_finish(model):
    first = generate(model, None, PROMPTS[0], SamplingParams(max_new_tokens=6, ignore_eos=True))
    assert first.finish_reason == "length" and len(first.token_ids) == 6
    eos = first.token_ids[3]
    cut = generate(model, None, PROMPTS[0], SamplingParams(max_new_tokens=6, stop_token_ids=[eos]))
    assert cut.finish_reason == "stop"
    assert cut.token_ids == first.token_ids[: first.token_ids.index(eos) + 1]


def test_context_full_finishes_with_length(model):
    engine = Engine(model, None, max_batch_size=1, max_seq_length=10)
    out = engine.run([PROMPTS[0]], SamplingParams(max_new_tokens=50, ignore_eos=True))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 10 - len(PROMPTS[0]) + 1


def test_prompt_longer_than_context(model):
    with pytest.raises(LmforgeError, match="prompt has 200 tokens but the model's context is 128"):
        generate(model, None, [1] * 200, SamplingParams(max_new_tokens=2))
    engine = Engine(model, None, max_batch_size=1, max_seq_length=16)
    with pytest.raises(LmforgeError, match="prompt has 17 tokens but the model's context is 16"):
        engine.add([1] * 17)
    with pytest.raises(LmforgeError, match="outside the model's vocabulary"):
        engine.add([VOCAB + 5])


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------
def test_seeded_sampling_is_reproducible(model):
    def run(seed, **kw):
        p = SamplingParams(max_new_tokens=20, temperature=1.0, seed=seed, ignore_eos=True, **kw)
        return generate(model, None, PROMPTS[1], p).token_ids

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert run(3, top_k=5, top_p=0.9, repetition_penalty=1.3) == run(3, top_k=5, top_p=0.9, repetition_penalty=1.3)
    # a batch mixing greedy and seeded rows: each row as if alone
    params = [SamplingParams(max_new_tokens=20, temperature=1.0, seed=7, ignore_eos=True),
              SamplingParams(max_new_tokens=20, ignore_eos=True)]
    mixed = Engine(model, None, max_batch_size=2, max_seq_length=64).run([PROMPTS[1], PROMPTS[2]], params)
    assert mixed[0].token_ids == run(7)
    assert mixed[1].token_ids == generate(model, None, PROMPTS[2], params[1]).token_ids


def test_repetition_penalty_changes_greedy(model):
    plain = generate(model, None, PROMPTS[3], SamplingParams(max_new_tokens=20, ignore_eos=True)).token_ids
    penalised = generate(model, None, PROMPTS[3],
                         SamplingParams(max_new_tokens=20, repetition_penalty=5.0, ignore_eos=True)).token_ids
    assert plain != penalised
    assert len(set(penalised)) > len(set(plain))


# ---------------------------------------------------------------------------------------------
# speculative decoding
# ---------------------------------------------------------------------------------------------
def _noisy_copy(model: GPT, scale: float) -> GPT:
    draft = tiny_gpt()
    draft.load_state_dict(model.state_dict())
    torch.manual_seed(1)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn_like(p) * scale)
    return draft.eval()


@pytest.mark.parametrize("k", [1, 3, 5])
def test_speculative_equals_greedy(model, k):
    params = SamplingParams(max_new_tokens=25, ignore_eos=True)
    expected = sequential(model, params)
    unrelated = tiny_gpt(seed=5, n_layer=1, n_embd=32, n_head=2, n_query_groups=2)
    for draft in (model, _noisy_copy(model, 0.05), unrelated):
        stats = SpeculativeStats()
        got = [speculative_generate(model, draft, p, params, k=k, stats=stats).token_ids for p in PROMPTS]
        assert got == expected
        if draft is model:
            assert stats.acceptance_rate == 1.0 and stats.target_calls <= len(PROMPTS) * (1 + 25 // (k + 1) + 1)
    assert 0 < _accept_rate(model, _noisy_copy(model, 0.05), k) < 1


def _accept_rate(model, draft, k):
    stats = SpeculativeStats()
    for p in PROMPTS:
        speculative_generate(model, draft, p, SamplingParams(max_new_tokens=25, ignore_eos=True), k=k, stats=stats)
    return stats.acceptance_rate


def test_speculative_respects_eos_and_limits(model):
    ref = generate(model, None, PROMPTS[0], SamplingParams(max_new_tokens=10, ignore_eos=True)).token_ids
    eos = ref[4]
    params = SamplingParams(max_new_tokens=10, stop_token_ids=[eos])
    want = generate(model, None, PROMPTS[0], params)
    got = speculative_generate(model, model, PROMPTS[0], params, k=4)
    assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason == "stop"
    with pytest.raises(LmforgeError, match="greedy"):
        speculative_generate(model, model, PROMPTS[0], SamplingParams(temperature=0.7))
    with pytest.raises(LmforgeError, match="vocabulary"):
        speculative_generate(model, tiny_gpt(vocab_size=VOCAB + 1), PROMPTS[0], SamplingParams(max_new_tokens=3))


# ---------------------------------------------------------------------------------------------
# text: stop strings and UTF-8-safe streaming
# ---------------------------------------------------------------------------------------------
def test_stop_matcher_holds_back_prefixes():
    m = StopMatcher(["###", "END"])
    assert m.push("hello #") == ("hello ", False)
    assert m.push("#") == ("", False)
    assert m.push("x E") == ("##x ", False)
    assert m.push("N") == ("", False)
    assert m.push("D and more") == ("", True)
    m = StopMatcher(["ab"])
    assert m.push("xa") == ("x", False)
    assert m.flush() == "a"


@pytest.fixture(scope="module")
def smol_tok():
    from helpers import asset

    from lmforge.tokenizer import Tokenizer

    return Tokenizer.from_gguf(asset("smollm2-135m-instruct"))


class ScriptedGPT(GPT):
    """A model that writes a fixed text: the logits at position p pick `seq[p + 1]`.

    Lets the engine's text handling (split UTF-8 characters, stop strings) be tested on known tokens.
    """

    def __init__(self, vocab_size: int, seq: list[int], eos: int | None = None) -> None:
        super().__init__(Config(vocab_size=vocab_size, n_layer=1, n_embd=8, n_head=1, block_size=256,
                                eos_token_id=eos))
        self.seq = seq

    def forward(self, idx, input_pos=None, cache=None, rows=None, logits_to_keep=0, return_hidden=False):
        B, T = idx.shape
        pos = input_pos.expand(B, T) if input_pos.dim() == 1 else input_pos
        last = pos[:, -1].tolist()
        logits = torch.zeros(B, 1, self.config.vocab_size)
        for b, p in enumerate(last):
            logits[b, 0, self.seq[min(p + 1, len(self.seq) - 1)]] = 1.0
        return logits


def _events(engine: Engine, prompt, params):
    return list(engine.stream(prompt, params))


def test_streaming_never_splits_characters(smol_tok):
    prompt = smol_tok.encode("Say:")
    text = " Hello 😀 世界 🎉 naïve — ok 👩‍👩‍👧 done"
    script = smol_tok.encode(text)
    assert len(script) > len(text.split()) + 8, "emoji and CJK must span several byte tokens"
    model = ScriptedGPT(smol_tok.vocab_size, prompt + script).eval()
    engine = Engine(model, smol_tok, max_batch_size=2, max_seq_length=128)
    events = _events(engine, prompt, SamplingParams(max_new_tokens=len(script)))
    pieces = [e.text for e in events]
    assert [e.token_id for e in events] == script
    assert all("\ufffd" not in p for p in pieces)
    assert sum(1 for p in pieces if p == "") >= 5  # bytes of split characters were held back
    assert "".join(pieces) == text
    assert events[-1].finished and events[-1].finish_reason == "length"
    assert [e.completion_tokens for e in events] == list(range(1, len(script) + 1))


def test_stop_strings_in_engine(smol_tok):
    prompt = smol_tok.encode("Q:")
    text = " The answer is 42.\nQ: next question"
    script = smol_tok.encode(text)
    model = ScriptedGPT(smol_tok.vocab_size, prompt + script).eval()
    engine = Engine(model, smol_tok, max_batch_size=1, max_seq_length=128)
    for stops, want in ((["\nQ:"], " The answer is 42."), (["swer", "42"], " The an"), (["zzz"], text)):
        events = _events(engine, prompt, SamplingParams(max_new_tokens=len(script), stop=stops))
        assert "".join(e.text for e in events) == want, stops
        assert events[-1].finish_reason == ("length" if want == text else "stop")
    # an EOS token ends the request ("stop") without text
    eos_model = ScriptedGPT(smol_tok.vocab_size, prompt + script[:3] + [smol_tok.eos_id] + script[3:])
    out = generate(eos_model, smol_tok, prompt, SamplingParams(max_new_tokens=20))
    assert out.finish_reason == "stop" and out.token_ids[-1] == smol_tok.eos_id
    assert out.text == smol_tok.decode(script[:3])


def test_first_piece_keeps_sentencepiece_space():
    from helpers import asset

    from lmforge.tokenizer import Tokenizer

    spm = Tokenizer.from_gguf(asset("llama-cpp-vocabs") / "ggml-vocab-llama-spm.gguf")
    prompt = spm.encode("Hello")
    script = spm.encode("Hello world 世界 again", bos=True)[len(prompt):]
    model = ScriptedGPT(spm.vocab_size, prompt + script).eval()
    assert "".join(stream(model, spm, prompt, SamplingParams(max_new_tokens=len(script)))) == " world 世界 again"


@pytest.fixture(scope="module")
def smol_llm(smol_tok):
    from lmforge.api import LLM

    model = tiny_gpt(vocab_size=smol_tok.vocab_size, n_embd=32, eos_token_id=smol_tok.eos_id)
    return LLM(model, smol_tok, model.config)


def test_llm_generate_batch_stream_and_stop(smol_llm):
    prompts = ["Once upon a time", "The capital of France is", "1, 2, 3,", "Hi"]
    one_by_one = [smol_llm.generate(p, max_new_tokens=12, ignore_eos=True) for p in prompts]
    assert smol_llm.generate(prompts, max_new_tokens=12, ignore_eos=True, max_batch_size=3) == one_by_one
    assert all(isinstance(t, str) and t for t in one_by_one)
    pieces = smol_llm.generate(prompts[0], max_new_tokens=12, ignore_eos=True, stream=True)
    assert "".join(pieces) == one_by_one[0] and pieces.completion_tokens == 12
    full = one_by_one[1]
    stop = full[len(full) // 2: len(full) // 2 + 2]
    assert smol_llm.generate(prompts[1], max_new_tokens=12, ignore_eos=True, stop=stop) == full[: full.index(stop)]
    sampled = smol_llm.generate(prompts[0], max_new_tokens=12, temperature=0.9, top_p=0.9, seed=3, ignore_eos=True)
    assert sampled == smol_llm.generate(prompts[0], max_new_tokens=12, temperature=0.9, top_p=0.9, seed=3,
                                        ignore_eos=True)
    assert smol_llm.generate(prompts[0], max_new_tokens=12, ignore_eos=True, draft=smol_llm) == one_by_one[0]
    with pytest.raises(LmforgeError, match="top_p must be in"):
        smol_llm.generate("x", top_p=1.5)
    with pytest.raises(LmforgeError, match="temperature must be >= 0"):
        smol_llm.generate("x", temperature=-1)


def test_llm_chat_and_benchmark(smol_llm, smol_tok):
    from lmforge.prompts import format_chat

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = smol_llm.chat(messages, max_new_tokens=10)
    ids = smol_tok.encode(format_chat(messages, smol_tok), bos=False)
    im_end = smol_tok.token_to_id("<|im_end|>")
    want = generate(smol_llm.model, smol_tok, ids, SamplingParams(max_new_tokens=10, stop_token_ids=[im_end]))
    assert reply == want.text
    bench = smol_llm.benchmark(prompt_tokens=8, new_tokens=6)
    assert bench["new_tokens"] == 6 and bench["tokens_per_s"] > 0 and bench["ttft_s"] > 0


# ---------------------------------------------------------------------------------------------
# the real SmolLM2-135M-Instruct (slow)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2():
    from helpers import asset

    from lmforge.api import LLM

    return LLM.load(asset("smollm2-135m-instruct"), device="cpu", dtype="float32")


@pytest.mark.slow
def test_smollm2_answers_paris(smollm2):
    reply = smollm2.chat([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=24)
    assert "Paris" in reply, reply
    batched = smollm2.generate(["The capital of France is", "def fibonacci(n):", "1, 2, 3, 4,"], max_new_tokens=16)
    assert batched == [smollm2.generate(p, max_new_tokens=16) for p in
                       ["The capital of France is", "def fibonacci(n):", "1, 2, 3, 4,"]]


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers(smollm2):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from helpers import asset

    from lmforge.prompts import encode_chat

    path = asset("smollm2-135m-instruct")
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    tok = smollm2.tokenizer
    texts = ["The capital of France is", "Once upon a time, there was a", "def add(a, b):\n"]
    chat = encode_chat([{"role": "user", "content": "Name three colors."}], tok, smollm2.config)
    for ids in [tok.encode(t) for t in texts] + [chat]:
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                              eos_token_id=tok.eos_ids, pad_token_id=tok.eos_id)[0, len(ids):].tolist()
        assert generate(smollm2.model, tok, ids, SamplingParams(max_new_tokens=24)).token_ids == ref


# ---------------------------------------------------------------------------------------------
# continuous batching under random arrival schedules (property test)
# ---------------------------------------------------------------------------------------------
def _path_model(path: str) -> GPT:
    """The tiny model on one inference path: the one-call kernels or the layer loop, fp32 or int8."""
    from lmforge.inference import prepare_for_inference

    kernels, weights = path.split("-")
    m = prepare_for_inference(tiny_gpt(seed=3), "int8" if weights == "int8" else "none")
    if kernels == "loop":
        m.runner = None  # GPT.forward's layer loop
    elif m.runner is None:
        pytest.skip("no C compiler or AVX2 here: the kernel path is not available")
    return m


_SCHED_MODELS: dict[str, GPT] = {}
_PREFIX_HITS: dict[str, int] = {}
_SOLO: dict[tuple[str, tuple[int, ...]], tuple[list[int], list[float]]] = {}
_SOLO_TOKENS = 12


def _solo(path: str, prompt: tuple[int, ...]) -> tuple[list[int], list[float]]:
    """A request's greedy tokens alone in a one-slot engine, and each step's top-2 logit gap."""
    key = (path, prompt)
    if key not in _SOLO:
        model = _SCHED_MODELS[path]
        engine = Engine(model, None, max_batch_size=1, max_seq_length=64)
        tokens = [ev.token_id for ev in engine.stream(list(prompt), SamplingParams(max_new_tokens=_SOLO_TOKENS,
                                                                                    ignore_eos=True))]
        gaps = []
        with torch.inference_mode():
            ids = list(prompt) + tokens
            logits = model(torch.tensor([ids]))[0, len(prompt) - 1:-1]  # one full forward, no cache
            top2 = logits.topk(2, dim=-1).values
            gaps = (top2[:, 0] - top2[:, 1]).tolist()
        _SOLO[key] = (tokens, gaps)
    return _SOLO[key]


def _check_against_solo(path: str, prompt: tuple[int, ...], got: list[int]) -> None:
    solo, gaps = _solo(path, prompt)
    for i, (a, b) in enumerate(zip(got, solo)):
        if a != b:  # allowed only where the solo run's choice was a near-tie
            assert gaps[i] < 1e-4, f"{path}: prompt {prompt} diverged at token {i} ({a} != {b}), top-2 gap {gaps[i]:.2e}"
            return


# shared openings (a system prompt, a few-shot preamble): later prompts reuse earlier keys/values
_OPENINGS = [(), (7, 8, 9, 10), (50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60), (7, 8, 9, 10, 11, 12)]
_request = st.tuples(
    st.integers(0, 8),  # arrival step
    st.tuples(st.sampled_from(_OPENINGS), st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=12))
    .map(lambda t: t[0] + tuple(t[1])),  # prompt
    st.integers(1, _SOLO_TOKENS),  # max_new_tokens
    st.one_of(st.none(), st.integers(0, 10)),  # cancel at this step (None: never)
)


@pytest.mark.parametrize("path", ["kernel-fp32", "loop-fp32", "kernel-int8", "loop-int8"])
@settings(max_examples=int(os.environ.get("SCHEDULE_EXAMPLES", 30)), deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(slots=st.integers(1, 5), requests=st.lists(_request, min_size=1, max_size=9))
def test_random_schedules_equal_solo_outputs(path, slots, requests):
    """Whatever the arrival order, slot count, prompt lengths, shared openings (prefix cache),
    cancellations and limits, each request's greedy tokens are its tokens when served alone (the kv
    cache of a request admitted between running slots used to be overwritten by its neighbours'
    decode step)."""
    if path not in _SCHED_MODELS:
        _SCHED_MODELS[path] = _path_model(path)
    engine = Engine(_SCHED_MODELS[path], None, max_batch_size=slots, max_seq_length=64,
                    prefix_cache=PrefixCache(min_tokens=2))
    got: dict[str, list[int]] = {}
    finished: dict[str, int] = {}
    ids = [f"r{i}" for i in range(len(requests))]
    step = 0
    while step < 200 and (engine.has_work() or any(arr >= step for arr, *_ in requests)):
        for rid, (arrival, prompt, max_new, cancel) in zip(ids, requests):
            if arrival == step:
                engine.add(list(prompt), SamplingParams(max_new_tokens=max_new, ignore_eos=True), request_id=rid)
            if cancel is not None and arrival + cancel == step and rid not in finished:
                engine.cancel(rid)
        for ev in engine.step():
            assert getattr(ev, "error", None) is None
            got.setdefault(ev.request_id, []).append(ev.token_id)
            if ev.finished:
                finished[ev.request_id] = len(got[ev.request_id])
        step += 1
    assert not engine.has_work()
    _PREFIX_HITS[path] = _PREFIX_HITS.get(path, 0) + engine.prefix_cache.hits
    for rid, (arrival, prompt, max_new, cancel) in zip(ids, requests):
        tokens = got.get(rid, [])
        if cancel is None:
            assert finished.get(rid) == max_new == len(tokens)
        assert len(tokens) <= max_new
        _check_against_solo(path, prompt, tokens)


class _Poisoned(SamplingParams):
    """Sampling settings that blow up when the sampler reads them (a stand-in for any bug that is
    specific to one request's settings)."""

    @property
    def greedy(self) -> bool:
        raise RuntimeError("poisoned settings")


@pytest.mark.parametrize("bad", [
    dict(temperature=1e-40), dict(temperature=5e-324, top_p=5e-324), dict(repetition_penalty=5e-324, temperature=1.0),
    dict(repetition_penalty=1e300, temperature=0.7, seed=2**70), dict(top_p=5e-324, min_p=5e-324, temperature=2.0),
])
def test_extreme_sampling_values_never_break_the_batch(model, bad):
    """Values near the smallest floats used to make the probabilities NaN and torch.multinomial
    raise inside the step, failing every request in flight."""
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(12)]
    expected = [generate(model, None, p, params).token_ids for p in prompts]
    engine = Engine(model, None, max_batch_size=13, max_seq_length=64)
    out = engine.run([PROMPTS[0]] + prompts, [SamplingParams(max_new_tokens=6, ignore_eos=True, **bad)] + [params] * 12)
    assert [c.token_ids for c in out[1:]] == expected
    assert len(out[0].token_ids) == 6 and all(0 <= t < VOCAB for t in out[0].token_ids)


def test_one_failing_request_fails_alone(model):
    """Blast radius: an exception while serving one request ends that request with an error event;
    the 12 requests beside it (running and waiting) finish with their solo outputs."""
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(12)]
    expected = [generate(model, None, p, params).token_ids for p in prompts]
    engine = Engine(model, None, max_batch_size=6, max_seq_length=64)  # 7 run at once, 6 wait
    for i, p in enumerate(prompts[:6]):
        engine.add(p, params, request_id=f"good{i}")
    engine.add(PROMPTS[1], _Poisoned(max_new_tokens=8), request_id="bad")
    for i, p in enumerate(prompts[6:], 6):
        engine.add(p, params, request_id=f"good{i}")
    got: dict[str, list[int]] = {}
    errors = {}
    while engine.has_work():
        for ev in engine.step():
            if ev.error is not None:
                errors[ev.request_id] = (ev.error, ev.finish_reason, ev.finished)
            else:
                got.setdefault(ev.request_id, []).append(ev.token_id)
    assert errors == {"bad": ("RuntimeError: poisoned settings", "error", True)}
    assert [got[f"good{i}"] for i in range(12)] == expected
    with pytest.raises(LmforgeError, match="poisoned settings"):
        engine.run([PROMPTS[0]], _Poisoned(max_new_tokens=2))


def test_seed_any_integer():
    for seed in (2**64 + 5, -(2**70), 2**63):
        assert SamplingParams(seed=seed, temperature=1.0).make_generator() is not None


def test_tiny_top_p_keeps_the_top_token(model):
    """A top_p below float32's smallest number used to drop every token (all -inf: token 0)."""
    expected = generate(model, None, PROMPTS[1], SamplingParams(max_new_tokens=6)).token_ids
    for extra in (dict(top_p=5e-324), dict(top_p=1e-40, min_p=5e-324), dict(top_k=1, top_p=1e-45)):
        got = generate(model, None, PROMPTS[1], SamplingParams(max_new_tokens=6, temperature=1.0, seed=0, **extra))
        assert got.token_ids == expected, extra


@settings(max_examples=200, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), vocab=st.sampled_from([5, 300, 5000]), scale=st.floats(0.01, 30.0),
       top_p=st.floats(1e-6, 0.999999))
def test_top_p_keeps_the_nucleus(seed, vocab, scale, top_p):
    """The candidate shortcut keeps exactly the nucleus of a float64 full sort (flat and peaked
    logits), except a token whose mass-before lies within float32 rounding of top_p."""
    from lmforge.sampling import _top_p

    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * scale
    got = _top_p(logits, top_p)
    p = logits.double().softmax(-1)
    sorted_p, order = torch.sort(p, descending=True)
    before = torch.zeros_like(p).scatter(0, order, sorted_p.cumsum(-1) - sorted_p)  # mass before each token
    want_kept = (before < top_p) | (p == p.max())
    close = (before - top_p).abs() < 1e-5
    kept = ~torch.isinf(got)
    assert torch.equal(kept[~close], want_kept[~close])
    assert torch.equal(got[kept], logits[kept])  # kept logits are unchanged


def test_sampling_follows_the_distribution():
    """Inverse-CDF sampling draws each token with its probability (chi-square against the softmax)
    and never draws a token that top-k / top-p removed."""
    from lmforge.sampling import sample

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -30.0, 0.5])
    g = torch.Generator().manual_seed(0)
    n = 20000
    draws = torch.tensor([int(sample(logits[None], [SamplingParams(temperature=1.0)], [g])[0]) for _ in range(n)])
    counts = torch.bincount(draws, minlength=6).double()
    expected = logits.softmax(-1).double() * n
    chi2 = float(((counts - expected) ** 2 / expected.clamp(min=1e-9))[:4].sum())
    assert chi2 < 16.3  # 3 degrees of freedom, p = 0.001
    kept = {int(sample(logits[None], [SamplingParams(temperature=5.0, top_k=2)], [g])[0]) for _ in range(300)}
    assert kept == {0, 1}


def test_schedules_used_the_prefix_cache():
    """The schedules above did exercise prefix hits (runs after them in this module)."""
    if not _PREFIX_HITS:
        pytest.skip("the schedule test did not run")
    assert all(hits > 0 for hits in _PREFIX_HITS.values()), _PREFIX_HITS


def test_prefix_cache_reuses_keeps_and_evicts(model):
    opening = list(range(10, 40))  # a 30-token "system prompt"
    prompts = [opening + [50 + i, 60 + i] for i in range(3)]
    params = SamplingParams(max_new_tokens=5, ignore_eos=True)
    solo = [generate(model, None, p, params).token_ids for p in prompts]
    engine = Engine(model, None, max_batch_size=1, max_seq_length=64)
    assert [c.token_ids for c in engine.run(prompts, params)] == solo
    assert engine.prefix_cache.hits == 2 and engine.prefix_cache.tokens_saved == 60
    # the same prompt again: everything but its last token comes from the cache
    assert engine.run([prompts[0]], params)[0].token_ids == solo[0]
    assert engine.prefix_cache.tokens_saved == 60 + 31
    # a byte budget that holds one prompt: older ones are dropped, and nothing breaks
    one = sum(t.numel() * t.element_size() for t in engine.cache.k + engine.cache.v) // 64 * 33
    small = PrefixCache(max_bytes=one, min_tokens=4)
    engine = Engine(model, None, max_batch_size=2, max_seq_length=64, prefix_cache=small)
    assert [c.token_ids for c in engine.run(prompts, params)] == solo
    assert len(small._entries) == 1 and small._bytes <= one
    off = Engine(model, None, max_batch_size=1, max_seq_length=64, prefix_cache=PrefixCache(max_bytes=0))
    assert [c.token_ids for c in off.run(prompts, params)] == solo and off.prefix_cache.hits == 0


@pytest.mark.parametrize("kw", [dict(top_p=0.9), dict(top_p=0.5, top_k=40), dict(top_k=7), dict(top_p=0.95, min_p=0.05),
                                dict(top_p=0.999), dict(temperature=0.3, top_p=0.8)])
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_batched_candidate_sampling_matches_the_processed_distribution(kw, scale):
    """Rows sampled together from their most likely tokens follow exactly the distribution that
    `process_logits` defines over the whole vocabulary (chi-square), and never draw a removed token;
    flat rows whose nucleus is larger than the candidates take the whole-vocabulary path."""
    from lmforge.sampling import process_logits, sample

    V, B, rounds = 600, 16, 250
    logits = torch.randn(V, generator=torch.Generator().manual_seed(7)) * scale
    params = SamplingParams(**{"temperature": 1.0, **kw})
    expected = process_logits(logits, params).softmax(-1).double()
    gens = [torch.Generator().manual_seed(100 + b) for b in range(B)]
    draws = torch.cat([sample(logits.expand(B, V), [params] * B, gens) for _ in range(rounds)])
    counts = torch.bincount(draws, minlength=V).double()
    assert counts[expected == 0].sum() == 0
    n = draws.numel()
    big = expected * n >= 5
    stat = float(((counts[big] - expected[big] * n) ** 2 / (expected[big] * n)).sum())
    df = max(int(big.sum()) - 1, 1)
    limit = df * (1 - 2 / (9 * df) + 3.09 * (2 / (9 * df)) ** 0.5) ** 3  # chi-square 0.999 quantile (Wilson-Hilferty)
    assert stat < limit, (stat, limit, df)
