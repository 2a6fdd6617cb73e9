"""The one-call batch-1 decoder (`lmforge.fast_decode`) against GPT's own layer loop."""

from __future__ import annotations

import copy
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import KERNEL_FAMILIES, TINY, tiny_gpt

from lmforge import cpu_kernels
from lmforge.config import Config
from lmforge.fast_decode import Workspace, _attention, install_fast_decode, unsupported
from lmforge.generate import Engine
from lmforge.model import GPT, KVCache
from lmforge.quantize import QuantizedLinear, fuse_projections, quantize_model
from lmforge.sampling import SamplingParams

pytestmark = pytest.mark.skipif(cpu_kernels.load() is None, reason="CPU kernels need x86-64 Linux with AVX2 and cc")

FAMILIES = KERNEL_FAMILIES  # every block variant the kernel covers
BASE = TINY


def build(family: str, seed: int = 0) -> GPT:
    # large weights and non-trivial norm weights and biases: differences would show
    return tiny_gpt(family, seed=seed, vector_noise=0.1)


def decode(model: GPT, ids: list[int], prefill: int, cache_rows: int = 1, row: int = 0):
    """Prefill `prefill` tokens, then decode the rest one at a time: (step logits, cache)."""
    cache = model.new_kv_cache(cache_rows, 32)
    rows = None if cache_rows == 1 else torch.tensor([row])
    idx = torch.tensor([ids])
    with torch.inference_mode():
        model(idx[:, :prefill], torch.arange(prefill), cache, rows=rows)
        steps = [model(idx[:, i:i + 1], torch.tensor([i]), cache, rows=rows) for i in range(prefill, len(ids))]
    return torch.cat(steps, dim=1), cache


_FUSION: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a quantized model's fused products


def quantize(model: GPT, mode: str) -> GPT:
    """Weights in `mode` with q/k/v and gate/up fused, as `prepare_for_inference` makes them."""
    quantize_model(model, mode)
    _FUSION[model] = fuse_projections(model)
    return model


def install(model: GPT) -> bool:
    """The kernels' runner for `model` (with its fused products, if quantized)."""
    return install_fast_decode(model, _FUSION.get(model))


class Counting:
    """Wraps a model's decoder to count the calls that took the fast path."""

    def __init__(self, decoder) -> None:
        self.decoder, self.hits, self.prefills = decoder, 0, 0

    def decode(self, *args):
        out = self.decoder.decode(*args)
        self.hits += out is not None
        return out

    def prefill(self, *args):
        out = self.decoder.prefill(*args)
        self.prefills += out is not None
        return out


def switch(model: GPT, fast: bool) -> Counting | None:
    """Send `model`'s forwards through a counted fast path (True) or its layer loop (False)."""
    if not fast:
        model.runner = None
        return None
    assert install(model), unsupported(model)
    model.runner = counter = Counting(model.runner)
    return counter


def fast_vs_loop(model: GPT, ids: list[int], prefill: int = 5, **kw):
    assert install(model), unsupported(model)
    model.runner = counter = Counting(model.runner)
    fast, fast_cache = decode(model, ids, prefill, **kw)
    assert counter.hits == len(ids) - prefill
    model.runner = None
    loop, loop_cache = decode(model, ids, prefill, **kw)
    return fast, loop, fast_cache, loop_cache


IDS = [3, 17, 40, 5, 88, 12, 9, 61, 33, 2, 70, 15, 27]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["plain", "fp32", "bf16", "int8"])
def test_fast_decode_equals_layer_loop(family, mode):
    model = build(family)
    if mode != "plain":
        quantize(model, mode)
    fast, loop, fast_cache, loop_cache = fast_vs_loop(model, IDS)
    # same fp32 arithmetic, other summation order; int8 re-rounds activations that differ by ~1e-7
    tol = 2e-3 if mode == "int8" else 2e-5
    torch.testing.assert_close(fast, loop, rtol=tol, atol=tol * float(loop.abs().max()))
    assert torch.equal(fast.argmax(-1), loop.argmax(-1))
    for a, b in zip(fast_cache.k + fast_cache.v, loop_cache.k + loop_cache.v):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("mode", ["plain", "int8"])
