"""Weight-only int8 / bf16 inference modes: kernel arithmetic, logits and greedy parity, names, loading."""

from __future__ import annotations

import copy
import math
from functools import partial

import helpers
import pytest
import torch
import torch.nn.functional as F

from lmforge import cpu_kernels
from lmforge.api import LLM
from lmforge.checkpoint import save_checkpoint
from lmforge.errors import LmforgeError
from lmforge.model import GPT
from lmforge.quantize import KERNEL_MAX_ROWS, MODES, QuantizedLinear, fuse_projections, quantize_model

needs_kernels = pytest.mark.skipif(cpu_kernels.load() is None, reason="no AVX2 CPU or no C compiler")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# large weights: confident, varied next-token choices
tiny_gpt = partial(helpers.tiny_gpt, std=0.3, vocab_size=256, n_query_groups=2, intermediate_size=128,
                   block_size=128, tie_embeddings=True)


@torch.inference_mode()
def greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    cache = model.new_kv_cache(1, len(prompt) + n)
    logits = model(torch.tensor([prompt]), input_pos=torch.arange(len(prompt)), cache=cache, logits_to_keep=1)
    out = []
    for i in range(n):
        out.append(int(logits[0, -1].argmax()))
        logits = model(torch.tensor([[out[-1]]]), input_pos=torch.tensor([len(prompt) + i]), cache=cache,
                       logits_to_keep=1)
    return out


# ---------------------------------------------------------------------------------------------
# one layer: the kernels compute exactly what the stored weights say
# ---------------------------------------------------------------------------------------------
@needs_kernels
@pytest.mark.parametrize("mode,tol", [("int8", 1e-4), ("bf16", 1e-5), ("fp32", 1e-5)])
@pytest.mark.parametrize("rows", [1, 3, KERNEL_MAX_ROWS])
def test_kernel_matches_dequantized_weight(mode, tol, rows):
    # int8: activations are rounded to int16 per row (error <= 1.5e-5 of the row max), hence 1e-4;
    # bf16/fp32: fp32 accumulation in another order than MKL's.
    torch.manual_seed(1)
    lin = torch.nn.Linear(96, 203)  # odd out_features: the 4-row tail of the kernel
    q = QuantizedLinear(lin, mode)
    x = torch.randn(2, rows, 96) * 3
    ref = F.linear(x, q.dequantized(), q.bias)
    assert q(x).shape == (2, rows, 203)
    assert rel_err(q(x), ref) < tol


@needs_kernels
@pytest.mark.parametrize("mode,tol", [("int8", 1e-4), ("bf16", 1e-5), ("fp32", 1e-5)])
@pytest.mark.parametrize("k,n", [(16, 7), (48, 203), (1168, 3001)])
def test_single_input_row_path_matches(mode, tol, k, n):
    # one input row (batch-1 decoding) takes its own loop: one weight row at a time, 32 columns per
    # step plus an 8-column tail, in ~128 KB chunks for fp32/bf16 (n=3001 at k=1168: many chunks and a
    # ragged last one)
    torch.manual_seed(2)
    lin = torch.nn.Linear(k, n)
    q = QuantizedLinear(lin, mode)
    x = torch.randn(1, 1, k) * 3
    ref = F.linear(x, q.dequantized(), q.bias)
    assert rel_err(q(x), ref) < tol


def test_quantization_error_is_what_int8_and_bf16_allow():
    torch.manual_seed(2)
    lin = torch.nn.Linear(256, 512, bias=False)
    w = lin.weight.detach()
    q8, qb = QuantizedLinear(lin, "int8"), QuantizedLinear(lin, "bf16")
    # round to nearest: each int8 weight within half a step of its row's scale
    assert (q8.dequantized() - w).abs().le(q8.scale[:, None] / 2 + 1e-7).all()
    assert q8.weight.dtype == torch.int8 and q8.weight.abs().max() <= 127
    assert (qb.dequantized() - w).abs().le(w.abs() * 2**-8 + 1e-12).all()  # bf16: 8-bit mantissa


@needs_kernels
def test_many_rows_take_the_dequantized_path_and_agree():
    torch.manual_seed(3)
    q = QuantizedLinear(torch.nn.Linear(64, 80), "int8")
    x = torch.randn(KERNEL_MAX_ROWS + 5, 64)
    few = torch.cat([q(x[i:i + 4]) for i in range(0, len(x), 4)])  # kernel, 4 rows at a time
    assert rel_err(q(x), few) < 1e-4  # MKL on the dequantized weight


