"""lmforge.gemm: the oneDNN product equals F.linear (values and gradients) on any shape and stride it takes."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge import gemm

onednn = pytest.mark.skipif(gemm._onednn_op() is None, reason="this PyTorch build has no oneDNN")


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setattr(gemm, "_choice", "onednn")


@onednn
@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 200), k=st.integers(1, 150), n=st.integers(1, 150), bias=st.booleans(),
       lead=st.sampled_from([(), (2,), (3, 1)]), transposed=st.booleans(),
       grads=st.sampled_from(["all", "x", "weight"]), seed=st.integers(0, 2**16))
def test_linear_matches_f_linear(rows, k, n, bias, lead, transposed, grads, seed):
    gemm._choice = "onednn"
    try:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(*lead, rows, k, generator=g)
        w = torch.randn(k, n, generator=g).t() if transposed else torch.randn(n, k, generator=g)  # any strides
        b = torch.randn(n, generator=g) if bias else None
        leaves = [x.requires_grad_(grads in ("all", "x")), w.requires_grad_(grads in ("all", "weight"))]
        if b is not None:
            leaves.append(b.requires_grad_(grads == "all"))
        ref = F.linear(x, w, b)
        # the oneDNN function itself on every shape (tiny ones too), and the dispatcher in front of it
        ours = gemm._Linear.apply(x.reshape(-1, k), w, b).view(ref.shape)
        torch.testing.assert_close(gemm.linear(x, w, b), ref, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
        gy = torch.randn(ref.shape, generator=g)
        want = [t for t in leaves if t.requires_grad]
        got = torch.autograd.grad(ours, want, gy)
        exp = torch.autograd.grad(ref, want, gy)
        for a, e in zip(got, exp):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-4)
    finally:
        gemm._choice = None


@onednn
def test_eligible_shapes_take_onednn_and_others_do_not(forced, monkeypatch):
    calls = []
    real = gemm._Linear.apply
    monkeypatch.setattr(gemm._Linear, "apply", lambda *a: calls.append(a[0].shape) or real(*a))
    w = torch.randn(64, 64)
    gemm.linear(torch.randn(4, 16, 64), w)  # 64 rows: oneDNN
    gemm.linear(torch.randn(3, 64), w)  # 3 rows (a decoding step): F.linear
    gemm.linear(torch.randn(64, 64).bfloat16(), w.bfloat16())  # not fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gemm.linear(torch.randn(64, 64), w)  # autocast decides the dtype: F.linear
    assert calls == [torch.Size([64, 64])]


def test_forced_choice_and_calibration(monkeypatch):
    monkeypatch.setattr(gemm, "_choice", None)
    monkeypatch.setenv("LMFORGE_GEMM", "torch")
    assert gemm.backend() == "torch"
    monkeypatch.setattr(gemm, "_choice", None)
    monkeypatch.setenv("LMFORGE_GEMM", "auto")
    assert gemm.backend() in ("torch", "onednn")  # measured on this CPU
    # whatever is chosen, a model's products agree with F.linear
    x, w = torch.randn(128, 96), torch.randn(80, 96)
    torch.testing.assert_close(gemm.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gemm.mm_nt(x, w), x @ w.t(), rtol=1e-5, atol=1e-4)