@pytest.mark.parametrize("family", ["llama-gqa", "pythia-parallel"])
def test_several_sequences_at_their_own_positions(family, mode):
    """B rows in one step, each at its own position (continuous batching), equal the layer loop."""
    model = build(family)
    if mode != "plain":
        quantize(model, mode)
    lengths = [3, 9, 6]
    results, counter = [], None
    for fast in (True, False):
        counter = switch(model, fast) or counter
        cache = model.new_kv_cache(4, 32)
        steps = []
        with torch.inference_mode():
            for r, n in enumerate(lengths):  # prefill rows 1..3 to different lengths
                model(torch.tensor([IDS[r:r + n]]), torch.arange(n), cache, rows=torch.tensor([r + 1]))
            pos = torch.tensor(lengths).view(3, 1)
            for i in range(3):
                idx = torch.tensor([[IDS[i]], [IDS[i + 4]], [IDS[i + 8]]])
                steps.append(model(idx, pos + i, cache, rows=torch.tensor([1, 2, 3])))
        results.append((torch.cat(steps, 1), cache))
    assert counter.hits == 3
    tol = 2e-3 if mode == "int8" else 2e-5
    torch.testing.assert_close(results[0][0], results[1][0], rtol=tol, atol=tol * float(results[1][0].abs().max()))
    for a, b in zip(results[0][1].k, results[1][1].k):
        assert a[0].abs().sum() == 0
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * 10)


@pytest.fixture(params=["avx2", "avx512"])
def isa(request):
    """Run a test on the kernels' AVX2 paths, then on their AVX-512 ones (where the CPU has AVX-512F)."""
    lib = cpu_kernels.load()
    if not lib.lmf_use_avx512(int(request.param == "avx512")) and request.param == "avx512":
        pytest.skip("no AVX-512F on this CPU")
    yield request.param
    lib.lmf_use_avx512(1)


@pytest.mark.parametrize("mode,tol", [("int8", 1e-4), ("bf16", 1e-5), ("fp32", 1e-5)])
def test_linear_kernel_for_every_row_count(mode, tol, isa):
    """1..16 input rows (every register-tile tail), 203 outputs (a 3-row weight tail), K with and
    without a multiple of 16 (the AVX-512 tile needs one), against F.linear of the same weights."""
    torch.manual_seed(1)
    for k in (96, 40):
        q = QuantizedLinear(nn.Linear(k, 203), mode) if mode == "int8" or k % 16 == 0 else None
        if q is None:
            continue
        w = q.dequantized()
        for rows in range(1, 17):
            x = torch.randn(1, rows, k) * 3
            ref = F.linear(x, w, q.bias)
            got = q(x)
            assert ((got - ref).norm() / ref.norm()).item() < tol, (k, rows)


@pytest.mark.parametrize("family", ["llama-gqa", "pythia-parallel"])
@pytest.mark.parametrize("mode", ["plain", "fp32", "bf16", "int8"])
def test_batched_step_for_every_row_count(family, mode, isa):
    """One decode step of M = 1..16 sequences, each at its own position, equals the layer loop."""
    model = build(family)
    if mode != "plain":
        quantize(model, mode)
    n = 16
    lengths = [2 + 5 * r % 23 for r in range(n)]  # row r holds lengths[r] tokens
    prefilled = model.new_kv_cache(n, 32)
    switch(model, False)
    with torch.inference_mode():
        for r, length in enumerate(lengths):
            ids = [(7 * i + r) % 96 for i in range(length)]
            model(torch.tensor([ids]), torch.arange(length), prefilled, rows=torch.tensor([r]))
    tol = 2e-3 if mode == "int8" else 2e-5
    for M in range(1, n + 1):
        rows = torch.arange(n - M, n)  # the last M rows: the kernel's rows are not 0..M-1
        pos = torch.tensor([lengths[r] for r in rows.tolist()]).view(M, 1)
        idx = torch.tensor([[IDS[(3 * r) % len(IDS)]] for r in rows.tolist()])
        out = []
        for fast in (True, False):
            cache = KVCache([t.clone() for t in prefilled.k], [t.clone() for t in prefilled.v])
            counter = switch(model, fast)
            with torch.inference_mode():
                out.append((model(idx, pos, cache, rows=rows), cache))
            assert counter is None or counter.hits == 1
        (fast_logits, fast_cache), (loop_logits, loop_cache) = out
        torch.testing.assert_close(fast_logits, loop_logits, rtol=tol, atol=tol * float(loop_logits.abs().max()))
        for a, b in zip(fast_cache.k + fast_cache.v, loop_cache.k + loop_cache.v):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol * 10)


