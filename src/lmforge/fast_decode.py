"""Batch-1 CPU decoding of every layer in one kernel call, and a leaner prefill.

    from lmforge.fast_decode import install_fast_decode
    install_fast_decode(model)   # done for you by `lmforge.inference.prepare_for_inference` (LLM.load)

A decoding step of a 30-layer model is ~400 small operations. Issued one by one from Python they
cost about as much time as reading the weights, which is all a batch-1 step fundamentally has to
do. `DecodePlan` hands the whole layer stack for one token of one sequence to
`lmforge.cpu_kernels` (`lmf_decode_step`): norms, q/k/v, rotary, the KV-cache write, attention,
output projection and MLP, with the matrix-vector products on the kernels' own thread pool. The
embedding before and the final norm and head after stay in `GPT.forward`.

The plan is an optimisation only: `GPT.forward` calls `model.runner.decode` (a `FastDecoder`) for a
(1, 1) input with a KV cache when gradients are off, and takes its ordinary layer loop whenever it
returns None. The arithmetic is the same fp32 arithmetic in a different summation order, so logits agree
with the layer loop to ~1e-6 relative (fp32 weights), not bitwise.

Many tokens at once (a prefill, or scoring a text without a cache) with gradients off go through
`FastDecoder.prefill` → `layer_stack`: the same layers, but with the activations in reused
`Workspace` buffers (no page faults from fresh large allocations), the output and down projections
adding into the residual inside the GEMM, and attention in `lmf_attention`. A 512-token
SmolLM2-135M prefill takes ~0.8x the layer loop's time (see benchmarks/README.md).

Supported blocks (the common ones; others simply keep the layer loop): pre-norm RMSNorm or
LayerNorm, rotary (full or partial) or learned positions, optional per-head q/k RMSNorm, multi-,
grouped- or single-query attention, gated or plain MLP, sequential or parallel residual, biases;
weights as plain fp32 `nn.Linear` or as `lmforge.quantize.QuantizedLinear` (int8, bf16, fp32).
Not covered: Gemma's post-norms and soft-capping, MoE, OLMo-2's full-width q/k norm, a sliding
window once the sequence is longer than it.
"""

from __future__ import annotations

import ctypes
import operator
import threading
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge import cpu_kernels, gemm
from lmforge.quantize import QuantizedLinear

# Up to this many tokens per step the kernel's weight-streaming products win (each weight read
# once for all rows); above, the work is compute-bound and MKL's GEMM in the layer loop is faster.
MAX_ROWS = 16
# the kernel's structs and enums, as lmf_cpu.h defines them (the one definition; see cpu_kernels)
_C = cpu_kernels.header()
_Lin, _Layer, _Model = _C.structs["lmf_lin"], _C.structs["lmf_layer"], _C.structs["lmf_model"]
_MODES, _ACTIVATIONS, _NORMS = _C.enums["mode"], _C.enums["act"], _C.enums["norm"]


def _linear_mode(m: nn.Module) -> str | None:
    """The kernel mode of a projection, or None if the kernel cannot run it."""
    if isinstance(m, QuantizedLinear):  # FusedLinear included
        return m.mode
    if isinstance(m, nn.Linear) and m.weight.dtype == torch.float32 and m.weight.is_contiguous() and (
            m.bias is None or m.bias.dtype == torch.float32):
        return "fp32"
    return None


def _fused(fusion: dict, owner: nn.Module, *members: nn.Module):
    """The fused product of `owner`'s `members` (lmforge.quantize.fuse_projections), if still valid."""
    fused = fusion.get(owner)
    return fused if fused is not None and fused.covers(*members) else None


