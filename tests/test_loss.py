"""The fused chunked linear + cross-entropy equals `F.cross_entropy(h @ W.T + b, y)` in loss and gradients."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.training.loss import fused_linear_cross_entropy


def _inputs(n=37, d=16, v=101, bias=False, seed=0, ignore=(3, 4, 20)):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_()
    w = (torch.randn(v, d, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    b = (torch.randn(v, generator=g, dtype=torch.float64) * 0.1).requires_grad_() if bias else None
    y = torch.randint(0, v, (n,), generator=g)
    y[list(ignore)] = -100
    return h, w, b, y


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 8, 37, 64])
def test_matches_plain_cross_entropy(reduction, bias, chunk):
    h, w, b, y = _inputs(bias=bias)
    ref = F.cross_entropy(F.linear(h, w, b), y, reduction=reduction)
    got = fused_linear_cross_entropy(h, w, y, bias=b, chunk_size=chunk, reduction=reduction)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for a, r in zip(_grads(got * 3.0, (h, w, b)), _grads(ref * 3.0, (h, w, b))):  # a scaled loss: scaled grads
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def test_ignored_rows_get_no_gradient_and_fp32_is_close():
    h, w, _, y = _inputs(n=300, d=32, v=1000, ignore=range(0, 300, 7))
    h32, w32 = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    got = fused_linear_cross_entropy(h32, w32, y, chunk_size=64)
    ref = F.cross_entropy(F.linear(h, w), y)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=0)
    gh, gw = torch.autograd.grad(got, (h32, w32))
    rh, rw = torch.autograd.grad(ref, (h, w))
    assert (gh[::7] == 0).all()
    assert ((gh.double() - rh).norm() / rh.norm()) < 1e-5
    assert ((gw.double() - rw).norm() / rw.norm()) < 1e-5


def test_all_ignored_mean_is_nan_like_torch_and_sum_is_zero():
    h, w, _, y = _inputs(n=5, ignore=range(5))
    assert torch.isnan(F.cross_entropy(F.linear(h, w), y)) and torch.isnan(fused_linear_cross_entropy(h, w, y))
    assert fused_linear_cross_entropy(h, w, y, reduction="sum").item() == 0.0


def test_tied_embedding_gradients_add_up():
    def model(seed):
        torch.manual_seed(seed)
        emb = nn.Embedding(50, 8).double()
        head = nn.Linear(8, 50, bias=False).double()
        head.weight = emb.weight
        return emb, head

    x, y = torch.randint(0, 50, (4, 9)), torch.randint(0, 50, (4, 9))
    grads = []
    for fused in (False, True):
        emb, head = model(0)
        hidden = torch.tanh(emb(x))
        if fused:
            loss = fused_linear_cross_entropy(hidden, head.weight, y, chunk_size=5)
        else:
            loss = F.cross_entropy(head(hidden).flatten(0, 1), y.flatten())
        loss.backward()
        grads.append(emb.weight.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)


def test_no_grad_and_leading_dims():
    h, w, _, y = _inputs(n=24)
    ref = F.cross_entropy(F.linear(h, w), y, reduction="sum")
    with torch.no_grad():
        got = fused_linear_cross_entropy(h.view(4, 6, -1), w, y.view(4, 6), reduction="sum", chunk_size=5)
    assert not got.requires_grad
    torch.testing.assert_close(got, ref.detach(), rtol=1e-12, atol=1e-12)


def test_bf16_autocast_tracks_fp32():
    h, w, _, y = _inputs(n=64, d=32, v=300)
    h32, w32 = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused_linear_cross_entropy(h32, w32, y, chunk_size=16)
        ref = F.cross_entropy(F.linear(h32, w32).float(), y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=0)
    gh, gw = torch.autograd.grad(got, (h32, w32))
    assert gh.dtype == gw.dtype == torch.float32
    rh, rw = torch.autograd.grad(ref, (h32, w32))
    assert ((gh - rh).norm() / rh.norm()) < 3e-2 and ((gw - rw).norm() / rw.norm()) < 3e-2


def test_bad_arguments():
    h, w, _, y = _inputs(n=6, ignore=())
    with pytest.raises(ValueError, match="reduction"):
        fused_linear_cross_entropy(h, w, y, reduction="none")
    with pytest.raises(ValueError, match="6 hidden rows but 5 targets"):
        fused_linear_cross_entropy(h, w, y[:5])


def test_huge_losses_stay_exact():
    """A target whose softmax underflows in fp32 (loss ~ 1000) still gets the exact loss."""
    h, w, _, y = _inputs(n=16, d=8, v=50, ignore=())
    h32, w32 = (h.detach() * 40).float(), w.detach().float()
    ref = F.cross_entropy(F.linear(h32, w32), y, reduction="none")
    assert ref.max() > 200  # some rows are far beyond fp32 softmax underflow
    got = fused_linear_cross_entropy(h32, w32, y, reduction="sum", chunk_size=4)
    torch.testing.assert_close(got, ref.sum(), rtol=1e-5, atol=0)


def test_second_backward_is_refused():
    h, w, _, y = _inputs(n=6, ignore=())
    loss = fused_linear_cross_entropy(h, w, y)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward can run only once"):
        loss.backward()


# ---------------------------------------------------------------------------------------------
# pretrain's loss: the fused path on a real GPT, the plain one where the head is not a vocab Linear
# ---------------------------------------------------------------------------------------------
def _gpt(**overrides):
    from lmforge.config import Config
    from lmforge.model import GPT

    config = Config(**{"name": "tiny", "n_layer": 2, "n_embd": 32, "n_head": 2, "intermediate_size": 64,
                       "block_size": 64, "vocab_size": 96, **overrides})
    torch.manual_seed(0)
    model = GPT(config).double()
    model.init_weights()
    return model


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": True}, {"lm_head_bias": True},
                                       {"final_logit_softcap": 3.0}])
def test_lm_loss_equals_cross_entropy_of_the_logits(overrides, monkeypatch):
    from lmforge.training import loss as loss_module
    from lmforge.training.step import lm_loss

    calls = []
    real = loss_module.fused_linear_cross_entropy
    monkeypatch.setattr(loss_module, "fused_linear_cross_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, y = torch.randint(0, 96, (3, 10)), torch.randint(0, 96, (3, 10))
    y[0, :4] = -100
    grads = []
    for fused in (False, True):
        model = _gpt(**overrides)
        if fused:
            loss = lm_loss(model, x, y)
        else:
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
        if fused:
            assert len(calls) == (0 if "final_logit_softcap" in overrides else 1)  # softcap: the plain path
            torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
        ref = loss
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-9, atol=1e-12, msg=k)


def test_lm_loss_with_a_replaced_head_uses_its_output():
    from lmforge.training.step import lm_loss

    model = _gpt()
    model.lm_head = nn.Linear(32, 2).double()  # a classifier head: not over the vocabulary
    x, y = torch.randint(0, 96, (2, 5)), torch.randint(0, 2, (2, 5))
    torch.testing.assert_close(lm_loss(model, x, y, reduction="sum"),
                               F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum"))


@pytest.mark.parametrize("grad_clip", [None, 1e-3, 1e3])  # clipping every step, never, not at all
def test_train_step_matches_a_plain_loop(grad_clip):
    """pretrain's step (fused loss, fused AdamW, clipping) == forward/CE/backward/clip_grad_norm_/AdamW."""
    from lmforge.training.optim import make_adamw
    from lmforge.training.step import next_token_loss, train_step

    g = torch.Generator().manual_seed(3)
    batches = [(torch.randint(0, 96, (2, 8), generator=g), torch.randint(0, 96, (2, 8), generator=g))
               for _ in range(4)]
    ours, ref = _gpt(tie_embeddings=True), _gpt(tie_embeddings=True)
    opt = make_adamw(ours, 1e-2, 0.1, (0.9, 0.95))
    assert opt.defaults["fused"]
    ref_opt = make_adamw(ref, 1e-2, 0.1, (0.9, 0.95), fused=False)
    it = iter(batches)
    for step in range(2):  # 2 steps of 2 accumulated micro-batches
        loss_sum, norm, metrics = train_step(ours, opt, lambda: next(it), next_token_loss, 2, grad_clip)
        assert metrics == {}
        ref_sum = 0.0
        for x, y in batches[2 * step: 2 * step + 2]:
            loss = F.cross_entropy(ref(x).flatten(0, 1), y.flatten())
            (loss / 2).backward()
            ref_sum += loss.detach()
        if grad_clip is not None:
            ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), grad_clip)
            torch.testing.assert_close(norm, ref_norm, rtol=1e-10, atol=0)
        else:
            assert norm is None
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
        torch.testing.assert_close(loss_sum, ref_sum, rtol=1e-10, atol=0)
        assert all(p.grad is None for p in ours.parameters())
    for (k, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=k)