def test_hidden_states_and_a_replaced_head():
    model = build("llama-gqa")
    model.lm_head = nn.Linear(model.config.n_embd, 2)  # a classifier head runs in the kernel too
    assert install(model) and model.runner.plan.has_head
    cache_f, cache_l = model.new_kv_cache(1, 32), model.new_kv_cache(1, 32)
    with torch.inference_mode():
        outs = []
        counter = Counting(model.runner)
        for cache, fast in ((cache_f, True), (cache_l, False)):
            model.runner = counter if fast else None
            model(torch.tensor([IDS[:4]]), torch.arange(4), cache)
            h = model(torch.tensor([IDS[4:5]]), torch.tensor([4]), cache, return_hidden=True)
            y = model(torch.tensor([IDS[5:6]]), torch.tensor([5]), cache)
            outs.append((h, y))
    assert counter.hits == 2
    assert outs[0][1].shape == (1, 1, 2) and outs[0][0].shape == (1, 1, 64)
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=2e-5, atol=2e-5)


def test_fast_decode_writes_the_requested_cache_row():
    model = build("llama-gqa")
    fast, loop, fast_cache, loop_cache = fast_vs_loop(model, IDS, cache_rows=3, row=2)
    torch.testing.assert_close(fast, loop, rtol=2e-5, atol=2e-5)
    for a, b in zip(fast_cache.k, loop_cache.k):
        assert a[:2].abs().sum() == 0 and b[:2].abs().sum() == 0  # other rows untouched
        torch.testing.assert_close(a[2], b[2], rtol=2e-5, atol=2e-5)