def unsupported(model: nn.Module) -> str | None:
    """Why `model` cannot use the one-call decoder, or None when it can."""
    cfg = getattr(model, "config", None)
    if cfg is None or not isinstance(getattr(model, "layers", None), nn.ModuleList):
        return "not an lmforge GPT"
    if not cfg.pre_norm or cfg.post_norm or cfg.norm_unit_offset:
        return "norm placement"
    if cfg.mlp_class == "moe" or cfg.qk_norm not in (None, "head") or cfg.attn_logit_softcap is not None:
        return "block type"
    if cfg.position_embedding == "rope" and cfg.rope_n_elem > 512:
        return "rotary size"
    for block in model.layers:
        attn, mlp = block.self_attn, block.mlp
        linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.up_proj, mlp.down_proj]
        linears += [mlp.gate_proj] if mlp.gated else []
        if any(_linear_mode(m) is None for m in linears):
            return "projection type or dtype"
        if any(m.in_features % 16 for m in linears):
            return "sizes not a multiple of 16"
        if any(t.device.type != "cpu" for t in block.parameters()):
            return "device"
        norms = [m for m in block.modules() if m is not block and m not in linears
                 and isinstance(getattr(m, "weight", None), torch.Tensor)]
        if any(n.weight.dtype != torch.float32 or (getattr(n, "bias", None) is not None and n.bias.dtype != torch.float32)
               for n in norms):
            return "norm dtype"
    return None