@needs_kernels
@pytest.mark.parametrize("mode", ["int8", "bf16"])
@pytest.mark.parametrize("bias", [False, True])
def test_input_gradient_through_a_frozen_base_keeps_only_the_stored_weight(mode, bias):
    """Training through a quantized base (LoRA on int8): x's gradient is nn.Linear's on the dequantized
    weight, and the backward holds the stored weight, not an fp32 copy (that copy per layer made an
    int8 base cost more memory than fp32)."""
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=bias)
    q = QuantizedLinear(lin, mode)
    plain = torch.nn.Linear(64, 48, bias=bias)
    with torch.no_grad():
        plain.weight.copy_(q.dequantized())
        if bias:
            plain.bias.copy_(q.bias)
    x = torch.randn(3, 5, 64, generator=g, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = q(x)
    w = torch.randn(y.shape, generator=g)
    (y * w).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    (plain(x2) * w).sum().backward()
    torch.testing.assert_close(y, plain(x2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    assert not any(t.dtype == torch.float32 and t.numel() == 48 * 64 for t in saved)  # (either orientation)


def test_thread_count_does_not_change_results():
    # each output row is computed by one thread in a fixed order: bit-identical for any pool size
    torch.manual_seed(4)
    q = QuantizedLinear(torch.nn.Linear(576, 4000), "int8")
    x = torch.randn(1, 576)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = q(x)
        torch.set_num_threads(3)
        three = [q(x) for _ in range(20)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(one, t) for t in three)


@needs_kernels
def test_back_to_back_calls_on_the_thread_pool_stay_correct():
    # many short jobs of different shapes in a row: a helper thread lagging behind one job must
    # never run a chunk of the next with stale arguments (this once crashed a benchmark)
    torch.manual_seed(6)
    mods = [QuantizedLinear(torch.nn.Linear(64, n), mode) for n in (40, 300, 1000) for mode in ("int8", "fp32")]
    xs = [torch.randn(1, 64) for _ in mods]
    refs = [F.linear(x, m.dequantized(), m.bias) for m, x in zip(mods, xs)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        for i in range(3000):
            j = i % len(mods)
            assert rel_err(mods[j](xs[j]), refs[j]) < 1e-4
    finally:
        torch.set_num_threads(threads)


def test_fallback_without_kernels_gives_the_same_numbers(monkeypatch):
    torch.manual_seed(5)
    q = QuantizedLinear(torch.nn.Linear(48, 40), "int8")  # 48 % 16 == 0: kernel-eligible
    x = torch.randn(1, 48)
    fast = q(x)
    monkeypatch.setattr(cpu_kernels, "load", lambda: None)
    assert rel_err(q(x), fast) < 1e-4
    assert rel_err(q(x), F.linear(x, q.dequantized(), q.bias)) < 1e-6


# ---------------------------------------------------------------------------------------------
# whole models
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,tol", [("int8", 0.03), ("bf16", 0.01), ("fp32", 1e-5)])
def test_quantized_logits_close_to_fp32(mode, tol):
    # Per-channel int8 rounds each weight by up to half a step (max|row| / 254): ~0.5-1% relative
    # error per matrix for Gaussian rows; through 2 layers and the head the logits move ~1%,
    # so 3% fails on a real defect (a wrong scale or row gives errors of order 100%) and not on noise.
    # bf16 keeps 8 mantissa bits (0.2-0.4% per matrix).
    model = tiny_gpt(std=0.02)
    q = quantize_model(copy.deepcopy(model), mode)
    x = torch.randint(0, 256, (2, 24))
    with torch.inference_mode():
        assert rel_err(q(x), model(x)) < tol
        # the decode path (1 row, kernels) agrees with the prefill path (many rows, dequantized)
        cache = q.new_kv_cache(1, 24)
        last = None
        for t in range(24):
            last = q(x[:1, t:t + 1], input_pos=torch.tensor([t]), cache=cache)
        assert rel_err(last[0, -1], q(x[:1])[0, -1]) < 1e-3


def test_greedy_tokens_mostly_equal():
    model = tiny_gpt(std=0.3)
    q = quantize_model(copy.deepcopy(model), "int8")
    # teacher-forced: the argmax at each position of random sequences
    x = torch.randint(0, 256, (4, 48))
    with torch.inference_mode():
        agree = (q(x).argmax(-1) == model(x).argmax(-1)).float().mean().item()
    assert agree >= 0.9
    # free-running greedy decoding: the first tokens are the same
    ref, got = greedy(model, [5, 17, 33, 9], 24), greedy(q, [5, 17, 33, 9], 24)
    assert got[:8] == ref[:8]
    assert sum(a == b for a, b in zip(got, ref)) >= 12


def test_module_and_parameter_names_are_stable():
    model = tiny_gpt(qk_norm=None)
    before_modules = {n for n, _ in model.named_modules()}
    before_keys = set(model.state_dict())
    q = quantize_model(copy.deepcopy(model), "int8")
    assert {n for n, _ in q.named_modules()} == before_modules
    keys = set(q.state_dict())
    assert before_keys <= keys
    assert keys - before_keys == {f"{n}.scale" for n, m in q.named_modules() if isinstance(m, QuantizedLinear)}
    assert isinstance(q.layers[0].self_attn.q_proj, QuantizedLinear)
    assert q.layers[0].self_attn.q_proj.weight.dtype == torch.int8
    assert q.lm_head.weight.dtype == torch.int8
    assert q.embed_tokens.weight.dtype == torch.float32  # the tied table keeps full precision
    assert not any(p.requires_grad for p in q.parameters() if not p.is_floating_point())


def test_skip_and_none_leave_modules_alone():
    model = tiny_gpt()
    q = quantize_model(copy.deepcopy(model), "bf16", skip=("lm_head",))
    assert isinstance(q.lm_head, torch.nn.Linear) and q.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert quantize_model(model, None) is model and isinstance(model.lm_head, torch.nn.Linear)


def test_every_mode_has_a_kernel_mode():
    assert set(MODES) == set(cpu_kernels.header().enums["mode"])  # the kernels' enum, read from lmf_cpu.h


def test_unknown_mode_is_a_one_line_error():
    with pytest.raises(LmforgeError, match=r"quantize mode 'int4' is not supported \(use one of: int8, bf16"):
        quantize_model(tiny_gpt(), "int4")


def test_llm_load_quantizes_at_load_time(tmp_path):
    model = tiny_gpt(std=0.02)
    save_checkpoint(tmp_path / "ck", model, model.config)
    llm = LLM.load(tmp_path / "ck", device="cpu", quantize="int8")
    assert isinstance(llm.model.layers[1].mlp.down_proj, QuantizedLinear)
    x = torch.randint(0, 256, (1, 16))
    with torch.inference_mode():
        assert rel_err(llm.model(x), model(x)) < 0.03
    with pytest.raises(LmforgeError, match="quantize .int3. is not one of: none, int8, bf16"):
        LLM.load(tmp_path / "ck", device="cpu", quantize="int3")


# ---------------------------------------------------------------------------------------------
# real weights: perplexity on Jane Austen within 2% of fp32
# ---------------------------------------------------------------------------------------------
def perplexity(model: GPT, ids: torch.Tensor) -> float:
    with torch.inference_mode():
        logits = model(ids[None, :-1])
        return math.exp(F.cross_entropy(logits[0].float(), ids[1:]).item())


@pytest.mark.slow
def test_smollm2_perplexity_on_austen_within_2_percent():
    from lmforge.convert.gguf import load_gguf

    config, sd, tok = load_gguf(helpers.asset("smollm2-135m-instruct"))
    model = GPT.from_state_dict(config, sd).eval()
    text = (helpers.asset("austen") / "pride_and_prejudice.txt").read_text(encoding="utf-8")
    start = text.index("It is a truth universally acknowledged")
    ids = torch.tensor(tok.encode(text[start:start + 6000], bos=False)[:513])
    ref = perplexity(model, ids)
    assert 5 < ref < 60  # the model reads English
    for mode in ("int8", "bf16"):
        ppl = perplexity(quantize_model(copy.deepcopy(model), mode), ids)
        assert abs(ppl / ref - 1) < 0.02, (mode, ppl, ref)


@needs_kernels
def test_fused_projections_share_storage_and_fall_back_when_a_member_changes():
    from lmforge.fast_decode import install_fast_decode
    from lmforge.inference import prepare_for_inference

    model = tiny_gpt(std=0.02)
    q = prepare_for_inference(copy.deepcopy(model), "int8")
    fusion = q.runner.fusion  # the runner holds the fused products; the modules stay as they were
    attn, mlp = q.layers[0].self_attn, q.layers[0].mlp
    fused = fusion[attn]
    assert fused.covers(attn.q_proj, attn.k_proj, attn.v_proj) and mlp in fusion
    assert attn.k_proj.weight.data_ptr() == fused.weight.data_ptr() + attn.q_proj.weight.numel()  # a view
    assert not any("fused" in k for k in q.state_dict())
    x = torch.randint(0, 256, (1, 12))
    with torch.inference_mode():
        with_fused = q(x[:, -1:], input_pos=torch.tensor([0]), cache=q.new_kv_cache(1, 4))
        install_fast_decode(q)  # a runner without the fused products: the per-projection path
        without = q(x[:, -1:], input_pos=torch.tensor([0]), cache=q.new_kv_cache(1, 4))
    assert rel_err(with_fused, without) < 1e-5
    # a projection swapped after fusing (e.g. an adapter) is used, not the stale fused weight
    q2 = quantize_model(copy.deepcopy(model), "int8")
    fusion2 = fuse_projections(q2)
    q2.layers[0].self_attn.v_proj = QuantizedLinear(torch.nn.Linear(64, 32), "int8")
    assert not fusion2[q2.layers[0].self_attn].covers(
        q2.layers[0].self_attn.q_proj, q2.layers[0].self_attn.k_proj, q2.layers[0].self_attn.v_proj)