def test_plan_follows_model_changes():
    model = build("llama-gqa")
    assert install(model)
    decoder = model.runner
    plan = decoder.plan
    # a swapped module (what a LoRA wrapper does): the old pointers must not be used; the decoder
    # builds a plan for the new module
    old = model.layers[1].self_attn.o_proj
    new = nn.Linear(old.in_features, old.out_features, bias=False)
    model.layers[1].self_attn.o_proj = new
    assert not plan.valid()
    model.runner = counter = Counting(decoder)
    fast, _ = decode(model, IDS, 5)
    assert counter.hits == len(IDS) - 5 and decoder.plan is not plan
    model.runner = None
    loop, _ = decode(model, IDS, 5)
    torch.testing.assert_close(fast, loop, rtol=2e-5, atol=2e-5)
    # weights changed in place are seen as they are (training updates them this way)
    with torch.no_grad():
        model.layers[0].mlp.down_proj.weight.mul_(-1.5)
    fast, loop, _, _ = fast_vs_loop(model, IDS)
    torch.testing.assert_close(fast, loop, rtol=2e-5, atol=2e-5)
    # a deep copy gets its own plan, pointing at its own tensors
    assert install(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.layers[0].self_attn.q_proj.weight.mul_(2.0)
    twin_fast, _ = decode(twin, IDS, 5)
    model.runner = None
    twin.runner = None
    torch.testing.assert_close(twin_fast, decode(twin, IDS, 5)[0], rtol=2e-5, atol=2e-5)
    assert not torch.allclose(twin_fast, decode(model, IDS, 5)[0])
    # another dtype: the kernel cannot run it, the loop does
    assert install(model)
    model.runner = counter = Counting(model.runner)
    model.to(torch.bfloat16)
    with torch.inference_mode():
        cache = model.new_kv_cache(1, 32)
        model(torch.tensor([IDS[:3]]), torch.arange(3), cache)
        model(torch.tensor([IDS[3:4]]), torch.tensor([3]), cache)
    assert counter.hits == 0 and unsupported(model) is not None


def test_unsupported_blocks_keep_the_layer_loop():
    gemma = Config(**{**BASE, "post_norm": True, "norm_unit_offset": True, "attn_logit_softcap": 50.0})
    assert unsupported(GPT(gemma)) is not None
    assert not install_fast_decode(GPT(gemma))
    odd = Config(**{**BASE, "n_embd": 72, "n_head": 4})  # 72 is not a multiple of 16
    assert unsupported(GPT(odd)) == "sizes not a multiple of 16"


def test_engine_uses_the_fast_path_and_matches_greedy_without_it():
    model = build("qwen3-qknorm-bias", seed=3)
    params = SamplingParams(temperature=0.0, max_new_tokens=12, ignore_eos=True)

    def run() -> list[int]:
        engine = Engine(model, None, max_batch_size=2, max_seq_length=32)
        rid = engine.add(IDS[:6], params)
        out = []
        while engine.has_work():
            out += [e.token_id for e in engine.step() if e.request_id == rid]
        return out

    assert install(model)
    model.runner = counter = Counting(model.runner)
    fast = run()
    assert counter.hits == 11  # every step after the prefill
    model.runner = None  # the Engine takes the model as it is: the layer loop
    loop = run()
    assert fast == loop and len(fast) == 12


# ---------------------------------------------------------------------------------------------
# many tokens per forward (prefill, scoring): `layer_stack` with reused buffers
# ---------------------------------------------------------------------------------------------
def forwards(model: GPT, grad_off=torch.inference_mode):
    """Logits of the forwards a user makes with many tokens at once, and the caches they filled."""
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 96, (1, 20), generator=g)
    b = torch.randint(0, 96, (2, 7), generator=g)
    outs = []
    with grad_off():
        outs.append(model(a))  # no cache: every position's logits (perplexity, scoring)
        outs.append(model(a[:, :9], return_hidden=True))
        one = model.new_kv_cache(1, 32)
        outs.append(model(a[:, :12], torch.arange(12), one, logits_to_keep=1))  # a fresh prefill
        outs.append(model(a[:, 12:], torch.arange(12, 20), one))  # continued at an offset (masked)
        two = model.new_kv_cache(3, 32)
        outs.append(model(b, torch.arange(7), two, rows=torch.tensor([2, 0])))  # two rows at once
        outs.append(model(b[:, :3], torch.tensor([[7, 8, 9], [7, 8, 9]]), two, rows=torch.tensor([2, 0])))
    return outs, one.k + one.v + two.k + two.v


def check_prefill_path(model: GPT, tol: float = 2e-5, grad_off=torch.inference_mode) -> None:
    counter = switch(model, True)
    fast, fast_cache = forwards(model, grad_off)
    assert counter.prefills == 6 and counter.hits == 0
    switch(model, False)
    loop, loop_cache = forwards(model, grad_off)
    for x, y in zip(fast, loop):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, rtol=tol, atol=tol * float(y.abs().max()))
    for x, y in zip(fast_cache, loop_cache):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["plain", "fp32", "int8"])
def test_prefill_path_equals_layer_loop(family, mode):
    model = build(family)
    if mode != "plain":
        quantize(model, mode)  # fp32/int8: fused q/k/v and gate/up products
    check_prefill_path(model, tol=2e-3 if mode == "int8" else 2e-5)