class DecodePlan:
    """The pointers `lmf_decode_step` needs for one model, and the checks that keep them valid.

    It holds raw pointers to the model's tensors, so every call first checks that the modules and
    tensors it was built from are still the model's (a swapped module, e.g. a LoRA wrapper, a
    re-assigned parameter, or a move to another device or dtype makes it step aside). Weights
    updated in place are seen as they are.
    """

    def __init__(self, model: nn.Module, lib, fusion: dict | None = None) -> None:
        cfg = model.config
        fusion = fusion or {}
        self._lib = lib
        self._checks: list[tuple[dict, str, object]] = []  # (owner dict, key, object expected there)
        self._ptrs: list[tuple[torch.Tensor, int]] = []  # tensors the kernel reads, with their pointers
        self._expected = None

        def ptr(t: torch.Tensor | None) -> int | None:
            if t is None:
                return None
            self._ptrs.append((t, t.data_ptr()))
            return t.data_ptr()

        def watch(owner: nn.Module, *names: str) -> None:
            for n in names:
                where = next((d for d in (owner._modules, owner._parameters, owner.__dict__) if n in d), owner._modules)
                self._checks.append((where, n, where.get(n)))

        def lin(m: nn.Module | None) -> _Lin:
            if m is None:
                return _Lin(None, None, None, 0, 0, 0)
            watch(m, "weight", "bias")
            return _Lin(ptr(m.weight), ptr(getattr(m, "scale", None)), ptr(m.bias), m.out_features, m.in_features,
                        _MODES[_linear_mode(m)])

        def norm(m: nn.Module | None) -> tuple[int | None, int | None]:
            if m is None:
                return None, None
            watch(m, "weight", "bias")
            return ptr(m.weight), ptr(getattr(m, "bias", None))

        watch(model, "layers", "norm", "lm_head")
        layers = []
        for i, block in enumerate(model.layers):
            attn, mlp = block.self_attn, block.mlp
            watch(model.layers, str(i))
            watch(block, "self_attn", "mlp", "attn_norm", "mlp_norm")
            watch(attn, "q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")
            watch(mlp, "gate_proj", "up_proj", "down_proj")
            qkv = _fused(fusion, attn, attn.q_proj, attn.k_proj, attn.v_proj)
            if qkv is not None:  # one product for the three (their weights are views into it)
                for member in (attn.q_proj, attn.k_proj, attn.v_proj):
                    watch(member, "weight")
                    ptr(member.weight)
                q, k, v = lin(qkv), lin(None), lin(None)
            else:
                q, k, v = lin(attn.q_proj), lin(attn.k_proj), lin(attn.v_proj)
            gate_up = _fused(fusion, mlp, mlp.gate_proj, mlp.up_proj) if mlp.gated else None
            if gate_up is not None:
                for member in (mlp.gate_proj, mlp.up_proj):
                    watch(member, "weight")
                    ptr(member.weight)
                gate, up = lin(gate_up), lin(None)
            else:
                gate, up = lin(mlp.gate_proj if mlp.gated else None), lin(mlp.up_proj)
            n1, n2 = norm(block.attn_norm), norm(getattr(block, "mlp_norm", None))
            qn, kn = norm(getattr(attn, "q_norm", None))[0], norm(getattr(attn, "k_norm", None))[0]
            layers.append(_Layer(q, k, v, lin(attn.o_proj), gate, up, lin(mlp.down_proj),
                                 n1[0], n1[1], n2[0], n2[1], qn, kn))
        self._layers = (_Layer * len(layers))(*layers)
        nf = norm(model.norm)
        # the head runs in the kernel too when it is a plain linear map (a classifier head is one)
        head = model.lm_head
        self.has_head = cfg.final_logit_softcap is None and _linear_mode(head) is not None and head.in_features % 16 == 0
        self._vocab = head.out_features if self.has_head else 0
        self._struct = _Model(
            cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_query_groups, cfg.head_size, cfg.intermediate_size,
            cfg.rope_n_elem if cfg.position_embedding == "rope" else 0,
            _NORMS[cfg.norm_class], _ACTIVATIONS[cfg.activation], int(cfg.mlp_class == "gated"),
            int(cfg.parallel_residual), int(cfg.parallel_residual and cfg.shared_attention_norm),
            cfg.norm_eps, model.layers[0].self_attn.scale, ctypes.addressof(self._layers), nf[0], nf[1],
            lin(head) if self.has_head else lin(None))
        self._model_ptr = ctypes.addressof(self._struct)
        slides = any(cfg.layer_uses_sliding_window(i) for i in range(cfg.n_layer))
        self._window = cfg.sliding_window if slides else None
        self._d = cfg.n_embd

    def valid(self) -> bool:
        """The modules and tensors the plan points at are still the model's, where they were."""
        if self._expected is None:  # frozen on first use: lists compare in C, ~10x faster than a loop
            self._pairs = [(d, k) for d, k, _ in self._checks]
            self._expected = [o for _, _, o in self._checks]
            self._tensors = [t for t, _ in self._ptrs]
            self._addresses = [p for _, p in self._ptrs]
        return (all(map(operator.is_, [d.get(k) for d, k in self._pairs], self._expected))
                and [t.data_ptr() for t in self._tensors] == self._addresses)

    def step(self, x: torch.Tensor, pos: torch.Tensor, cache, rows: torch.Tensor | None,
             cos: torch.Tensor | None, sin: torch.Tensor | None,
             logits: bool = True) -> tuple[torch.Tensor, bool] | None:
        """Run B tokens, one per sequence (x: (B, 1, d) fp32 embeddings), through every layer.

        Returns (the head's output (B, 1, V), True) when `logits` and the plan has the head, else
        (the final-normed hidden states (B, 1, d), False); None to fall back to the layer loop.
        pos: (B, 1) positions; rows: the cache rows of the B tokens (default 0..B-1); cos/sin:
        their rotary factors as `GPT._rope` gives them (sin with its first half negated).
        """
        B = x.size(0)
        if x.dtype != torch.float32 or x.device.type != "cpu" or B > MAX_ROWS:
            return None
        k0 = cache.k[0]
        pos = pos.reshape(B).to(torch.int64).contiguous()
        row_ids = (torch.arange(B) if rows is None else rows.reshape(B).to(torch.int64)).contiguous()
        last = int(pos.max())
        if (last >= k0.size(2) or int(pos.min()) < 0 or (self._window is not None and last >= self._window)
                or int(row_ids.min()) < 0 or int(row_ids.max()) >= k0.size(0)):
            return None
        ptrs = cache.__dict__.get("_decode_ptrs")  # built once per cache object
        if ptrs is None or ptrs[2] != tuple(t.data_ptr() for t in (*cache.k, *cache.v)):
            if not all(t.is_contiguous() and t.dtype == torch.float32 and t.device.type == "cpu"
                       for t in (*cache.k, *cache.v)):
                return None
            kp = torch.tensor([t.data_ptr() for t in cache.k], dtype=torch.int64)
            vp = torch.tensor([t.data_ptr() for t in cache.v], dtype=torch.int64)
            ptrs = cache.__dict__["_decode_ptrs"] = (kp, vp, tuple(t.data_ptr() for t in (*cache.k, *cache.v)))
        h = x.reshape(B, self._d).clone()  # the kernel's residual stream
        head = logits and self.has_head
        out = torch.empty(B, 1, self._vocab if head else self._d)
        if cos is not None:
            cos, sin = cos.reshape(B, -1).contiguous(), sin.reshape(B, -1).contiguous()
        rc = self._lib.lmf_decode_step(
            self._model_ptr, h.data_ptr(), out.data_ptr(), int(head), B, ptrs[0].data_ptr(), ptrs[1].data_ptr(),
            k0.size(2), row_ids.data_ptr(), pos.data_ptr(), None if cos is None else cos.data_ptr(),
            None if sin is None else sin.data_ptr(), torch.get_num_threads())
        return (out, head) if rc == 0 else None


