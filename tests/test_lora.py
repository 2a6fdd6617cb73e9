"""LoRA adapters: exact at init, only adapters train, merge/disable, PEFT's format both ways."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import tiny_gpt

from lmforge.errors import LmforgeError
from lmforge.lora import LoRALinear, LoRASettings, apply_lora, disable_adapters, lora_state_dict, merge_lora

IDS = torch.randint(0, 96, (2, 11), generator=torch.Generator().manual_seed(0))


def _randomize_adapters(model, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("targets", ["q_proj,v_proj", "all-linear", "*_proj", "layers.1.self_attn.o_proj"])
def test_init_is_exact_and_only_adapters_train(family_model, targets):
    name, model = family_model
    if targets == "*_proj" and name == "mixtral-moe":
        targets = "q_proj"
    base = model(IDS)
    names = apply_lora(model, LoRASettings(r=4, alpha=8, targets=targets))
    assert names and all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    torch.testing.assert_close(model(IDS), base, rtol=0, atol=0)
    model.train()
    model(IDS).float().square().mean().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state_dict(model)) and trainable
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    assert all(model.get_parameter(n).grad is not None for n in trainable if "lora_A" in n)


def test_merge_equals_unmerged_and_disable_equals_base():
    model = tiny_gpt("llama-gqa", vector_noise=0.1)
    frozen = copy.deepcopy(model)
    apply_lora(model, LoRASettings(r=4, alpha=16, targets="all-linear"))
    _randomize_adapters(model)
    with torch.no_grad():
        adapted = model(IDS)
        with disable_adapters(model):
            torch.testing.assert_close(model(IDS), frozen(IDS), rtol=0, atol=0)
        assert not torch.allclose(adapted, frozen(IDS))
        merge_lora(model)
        assert not any(isinstance(m, LoRALinear) for m in model.modules())
        torch.testing.assert_close(model(IDS), adapted, rtol=1e-5, atol=1e-5)


def test_bad_targets_and_settings():
    model = tiny_gpt("llama-gqa")
    with pytest.raises(LmforgeError, match="'c_attn' matches no linear layer.*q_proj"):
        apply_lora(model, LoRASettings(targets="q_proj,c_attn"))
    for bad, match in [(dict(r=0), "r must be"), (dict(alpha=0), "alpha"), (dict(dropout=1.0), "dropout"),
                       (dict(targets=" , "), "targets is empty")]:
        with pytest.raises(LmforgeError, match=match):
            LoRASettings(**bad)


def test_lora_on_int8_base():
    from lmforge.quantize import quantize_model

    model = quantize_model(tiny_gpt("llama-gqa"), "int8")
    base = model(IDS)
    apply_lora(model, LoRASettings(r=4, targets="q_proj,v_proj"))
    torch.testing.assert_close(model(IDS), base, rtol=0, atol=0)
    _randomize_adapters(model)
    model(IDS).square().mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)
    with pytest.raises(LmforgeError, match="cannot merge LoRA into a QuantizedLinear"):
        merge_lora(model)


# ---------------------------------------------------------------------------------------------
# PEFT's format, against PEFT itself
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from lmforge.api import LLM

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=128, vocab_size=96, max_position_embeddings=64)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    path = tmp_path_factory.mktemp("hf_llama")
    hf.save_pretrained(path)
    return path, LLM.load(path, device="cpu", dtype="float32")


def _hf(path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.mark.parametrize("targets", ["q_proj,v_proj", "all-linear"])
def test_our_adapter_loads_in_peft_with_equal_logits(hf_llama, tmp_path, targets):
    import peft

    from lmforge.convert.peft import save_peft_adapter

    path, llm = hf_llama
    model = copy.deepcopy(llm.model)
    settings = LoRASettings(r=4, alpha=8, targets=targets)
    apply_lora(model, settings)
    _randomize_adapters(model)
    save_peft_adapter(model, llm.config, settings, tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(_hf(path), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), theirs(IDS).logits, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(llm.model(IDS), theirs(IDS).logits, atol=1e-3)  # the adapter does something


def test_peft_adapter_loads_in_ours_with_equal_logits(hf_llama, tmp_path):
    import peft

    from lmforge.convert.peft import load_peft_adapter

    path, llm = hf_llama
    theirs = peft.get_peft_model(_hf(path), peft.LoraConfig(r=4, lora_alpha=16, target_modules=["k_proj", "up_proj"]))
    _randomize_adapters(theirs, seed=3)
    theirs.save_pretrained(tmp_path / "adapter")
    model = copy.deepcopy(llm.model)
    settings = load_peft_adapter(model, llm.config, tmp_path / "adapter")
    assert (settings.r, settings.alpha) == (4, 16.0)
    assert sorted({n.rpartition(".")[2] for n in lora_state_dict(model)}) == ["weight"]
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), theirs.eval()(IDS).logits, rtol=1e-4, atol=1e-4)


def test_adapter_gradients_equal_peft(hf_llama, tmp_path):
    """Training through our adapters gives PEFT's gradients (rank 4, alpha 8: the update is scaled)."""
    import peft

    from lmforge.convert.peft import save_peft_adapter

    path, llm = hf_llama
    model = copy.deepcopy(llm.model).train()
    settings = LoRASettings(r=4, alpha=8, targets="all-linear")
    apply_lora(model, settings)
    _randomize_adapters(model)
    save_peft_adapter(model, llm.config, settings, tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(_hf(path), tmp_path / "adapter", is_trainable=True).train()
    model(IDS).float().square().mean().backward()
    theirs(IDS).logits.float().square().mean().backward()
    grads = {n: p.grad for n, p in theirs.named_parameters() if p.requires_grad}
    for name, p in model.named_parameters():
        if p.requires_grad:
            hf_name = next(k for k in grads if k.endswith(name.replace(".weight", ".default.weight")))
            torch.testing.assert_close(p.grad, grads[hf_name], rtol=1e-4, atol=1e-6)


def test_fused_hf_projection_is_refused(tmp_path):
    from lmforge.config import Config
    from lmforge.convert.peft import save_peft_adapter
    from lmforge.model import GPT

    config = Config.from_name("gpt2", n_layer=1, n_embd=64, n_head=4, vocab_size=96, block_size=32)
    model = GPT(config)
    settings = LoRASettings(targets="q_proj")
    apply_lora(model, settings)
    with pytest.raises(LmforgeError, match="stores this projection fused"):
        save_peft_adapter(model, config, settings, tmp_path)


def _adapter(dtype: torch.dtype, dropout: float, seed: int = 0) -> LoRALinear:
    torch.manual_seed(seed)
    layer = LoRALinear(torch.nn.Linear(6, 5, dtype=dtype), LoRASettings(r=3, alpha=6, dropout=dropout, targets="x"))
    _randomize_adapters(layer, seed)
    return layer.train()


@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_adapter_gradient_is_the_formulas(dropout):
    """The adapter's own backward (`_LoRAUpdate`) against finite differences in float64; dropout
    is on with a fixed seed (each evaluation draws the same mask) or off."""
    layer = _adapter(torch.float64, dropout)
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    a, b = (torch.randn_like(m.weight, requires_grad=True) for m in (layer.lora_A, layer.lora_B))

    def f(x, a, b):
        torch.manual_seed(3)
        return torch.func.functional_call(layer, {"lora_A.weight": a, "lora_B.weight": b}, (x,))

    assert torch.autograd.gradcheck(f, (x, a, b), eps=1e-6, atol=1e-7)


class _SeededDropout(torch.nn.Module):
    """`nn.Dropout` with the mask lmforge's adapter draws for `seed` (`lora._dropped`)."""

    def __init__(self, seed: int, p: float) -> None:
        super().__init__()
        self.seed, self.p = seed, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from lmforge.lora import _dropped

        return x * _dropped(torch.ones_like(x), self.seed, self.p) / (1 - self.p)  # the mask as a constant


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_adapter_equals_peft_lora_layer(dropout):
    """Outputs and gradients equal PEFT's `lora.Linear` (the plain formula `base(x) + s * B(A(drop(x)))`)
    with the same weights and, with dropout on, the same mask: PEFT's dropout module is given the mask
    that our adapter draws for the seed it takes from PyTorch's generator."""
    from peft import LoraConfig
    from peft.tuners.lora import Linear as PeftLinear

    ours = _adapter(torch.float32, dropout)
    config = LoraConfig(r=3, lora_alpha=6, lora_dropout=dropout)
    theirs = PeftLinear(copy.deepcopy(ours.base_layer), "default", config, r=3, lora_alpha=6,
                        lora_dropout=dropout).train()
    if dropout:
        torch.manual_seed(5)
        theirs.lora_dropout["default"] = _SeededDropout(int(torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64)),
                                                        dropout)
    with torch.no_grad():
        theirs.lora_A["default"].weight.copy_(ours.lora_A.weight)
        theirs.lora_B["default"].weight.copy_(ours.lora_B.weight)
    x = torch.randn(3, 7, 6)
    outs, grads = [], []
    for layer in (ours, theirs):
        xi = x.clone().requires_grad_()
        torch.manual_seed(5)
        y = layer(xi)
        (y * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
        outs.append(y.detach())
        a, b = (p for n, p in layer.named_parameters() if p.requires_grad)
        grads.append((xi.grad, a.grad, b.grad))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for g_ours, g_theirs in zip(*grads):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-6)
    assert dropout == 0 or not torch.equal(ours.train()(x), ours.eval()(x))  # dropout was really on


@pytest.mark.parametrize("p", [0.05, 0.5])
def test_dropout_mask_rate_seed_and_threads(p):
    """The adapter's dropout keeps each element with probability 1 - p (a 6-sigma binomial band over 2M
    elements, and in every tenth of them), the same mask at 1 and 2 threads and on the fallback's
    generator-free replay, a different one for another seed."""
    from lmforge.lora import _dropped

    x = torch.ones(2_000_000)
    kept = _dropped(x, 1234, p)
    n, q = x.numel(), 1 - p
    sigma = (n * p * q) ** 0.5
    assert abs(kept.sum().item() - n * q) < 6 * sigma
    for part in kept.view(10, -1):  # no long runs: every slice keeps its share
        assert abs(part.sum().item() - part.numel() * q) < 6 * (part.numel() * p * q) ** 0.5
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(_dropped(x, 1234, p), kept)
    finally:
        torch.set_num_threads(threads)
    other = _dropped(x, 1235, p)
    agree = (other == kept).float().mean().item()
    assert abs(agree - (q * q + p * p)) < 0.01  # independent masks agree where both keep or both drop
    y = torch.randn(1000)
    assert torch.equal(_dropped(y, 7, p, out=y.clone()), _dropped(y, 7, p))  # in place = out of place