@pytest.mark.parametrize("host_sync", [True, False])  # False: what CUDA runs (no host round trip)
def test_both_logsumexp_strategies_are_exact(host_sync):
    from lmforge.training.loss import _chunked

    h, w, b, y = _inputs(n=40, d=8, v=50, bias=True)
    h32, w32, b32 = (h.detach() * 40).float(), w.detach().float(), b.detach().float()  # some rows underflow
    ref_logits = F.linear(h32.double(), w32.double(), b32.double())
    ref = F.cross_entropy(ref_logits, y, reduction="sum")
    assert F.cross_entropy(ref_logits, y, reduction="none").max() > 200
    loss, (gh, gw, gb) = _chunked(h32, w32, b32, y, -100, 16, "sum", None, grads=True, host_sync=host_sync)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=0)
    hd, wd, bd = (t.double().requires_grad_() for t in (h32, w32, b32))
    refs = torch.autograd.grad(F.cross_entropy(F.linear(hd, wd, bd), y, reduction="sum"), (hd, wd, bd))
    for got, r in zip((gh, gw, gb), refs):
        assert ((got.double() - r).norm() / r.norm()) < 1e-5


@pytest.mark.parametrize("part", ["block", "mlp"])
@pytest.mark.parametrize("lora", [False, True])
def test_lm_loss_with_activation_checkpointing(part, lora):
    """Recomputing blocks or MLPs gives the same gradients, LoRA's dropout included (the recompute
    replays the random state, so it draws the same masks)."""
    from lmforge.lora import LoRASettings, apply_lora
    from lmforge.training.step import checkpoint_blocks, lm_loss

    x, y = torch.randint(0, 96, (2, 12)), torch.randint(0, 96, (2, 12))
    grads = []
    for recompute in (False, True):
        model = _gpt(mlp_class="gated", activation="silu")
        if lora:
            apply_lora(model, LoRASettings(r=2, dropout=0.3, targets="all-linear"))
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(p, std=0.1)
            model.train()
        if recompute:
            checkpoint_blocks(model, part)
        torch.manual_seed(7)
        lm_loss(model, x, y).backward()
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
