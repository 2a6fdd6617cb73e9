"""One decoder-only transformer for every supported family.

Behaviour is set by `Config` fields; nothing here branches on a model name.
Parameter leaf names follow HF (`embed_tokens`, `q_proj`, `gate_proj`, `lm_head` …), so
checkpoint conversion is a prefix map and LoRA targets read naturally.

Shape legend: B batch, T new tokens, S cached keys, nh query heads, ng kv heads, hs head size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.config import Config
from lmforge.gemm import linear as _linear


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
class Linear(nn.Linear):
    """`nn.Linear` whose fp32 CPU products run on the faster BLAS back-end (`lmforge.gemm`); same maths."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    """RMS normalisation computed in fp32 (as HF does); `unit_offset` applies `1 + weight` (Gemma)."""

    def __init__(self, size: int, eps: float = 1e-6, unit_offset: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size) if unit_offset else torch.ones(size))
        self.eps = eps
        self.unit_offset = unit_offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.unit_offset and x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # one fused op instead of seven (the same fp32 arithmetic): matters when decoding
            return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (h * (1.0 + self.weight.float())).to(dtype)
        return self.weight * h.to(dtype)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight) if self.unit_offset else nn.init.ones_(self.weight)


def make_norm(config: Config, size: int | None = None) -> nn.Module:
    size = size or config.n_embd
    if config.norm_class == "rmsnorm":
        return RMSNorm(size, config.norm_eps, config.norm_unit_offset)
    return nn.LayerNorm(size, eps=config.norm_eps, bias=config.norm_bias)


def activation_fn(name: str):
    if name == "silu":
        return F.silu
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"unknown activation {name!r}")


def rope_inv_freq(config: Config) -> torch.Tensor:
    """Inverse rotary frequencies, with HF-compatible `linear` and `llama3` scaling."""
    n = config.rope_n_elem
    inv_freq = 1.0 / (config.rope_base ** (torch.arange(0, n, 2, dtype=torch.int64).float() / n))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_ctx = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    raise ValueError(f"rope scaling type {kind!r} is not supported (supported: default, linear, llama3)")


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first `cos.size(-1)` dims of each head, HF `rotate_half` layout.

    x: (B, nh, T, hs); cos/sin: (B, 1, T, n_rot).
    """
    n_rot = cos.size(-1)
    if n_rot < x.size(-1):
        return torch.cat((apply_rope(x[..., :n_rot], cos, sin), x[..., n_rot:]), dim=-1)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def apply_rope_signed(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """`apply_rope` in three ops: `sin_signed` is sin with its first half negated (see `GPT._rope`).

    rotate_half(x) * sin == roll(x, n/2) * sin_signed, exactly (a negation is exact).
    """
    n_rot = cos.size(-1)
    if n_rot < x.size(-1):
        return torch.cat((apply_rope_signed(x[..., :n_rot], cos, sin_signed), x[..., n_rot:]), dim=-1)
    return torch.addcmul(x * cos, torch.roll(x, n_rot // 2, dims=-1), sin_signed)


# ---------------------------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------------------------
@dataclass
class KVCache:
    """Pre-allocated keys/values for every layer: (B, ng, S_max, hs) each.

    Each batch row keeps its own positions, so rows of different lengths share one cache
    (batched generation, continuous batching in the server) without left padding.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @property
    def batch_size(self) -> int:
        return self.k[0].size(0)

    @property
    def max_seq_length(self) -> int:
        return self.k[0].size(2)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
              rows: torch.Tensor | None, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new k/v (B, ng, T, hs) at positions `pos` (B, T) and return the first `kv_len` slots."""
        kc, vc = self.k[layer], self.v[layer]
        B, T = pos.shape
        if rows is None and (B == 1 or bool((pos == pos[:1]).all())):
            # every row writes the same positions: one contiguous index_copy_ (fast path)
            kc.index_copy_(2, pos[0], k.to(kc.dtype))
            vc.index_copy_(2, pos[0], v.to(vc.dtype))
            return kc[:, :, :kv_len], vc[:, :, :kv_len]
        r = torch.arange(B, device=pos.device) if rows is None else rows
        bi = r[:, None].expand(B, T)
        # advanced indexing puts the (B, T) index dims first: (B, T, ng, hs)
        kc[bi, :, pos] = k.transpose(1, 2).to(kc.dtype)
        vc[bi, :, pos] = v.transpose(1, 2).to(vc.dtype)
        if rows is None:
            return kc[:, :, :kv_len], vc[:, :, :kv_len]
        return kc[r, :, :kv_len], vc[r, :, :kv_len]


# ---------------------------------------------------------------------------------------------
# attention, MLP, block
# ---------------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, config: Config, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        hs, nh, ng, d = config.head_size, config.n_head, config.n_query_groups, config.n_embd
        self.q_proj = Linear(d, nh * hs, bias=config.attn_bias)
        self.k_proj = Linear(d, ng * hs, bias=config.attn_bias)
        self.v_proj = Linear(d, ng * hs, bias=config.attn_bias)
        self.o_proj = Linear(nh * hs, d, bias=config.attn_out_bias)
        if config.qk_norm == "head":
            self.q_norm = RMSNorm(hs, config.norm_eps)
            self.k_norm = RMSNorm(hs, config.norm_eps)
        elif config.qk_norm == "full":
            self.q_norm = RMSNorm(nh * hs, config.norm_eps)
            self.k_norm = RMSNorm(ng * hs, config.norm_eps)
        self.sliding = config.layer_uses_sliding_window(layer_idx)
        self.scale = (config.attn_scale_base or hs) ** -0.5

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: _Context) -> torch.Tensor:
        cfg = self.config
        B, T, _ = x.shape
        q, k, v = self.heads(self.q_proj(x), self.k_proj(x), self.v_proj(x), cos, sin, ctx)
        mask = ctx.sliding_mask if self.sliding and ctx.sliding_mask is not None else ctx.mask
        y = self._attend(q, k, v, mask, ctx.causal)
        y = y.transpose(1, 2).reshape(B, T, cfg.n_head * cfg.head_size)
        return self.o_proj(y)

    def heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor | None,
              sin: torch.Tensor | None, ctx: _Context) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projections (B, T, ·) → q (B, nh, T, hs) normed and rotated; k, v (B, ng, S, hs) with the
        new keys/values stored in the cache (S: the cached length) or, without one, the new ones."""
        cfg = self.config
        B, T, _ = q.shape
        hs, nh, ng = cfg.head_size, cfg.n_head, cfg.n_query_groups
        if cfg.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, ng, hs).transpose(1, 2)  # (B, ng, T, hs)
        v = v.view(B, T, ng, hs).transpose(1, 2)
        if cfg.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        if cos is not None:
            q, k = apply_rope_signed(q, cos, sin), apply_rope_signed(k, cos, sin)
        if ctx.cache is not None:
            k, v = ctx.cache.write(self.layer_idx, k, v, ctx.pos, ctx.rows, ctx.kv_len)
        return q, k, v

    def _attend(self, q, k, v, mask, causal: bool) -> torch.Tensor:
        cfg = self.config
        if cfg.attn_logit_softcap is None:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=self.scale,
                enable_gqa=cfg.q_per_kv > 1,
            )
        # soft-capped scores need the explicit path (Gemma 2)
        if cfg.q_per_kv > 1:
            k = k.repeat_interleave(cfg.q_per_kv, dim=1)
            v = v.repeat_interleave(cfg.q_per_kv, dim=1)
        scores = (q @ k.transpose(-2, -1)) * self.scale
        cap = cfg.attn_logit_softcap
        scores = torch.tanh(scores / cap) * cap
        if mask is None and causal:
            T, S = q.size(-2), k.size(-2)
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return probs @ v


class _GatedActivation(torch.autograd.Function):
    """`act(gate) * up`, keeping only gate and up for the backward (which recomputes act(gate)).

    Autograd would also keep act(gate), a third (B, T, intermediate) tensor per block, the widest
    kind in a training step. Same values forward and backward as the plain expression.
    """

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor, act) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        ctx.act = act
        return act(gate).mul_(up)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple:
        gate, up = ctx.saved_tensors
        with torch.enable_grad():
            gate = gate.detach().requires_grad_()
            a = ctx.act(gate)
        (grad_gate,) = torch.autograd.grad(a, gate, g * up)
        return grad_gate, g * a.detach(), None


class MLP(nn.Module):
    """`mlp`: down(act(up(x))); `gated`: down(act(gate(x)) * up(x))."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        d, inter, bias = config.n_embd, config.intermediate_size, config.mlp_bias
        self.gated = config.mlp_class != "mlp"
        if self.gated:
            self.gate_proj = Linear(d, inter, bias=bias)
        self.up_proj = Linear(d, inter, bias=bias)
        self.down_proj = Linear(inter, d, bias=bias)
        self.act = activation_fn(config.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down_proj(_GatedActivation.apply(self.gate_proj(x), self.up_proj(x), self.act))
        return self.down_proj(self.act(self.up_proj(x)))


class MoE(nn.Module):
    """Sparse mixture of gated experts, Mixtral routing: softmax → top-k → renormalise."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.router = Linear(config.n_embd, config.n_expert, bias=False)
        self.experts = nn.ModuleList(MLP(config) for _ in range(config.n_expert))
        self.top_k = config.n_expert_per_token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        x = x.reshape(-1, d)  # (N, d)
        probs = torch.softmax(self.router(x), dim=-1, dtype=torch.float32)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (N, k)
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)
            if token.numel():
                out.index_add_(0, token, expert(x[token]) * weights[token, slot, None])
        return out.view(B, T, d)


class Block(nn.Module):
    def __init__(self, config: Config, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MoE(config) if config.mlp_class == "moe" else MLP(config)
        if config.pre_norm:
            self.attn_norm = make_norm(config)
            if not (config.parallel_residual and config.shared_attention_norm):
                self.mlp_norm = make_norm(config)
        if config.post_norm:
            self.post_attn_norm = make_norm(config)
            self.post_mlp_norm = make_norm(config)

    def forward(self, x: torch.Tensor, cos, sin, ctx: _Context) -> torch.Tensor:
        cfg = self.config
        if cfg.parallel_residual:
            h_attn = self.attn_norm(x) if cfg.pre_norm else x
            h_mlp = h_attn if cfg.shared_attention_norm else (self.mlp_norm(x) if cfg.pre_norm else x)
            return x + self.self_attn(h_attn, cos, sin, ctx) + self.mlp(h_mlp)
        h = self.self_attn(self.attn_norm(x) if cfg.pre_norm else x, cos, sin, ctx)
        if cfg.post_norm:
            h = self.post_attn_norm(h)
        x = x + h
        h = self.mlp(self.mlp_norm(x) if cfg.pre_norm else x)
        if cfg.post_norm:
            h = self.post_mlp_norm(h)
        return x + h


def segment_positions(segments: torch.Tensor) -> torch.Tensor:
    """(B, T) positions that restart at 0 wherever the document id in `segments` changes."""
    B, T = segments.shape
    i = torch.arange(T, device=segments.device).expand(B, T)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    first = torch.where(starts, i, torch.zeros_like(i)).cummax(dim=1).values
    return i - first


@dataclass
class _Context:
    """Per-forward state shared by every layer (positions, masks, cache)."""

    pos: torch.Tensor  # (B, T) absolute positions of the new tokens
    cache: KVCache | None
    rows: torch.Tensor | None
    kv_len: int
    mask: torch.Tensor | None  # (B, 1, T, S) bool, True = attend; None = plain causal / full
    sliding_mask: torch.Tensor | None
    causal: bool


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
class GPT(nn.Module):
    """Decoder-only transformer configured by a `Config`.

    `lm_head` is a plain attribute: replace it (e.g. with `nn.Linear(n_embd, 2)`) to turn the model
    into a classifier; `forward(..., logits_to_keep=1)` then scores the last token only.

    Attributes:
        runner: How inference runs faster than the layer loop, or None (the default: the plain layer
            loop, always used while gradients are on). `lmforge.inference.prepare_for_inference`
            sets it (on CPU, a `lmforge.fast_decode.FastDecoder`). An object with
            `decode(model, x, pos, cache, rows, cos, sin, logits) -> (out, is_logits) | None` for one
            token per sequence and `prefill(model, x, cos, sin, ctx, keep) -> hidden | None` for more;
            None from either means "not applicable: take the layer loop". Not a module: it is not
            in the state dict.
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        if config.position_embedding == "learned":
            self.embed_positions = nn.Embedding(config.block_size, config.n_embd)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = make_norm(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=config.lm_head_bias)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        if config.position_embedding == "rope":
            self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)
        self.runner = None
        self._rope_table: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # -- initialisation (used for training from scratch) --
    def init_weights(self, std: float = 0.02) -> None:
        """GPT-2 style init: N(0, std), zero biases, residual projections scaled by 1/sqrt(2·n_layer)."""
        for name, p in self.named_parameters():
            if p.dim() == 1:
                if "norm" in name:
                    nn.init.zeros_(p) if self.config.norm_unit_offset and name.endswith("weight") else (
                        nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p))
                else:
                    nn.init.zeros_(p)
            else:
                scale = std / math.sqrt(2 * self.config.n_layer) if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                nn.init.normal_(p, mean=0.0, std=scale)
        if self.config.position_embedding == "rope":
            self.inv_freq = rope_inv_freq(self.config).to(self.inv_freq.device)

    @classmethod
    def from_state_dict(cls, config: Config, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> GPT:
        """Build a model from `state_dict` without a second copy of the weights (meta device + assign).

        A head narrower than the vocabulary (an untied `lm_head.weight` of shape (C, n_embd)) is a
        classifier's: the model gets `lm_head = Linear(n_embd, C)`.
        Raises `LmforgeError` naming missing or unexpected keys.
        """
        from lmforge.errors import LmforgeError

        with torch.device("meta"):
            model = cls(config)
            head = state_dict.get("lm_head.weight")
            if head is not None and not config.tie_embeddings and head.shape[0] != config.vocab_size:
                # a classifier's head: Linear(n_embd, num_classes) (lmforge.finetune.classification)
                model.lm_head = Linear(config.n_embd, head.shape[0], bias="lm_head.bias" in state_dict)
        expected = {k for k in model.state_dict() if not (config.tie_embeddings and k == "lm_head.weight")}
        got = set(state_dict)
        missing, unexpected = sorted(expected - got), sorted(got - expected - {"lm_head.weight"})
        if missing or unexpected:
            what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
            raise LmforgeError(f"{source}: weights do not match the config ({what}{' …' if len(missing or unexpected) > 3 else ''})")
        state_dict = {k: v for k, v in state_dict.items() if k in expected}
        model.load_state_dict(state_dict, strict=False, assign=True)
        if config.tie_embeddings:
            model.lm_head.weight = model.embed_tokens.weight
        device = model.embed_tokens.weight.device
        if config.position_embedding == "rope":
            model.inv_freq = rope_inv_freq(config).to(device)
        return model

    def new_kv_cache(self, batch_size: int, max_seq_length: int | None = None,
                     dtype: torch.dtype | None = None, device: torch.device | None = None) -> KVCache:
        cfg = self.config
        max_seq_length = max_seq_length or cfg.block_size
        ref = self.embed_tokens.weight
        dtype = dtype or (ref.dtype if ref.is_floating_point() else torch.float32)
        device = device or ref.device
        shape = (batch_size, cfg.n_query_groups, max_seq_length, cfg.head_size)
        return KVCache([torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)],
                       [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)])

    def forward(
        self,
        idx: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        cache: KVCache | None = None,
        rows: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        return_hidden: bool = False,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the model.

        Args:
            idx: (B, T) token ids.
            input_pos: positions of the tokens, (T,) or (B, T); default 0..T-1. With a cache,
                each row may be at its own position (rows of different lengths).
            cache: a `KVCache` from `new_kv_cache`; keys/values of the new tokens are stored in it.
            rows: which cache rows the B inputs belong to (continuous batching); default all.
            logits_to_keep: if > 0, compute the head only for the last that many positions.
            return_hidden: return the final normed hidden states (B, T, d) instead of logits.
            segments: (B, T) document index of each token, for packed sequences (training, no
                cache): a token attends only to earlier tokens of its own document, and positions
                restart at 0 where a document starts. Equal ids must be contiguous.

        Returns:
            logits (B, T', vocab) — or whatever the (replaceable) `lm_head` outputs.
        """
        cfg = self.config
        B, T = idx.shape
        if segments is not None:
            if input_pos is not None or cache is not None:
                raise ValueError("segments (packed sequences) work without input_pos and cache")
            pos = segment_positions(segments)
            default_pos = False
        elif input_pos is None:
            if T > cfg.block_size:
                raise ValueError(f"sequence of {T} tokens exceeds the model's block_size {cfg.block_size}")
            pos = torch.arange(T, device=idx.device).expand(B, T)
            default_pos = True
        else:
            input_pos = input_pos.long()  # int32 positions work too (index ops want int64)
            pos = input_pos.expand(B, T) if input_pos.dim() == 1 else input_pos
            default_pos = False
        x = self.embed_tokens(idx)
        if cfg.scale_embeddings:
            x = x * torch.tensor(cfg.n_embd**0.5, dtype=x.dtype)
        if cfg.position_embedding == "learned":
            x = x + self.embed_positions(pos)
            cos = sin = None
        else:
            # (B, 1, T, n_rot) each; sin has its first half negated. Default positions need no
            # pos.max() (a host sync, and a graph break under torch.compile)
            cos, sin = self._rope(pos, x.dtype, need=T if default_pos or segments is not None else None)

        # the runner (see the class docstring) only for inference, and not for packed sequences
        runner = self.runner if segments is None and not torch.is_grad_enabled() else None
        done = None
        if runner is not None and T == 1 and cache is not None:
            # (logits, True), (normed hidden, False), or None: not applicable, take the layer loop
            done = runner.decode(self, x, pos, cache, rows, cos, sin, not return_hidden)
        if done is not None:
            x, is_logits = done
            if is_logits:
                return x
        else:
            ctx = self._context(pos, cache, rows, default_pos, segments)
            hidden = None
            if runner is not None:  # the same layers, faster (prefill, scoring); None: not applicable
                hidden = runner.prefill(self, x, cos, sin, ctx, logits_to_keep)
            if hidden is not None:
                x = hidden
            else:
                for block in self.layers:
                    x = block(x, cos, sin, ctx)
                if logits_to_keep:
                    x = x[:, -logits_to_keep:]
                x = self.norm(x)
        if return_hidden:
            return x
        return self.head(x)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of final-normed hidden states (what `forward(..., return_hidden=True)` returns)."""
        logits = self.lm_head(hidden)
        cap = self.config.final_logit_softcap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _rope(self, pos: torch.Tensor, dtype: torch.dtype, need: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for `pos` (B, T), looked up in a table grown on demand.

        The table holds exactly what computing `pos * inv_freq` per call gives, so results do not
        depend on it; it saves five ops per forward. It is rebuilt when `inv_freq` changes.
        """
        if need is None:
            need = int(pos.max()) + 1 if pos.numel() else 1
        table = self._rope_table
        if (table is None or table[0].size(0) < need or table[2] is not self.inv_freq
                or table[0].device != pos.device or table[0].dtype != dtype):
            size = max(need, 2 * table[0].size(0) if table is not None else 256)
            size = min(max(size, need), max(self.config.block_size, need))
            freqs = torch.arange(size, device=pos.device).float()[:, None] * self.inv_freq  # (S, n_rot/2)
            emb = torch.cat((freqs, freqs), dim=-1)
            sin = emb.sin()
            half = sin.size(-1) // 2
            sin_signed = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
            table = (emb.cos().to(dtype), sin_signed.to(dtype), self.inv_freq)
            self._rope_table = table  # a plain attribute: not a buffer, not in state_dict
        cos, sin = table[0][pos], table[1][pos]  # (B, T, n_rot)
        return cos[:, None], sin[:, None]

    def _context(self, pos: torch.Tensor, cache: KVCache | None, rows, default_pos: bool,
                 segments: torch.Tensor | None = None) -> _Context:
        cfg = self.config
        B, T = pos.shape
        window = cfg.sliding_window
        if segments is not None:  # packed documents: causal within each, nothing across
            i = torch.arange(T, device=pos.device)
            mask = ((segments[:, :, None] == segments[:, None, :]) & (i[None, :, None] >= i[None, None, :]))[:, None]
            sliding = mask & (i[:, None] - i[None, :] < window) if window is not None else None
            return _Context(pos, None, None, T, mask, sliding, causal=False)
        if cache is None:
            if not default_pos:
                raise ValueError("input_pos without a cache is not supported; pass a KVCache")
            needs_window = window is not None and T > window
            if not needs_window:
                return _Context(pos, None, None, T, None, None, causal=True)
            i = torch.arange(T, device=pos.device)
            causal = i[None, :] <= i[:, None]
            sliding = causal & (i[:, None] - i[None, :] < window)
            return _Context(pos, None, None, T, None, sliding, causal=True)
        kv_len = int(pos.max()) + 1
        if kv_len > cache.max_seq_length:
            raise ValueError(f"position {kv_len - 1} is beyond the KV cache length {cache.max_seq_length}")
        if B == 1 and T == 1 and (window is None or kv_len <= window):
            # a single decoding token sees every filled slot: no mask to build
            return _Context(pos, cache, rows, kv_len, None, None, causal=False)
        fresh = B == 1 and kv_len == T and (window is None or T <= window)
        if fresh and torch.equal(pos[0], torch.arange(T, device=pos.device)):
            # a fresh prefill (positions 0..T-1): plain causal attention, SDPA's unmasked causal kernel
            return _Context(pos, cache, rows, kv_len, None, None, causal=True)
        j = torch.arange(kv_len, device=pos.device)
        p = pos[:, None, :, None]  # (B, 1, T, 1)
        mask = j <= p  # (B, 1, T, S)
        sliding = mask & (p - j < window) if window is not None else None
        if B == 1 and T == 1:
            mask = None  # a single decoding token sees every filled slot
        return _Context(pos, cache, rows, kv_len, mask, sliding, causal=False)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype
