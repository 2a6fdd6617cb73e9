"""The one-call batch-1 decoder (`lmforge.fast_decode`) against GPT's own layer loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lmforge import cpu_kernels
from lmforge.config import Config
from lmforge.fast_decode import install_fast_decode, unsupported
from lmforge.generate import Engine
from lmforge.model import GPT
from lmforge.quantize import quantize_model
from lmforge.sampling import SamplingParams

pytestmark = pytest.mark.skipif(cpu_kernels.load() is None, reason="CPU kernels need x86-64 Linux with AVX2 and cc")

BASE = dict(vocab_size=96, n_layer=2, n_embd=64, n_head=4, block_size=64, intermediate_size=96)
# every block variant the kernel covers
FAMILIES = {
    "llama-gqa": dict(n_query_groups=2),
    "qwen3-qknorm-bias": dict(n_query_groups=1, qk_norm="head", attn_bias=True, head_size=32),
    "pythia-parallel": dict(norm_class="layernorm", mlp_class="mlp", activation="gelu", parallel_residual=True,
                            shared_attention_norm=False, rotary_percentage=0.25, attn_bias=True,
                            attn_out_bias=True, mlp_bias=True),
    "phi2-shared-norm": dict(norm_class="layernorm", mlp_class="mlp", activation="gelu_tanh",
                             parallel_residual=True, shared_attention_norm=True, rotary_percentage=0.5,
                             attn_bias=True, attn_out_bias=True, mlp_bias=True, lm_head_bias=True),
    "gpt2-learned": dict(norm_class="layernorm", mlp_class="mlp", activation="gelu_tanh",
                         position_embedding="learned", attn_bias=True, attn_out_bias=True, mlp_bias=True),
    "relu-mlp": dict(mlp_class="mlp", activation="relu"),
}


def build(family: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = Config(**{**BASE, **FAMILIES[family]})
    model = GPT(cfg)
    model.init_weights(std=0.2)  # large weights: differences would show
    for name, p in model.named_parameters():  # non-trivial norm weights and biases
        if p.dim() == 1:
            with torch.no_grad():
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def decode(model: GPT, ids: list[int], prefill: int, cache_rows: int = 1, row: int = 0):
    """Prefill `prefill` tokens, then decode the rest one at a time: (step logits, cache)."""
    cache = model.new_kv_cache(cache_rows, 32)
    rows = None if cache_rows == 1 else torch.tensor([row])
    idx = torch.tensor([ids])
    with torch.inference_mode():
        model(idx[:, :prefill], torch.arange(prefill), cache, rows=rows)
        steps = [model(idx[:, i:i + 1], torch.tensor([i]), cache, rows=rows) for i in range(prefill, len(ids))]
    return torch.cat(steps, dim=1), cache


class Counting:
    """Wraps a plan to count the calls that took the fast path."""

    def __init__(self, plan) -> None:
        self.plan, self.hits = plan, 0

    def __call__(self, *args):
        out = self.plan(*args)
        self.hits += out is not None
        return out


def fast_vs_loop(model: GPT, ids: list[int], prefill: int = 5, **kw):
    assert install_fast_decode(model), unsupported(model)
    model.__dict__["fast_decode"] = counter = Counting(model.__dict__["fast_decode"])
    fast, fast_cache = decode(model, ids, prefill, **kw)
    assert counter.hits == len(ids) - prefill
    model.__dict__.pop("fast_decode")
    loop, loop_cache = decode(model, ids, prefill, **kw)
    return fast, loop, fast_cache, loop_cache


IDS = [3, 17, 40, 5, 88, 12, 9, 61, 33, 2, 70, 15, 27]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["plain", "fp32", "bf16", "int8"])
def test_fast_decode_equals_layer_loop(family, mode):
    model = build(family)
    if mode != "plain":
        quantize_model(model, mode)
    fast, loop, fast_cache, loop_cache = fast_vs_loop(model, IDS)
    # same fp32 arithmetic, other summation order; int8 re-rounds activations that differ by ~1e-7
    tol = 2e-3 if mode == "int8" else 2e-5
    torch.testing.assert_close(fast, loop, rtol=tol, atol=tol * float(loop.abs().max()))
    assert torch.equal(fast.argmax(-1), loop.argmax(-1))
    for a, b in zip(fast_cache.k + fast_cache.v, loop_cache.k + loop_cache.v):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * 10)


def test_fast_decode_writes_the_requested_cache_row():
    model = build("llama-gqa")
    fast, loop, fast_cache, loop_cache = fast_vs_loop(model, IDS, cache_rows=3, row=2)
    torch.testing.assert_close(fast, loop, rtol=2e-5, atol=2e-5)
    for a, b in zip(fast_cache.k, loop_cache.k):
        assert a[:2].abs().sum() == 0 and b[:2].abs().sum() == 0  # other rows untouched
        torch.testing.assert_close(a[2], b[2], rtol=2e-5, atol=2e-5)


def test_plan_steps_aside_when_the_model_changes():
    model = build("llama-gqa")
    assert install_fast_decode(model)
    plan = model.fast_decode
    # a swapped module (what a LoRA wrapper does): the plan must not use the old weights
    old = model.layers[1].self_attn.o_proj
    new = nn.Linear(old.in_features, old.out_features, bias=False)
    model.layers[1].self_attn.o_proj = new
    assert not plan.valid()
    model.__dict__["fast_decode"] = counter = Counting(plan)
    stale, _ = decode(model, IDS, 5)
    assert counter.hits == 0
    model.__dict__.pop("fast_decode")
    loop, _ = decode(model, IDS, 5)
    torch.testing.assert_close(stale, loop, rtol=0, atol=0)
    # weights changed in place are seen (training updates them this way)
    assert install_fast_decode(model)
    with torch.no_grad():
        model.layers[0].mlp.down_proj.weight.mul_(-1.5)
    fast, loop, _, _ = fast_vs_loop(model, IDS)
    torch.testing.assert_close(fast, loop, rtol=2e-5, atol=2e-5)
    # another dtype: the kernel cannot run it, the loop does
    assert install_fast_decode(model)
    model.to(torch.bfloat16)
    assert not model.fast_decode.valid()
    assert unsupported(model) is not None


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

    install_fast_decode(model)
    model.__dict__["fast_decode"] = counter = Counting(model.fast_decode)
    fast = run()
    assert counter.hits == 11  # every step after the prefill
    model.__dict__.pop("fast_decode")
    model.__dict__["fast_decode"] = None  # Engine leaves an explicit None alone: the loop
    loop = run()
    assert fast == loop and len(fast) == 12