class FastDecoder:
    """The CPU inference runner `install_fast_decode` puts at `model.runner`: the model's
    `DecodePlan` kept current, and `layer_stack` for many tokens.

    `GPT.forward` calls `decode` (one token per sequence) and `prefill` (more) with the model itself;
    each returns None to send the forward through the plain layer loop. The plan is rebuilt when the
    model's modules or tensors have changed since (a swapped projection, a LoRA merge,
    `load_state_dict(assign=True)`); once the model no longer fits the kernel the runner steps aside
    for good (`install_fast_decode` tries again). `fusion` holds the fused q/k/v and gate/up products
    of a quantized model (`lmforge.quantize.fuse_projections`). A deep copy of the model gets a fresh
    runner that builds its own plan for the copy.
    """

    def __init__(self, fusion: dict | None = None) -> None:
        self.fusion = fusion or {}
        self._plan: DecodePlan | None = None
        self._model = None  # weakref to the model the plan was built for
        self._gave_up = None  # weakref to a model found unsupported
        self._local = threading.local()  # each thread its own prefill `Workspace`

    def prepare(self, model: nn.Module) -> bool:
        """Build the plan for `model` now; False when the model or machine cannot use the kernel."""
        self._plan, self._model = None, None
        lib = cpu_kernels.load()
        if lib is None or unsupported(model) is not None:
            self._gave_up = weakref.ref(model)
            return False
        self._plan, self._model, self._gave_up = DecodePlan(model, lib, self.fusion), weakref.ref(model), None
        return True

    @property
    def plan(self) -> DecodePlan | None:
        return self._plan

    def decode(self, model: nn.Module, x: torch.Tensor, pos: torch.Tensor, cache, rows: torch.Tensor | None,
               cos: torch.Tensor | None, sin: torch.Tensor | None,
               logits: bool = True) -> tuple[torch.Tensor, bool] | None:
        """`DecodePlan.step` for `model`, with the plan (re)built as needed; None: use the layer loop."""
        plan = self._plan_for(model)
        return None if plan is None else plan.step(x, pos, cache, rows, cos, sin, logits)

    def _plan_for(self, model: nn.Module) -> DecodePlan | None:
        """The plan for `model`, (re)built if the model changed; None once the model is unsupported."""
        plan = self._plan
        if plan is None or self._model() is not model or not plan.valid():
            if (self._gave_up is not None and self._gave_up() is model) or not self.prepare(model):
                return None
            plan = self._plan
        return plan

    def prefill(self, model: nn.Module, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                ctx, keep: int = 0) -> torch.Tensor | None:
        """`layer_stack` for `model` with this decoder's buffers; None: use the layer loop."""
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.size(0) * x.size(1) < 2:
            return None
        plan = self._plan_for(model)
        if plan is None:
            return None
        workspace = getattr(self._local, "workspace", None)
        if workspace is None:
            workspace = self._local.workspace = Workspace()
        hidden = layer_stack(model, x, cos, sin, ctx, keep, workspace, plan._lib, self.fusion)
        workspace.trim(WORKSPACE_KEEP_BYTES)
        return hidden

    def __deepcopy__(self, memo) -> FastDecoder:
        import copy

        # raw pointers must not be copied: the copy builds its own plan; the fused products are
        # copied with the model (memo maps the owners and the weight views onto the copy's)
        return FastDecoder(copy.deepcopy(self.fusion, memo))

    def __reduce__(self):
        return FastDecoder, ()