def test_prefill_path_under_no_grad_and_with_a_sliding_window():
    """Buffers made under inference_mode serve no_grad callers too; windows beyond T are masked."""
    model = build("llama-gqa")
    check_prefill_path(model)
    check_prefill_path(model, grad_off=torch.no_grad)
    slide = build("llama-gqa")
    slide.config.sliding_window = 5
    for block in slide.layers:
        block.self_attn.sliding = True
    check_prefill_path(slide)


def test_prefill_path_with_a_head_size_the_attention_kernel_does_not_take():
    odd = Config(**{**BASE, "n_embd": 48, "n_head": 4, "n_query_groups": 2})  # head size 12
    torch.manual_seed(0)
    model = GPT(odd).eval()
    model.init_weights(std=0.2)
    check_prefill_path(model)


@pytest.mark.parametrize("B,T,S,nh,ng,hs,offset,window", [
    (1, 70, 70, 6, 2, 64, 0, 0),  # a fresh prompt, grouped queries
    (1, 37, 50, 4, 2, 80, 13, 0),  # continued at an offset; a head size that is not a multiple of 32
    (2, 9, 20, 4, 1, 32, 3, 5),  # two rows at different positions, one kv head, a window
    (3, 17, 40, 8, 8, 128, 5, 7),
    (1, 5, 5, 2, 2, 8, 0, 0),
])
def test_attention_kernel_equals_masked_sdpa(B, T, S, nh, ng, hs, offset, window):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, T, nh, hs, generator=g).transpose(1, 2)  # the strides the projections give
    k = torch.randn(B, ng, S + 8, hs, generator=g)[:, :, :S]  # a slice of a longer cache
    v = torch.randn(B, ng, S + 8, hs, generator=g)[:, :, :S]
    pos = (torch.arange(T) + offset).repeat(B, 1)
    pos[-1] = torch.arange(T) + S - T  # the last row ends at the last key
    j = torch.arange(S)
    mask = j <= pos[:, None, :, None]
    if window:
        mask &= pos[:, None, :, None] - j < window
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=hs**-0.5, enable_gqa=True)
    ws = Workspace()
    for _ in range(2):  # the second call reuses the buffers
        y = _attention(cpu_kernels.load(), q, k, v, pos, window, hs**-0.5, ws)
        torch.testing.assert_close(y.view(B, T, nh, hs).transpose(1, 2), ref, rtol=1e-5, atol=1e-5)


def test_prefill_path_with_int32_positions():
    model = build("llama-gqa")
    idx = torch.tensor([IDS[:12]])
    outs, counter = [], None
    for fast in (True, False):
        counter = switch(model, fast) or counter
        with torch.inference_mode():
            one = model.new_kv_cache(1, 32)
            model(idx[:, :4], torch.arange(4), one)
            outs.append(model(idx[:, 4:], torch.arange(4, 12, dtype=torch.int32), one))  # int32 positions
    assert counter.prefills == 2
    torch.testing.assert_close(outs[0], outs[1], rtol=2e-5, atol=2e-5 * float(outs[1].abs().max()))


def test_prefill_buffers_are_kept_up_to_a_size(monkeypatch):
    from lmforge import fast_decode

    model = build("llama-gqa")
    assert install(model)
    local = model.runner._local
    with torch.inference_mode():
        model(torch.tensor([IDS]))
        kept = local.workspace.nbytes
        assert kept > 0  # reused by the next call
        monkeypatch.setattr(fast_decode, "WORKSPACE_KEEP_BYTES", kept - 1)
        model(torch.tensor([IDS]))
    assert local.workspace.nbytes == 0  # over the limit: freed after the call


def test_prefill_path_steps_aside_for_training():
    model = build("llama-gqa")
    assert install(model)
    model.runner = counter = Counting(model.runner)
    logits = model(torch.tensor([IDS]))
    logits.sum().backward()  # gradients on: the layer loop, whose graph this is
    assert counter.prefills == 0 and model.lm_head.weight.grad is not None