# ---------------------------------------------------------------------------------------------
# many tokens at once (prefill, scoring): the layer loop without per-op allocations
# ---------------------------------------------------------------------------------------------
# A model keeps its prefill buffers between calls up to this size (a 512-token SmolLM2-135M
# prompt needs ~11 MB, 4,096 tokens ~90 MB); larger ones are freed after the call, as the layer
# loop's would be.
WORKSPACE_KEEP_BYTES = 256 << 20

class Workspace:
    """Activation buffers reused from one forward to the next, grown to the largest seen (see `trim`).

    A 512-token prefill of a 30-layer model otherwise allocates ~25 MB per layer; those large
    blocks come fresh from the kernel (glibc maps them), and the page faults cost ~10% of the
    prefill. The buffers are ordinary tensors, made outside inference mode, so the same workspace
    serves `torch.inference_mode` and `torch.no_grad` callers.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def trim(self, max_bytes: int) -> None:
        """Free every buffer if together they hold more than `max_bytes` (after a very long input)."""
        if self.nbytes > max_bytes:
            self._buffers.clear()

    def get(self, name: str, rows: int, cols: int) -> torch.Tensor:
        n = rows * cols
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n:
            with torch.inference_mode(False):
                buf = self._buffers[name] = torch.empty(n)
        return buf[:n].view(rows, cols)


def _project(m: nn.Module, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """m(h) for 2-D h, written into `out` when `m` holds fp32 weights."""
    if _linear_mode(m) != "fp32":  # int8/bf16 weights: the module's own forward
        return m(h)
    if gemm.takes(h, m.weight):  # a new tensor, ~2x MKL on AMD AVX-512
        return gemm.linear(h, m.weight, m.bias)
    if m.bias is None:
        return torch.mm(h, m.weight.t(), out=out)
    return torch.addmm(m.bias, h, m.weight.t(), out=out)


def _project_add(m: nn.Module, h: torch.Tensor, residual: torch.Tensor) -> None:
    """residual += m(h), in one GEMM (beta = 1) when `m` holds fp32 weights."""
    if _linear_mode(m) != "fp32":
        residual.add_(m(h))
        return
    if gemm.takes(h, m.weight):
        residual.add_(gemm.linear(h, m.weight))
    else:
        residual.addmm_(h, m.weight.t())
    if m.bias is not None:
        residual.add_(m.bias)


_ACT_INPLACE = {
    "silu": lambda t: F.silu(t, inplace=True),
    "gelu": lambda t: torch._C._nn.gelu_(t),
    "gelu_tanh": lambda t: torch._C._nn.gelu_(t, approximate="tanh"),
    "relu": lambda t: F.relu(t, inplace=True),
}


def _attention(lib, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, window: int,
               scale: float, workspace: Workspace) -> torch.Tensor:
    """Causal (and windowed) attention by position with `lmf_attention`: (B*T, nh*hs), a workspace view.

    q (B, nh, T, hs); k, v (B, ng, S, hs), any strides with the last one 1; query (b, t) sees the
    keys j <= pos[b, t] (and > pos - window): what `GPT._context`'s masks say, without building them.
    """
    B, nh, T, hs = q.shape
    ng, S = k.size(1), k.size(2)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    pos = pos.to(torch.int64).contiguous()
    y = workspace.get("attention", B * T, nh * hs)
    kt = workspace.get("keys_t", B * ng, (S + 15) // 16 * 16 * hs)
    lib.lmf_attention(q.data_ptr(), q.stride(0), q.stride(1), q.stride(2),
                      k.data_ptr(), k.stride(0), k.stride(1), k.stride(2),
                      v.data_ptr(), v.stride(0), v.stride(1), v.stride(2),
                      y.data_ptr(), T * nh * hs, nh * hs, hs, kt.data_ptr(), pos.data_ptr(),
                      B, T, nh, ng, hs, S, window, scale, torch.get_num_threads())
    return y


def layer_stack(model: nn.Module, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                ctx, keep: int, workspace: Workspace, lib=None, fusion: dict | None = None) -> torch.Tensor:
    """Every layer and the final norm for x (B, T, d), as `GPT.forward`'s layer loop computes them.

    For a model `unsupported` accepts, with gradients off. The same operations as the blocks'
    `forward`s, except that the projections write into reused buffers and the output and down
    projections add into the residual stream inside the GEMM (beta = 1), so results agree with the
    layer loop to fp32 rounding, not bitwise. Returns the final-normed hidden states of the last
    `keep` positions (all when 0), a new tensor. With `lib` (`cpu_kernels.load()`), attention runs
    in `lmf_attention` (1.7–2x SDPA's CPU flash kernel at 512 tokens). `fusion`: fused q/k/v and
    gate/up products to use (`lmforge.quantize.fuse_projections`).
    """
    cfg = model.config
    fusion = fusion or {}
    B, T, d = x.shape
    n = B * T
    hs, nh, ng = cfg.head_size, cfg.n_head, cfg.n_query_groups
    act = _ACT_INPLACE[cfg.activation]
    resid = workspace.get("residual", n, d)
    resid.copy_(x.reshape(n, d))
    for block in model.layers:
        attn, mlp = block.self_attn, block.mlp
        h = block.attn_norm(resid)
        h_mlp = None
        if cfg.parallel_residual:
            h_mlp = h if cfg.shared_attention_norm else block.mlp_norm(resid)
        fused = _fused(fusion, attn, attn.q_proj, attn.k_proj, attn.v_proj)
        if fused is not None:
            q, k, v = _project(fused, h, workspace.get("qkv", n, fused.out_features)).split(fused.sizes, dim=-1)
        else:
            q = _project(attn.q_proj, h, workspace.get("q", n, nh * hs))
            k = _project(attn.k_proj, h, workspace.get("k", n, ng * hs))
            v = _project(attn.v_proj, h, workspace.get("v", n, ng * hs))
        q, k, v = attn.heads(q.view(B, T, -1), k.view(B, T, -1), v.view(B, T, -1), cos, sin, ctx)
        if lib is not None and hs % 8 == 0:
            y = _attention(lib, q, k, v, ctx.pos, cfg.sliding_window if attn.sliding else 0, attn.scale, workspace)
        else:
            mask = ctx.sliding_mask if attn.sliding and ctx.sliding_mask is not None else ctx.mask
            y = attn._attend(q, k, v, mask, ctx.causal).transpose(1, 2).reshape(n, nh * hs)
        _project_add(attn.o_proj, y, resid)
        if h_mlp is None:
            h_mlp = block.mlp_norm(resid)
        if mlp.gated:
            fused = _fused(fusion, mlp, mlp.gate_proj, mlp.up_proj)
            if fused is not None:
                gate, up = _project(fused, h_mlp, workspace.get("gate_up", n, fused.out_features)).split(
                    fused.sizes, dim=-1)
                gate = act(gate.contiguous())  # a copy: the activation runs in place
            else:
                gate = act(_project(mlp.gate_proj, h_mlp, workspace.get("gate", n, cfg.intermediate_size)))
                up = _project(mlp.up_proj, h_mlp, workspace.get("up", n, cfg.intermediate_size))
            a = gate.mul_(up)
        else:
            a = act(_project(mlp.up_proj, h_mlp, workspace.get("up", n, cfg.intermediate_size)))
        _project_add(mlp.down_proj, a, resid)
    out = resid.view(B, T, d)
    if keep:
        out = out[:, -keep:]
    return model.norm(out)


def install_fast_decode(model: nn.Module, fusion: dict | None = None) -> bool:
    """Set `model.runner` to a `FastDecoder` where kernels and model allow it, else to None.

    `lmforge.inference.prepare_for_inference` calls it; safe to call on any model, any number of
    times. Returns True if the model can use it now. `LMFORGE_NO_KERNELS=1` turns the kernels, and
    with them this path, off; `model.runner = None` keeps one model on its layer loop.
    """
    decoder = FastDecoder(fusion)
    ok = decoder.prepare(model)
    model.runner = decoder if ok else None
    return ok
