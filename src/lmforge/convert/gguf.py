"""Read and write GGUF files (llama.cpp's format) as lmforge configs and state dicts.

GGUF facts this module relies on:

* Tensor shapes are stored in ggml order (fastest dimension first); `gguf.GGUFReader` exposes the
  data as a numpy array in row-major order, so a `[in, out]` ggml tensor reads as `(out, in)`, the
  `nn.Linear` layout, and `GGUFWriter.add_tensor` reverses a numpy shape the same way on write.
* llama.cpp rotates *interleaved* pairs (0, 1), (2, 3)… for the `llama` architecture, while HF and
  lmforge rotate the two halves of each head. Its `convert_hf_to_gguf.py` therefore permutes the
  rows of every head of Q and K; we apply the inverse on load and the same permutation on export.
  Qwen2/Qwen3/Gemma 2/Phi-3 use llama.cpp's "neox" rotation (halves), so their rows are not permuted.
* Gemma stores norm weights as `1 + w`; llama.cpp's converter writes the `1 + w` value.
* A missing `output.weight` means the output head is tied to `token_embd.weight`.

Quantized tensors are dequantized with `gguf.quants.dequantize`, one tensor at a time, so loading
never holds more than the final state dict plus one fp32 tensor.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge._io import parse_dtype
from lmforge.config import Config
from lmforge.errors import LmforgeError
from lmforge.gguf_header import GGUFError, GGUFHeader, read_gguf_header

if TYPE_CHECKING:
    import numpy as np
    import torch

    from lmforge.tokenizer import Tokenizer


# ---------------------------------------------------------------------------------------------
# architectures: what each GGUF family fixes in the Config and how its tensors are laid out
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Arch:
    hf_architecture: str
    permute_qk: bool = False
    """llama.cpp's converter interleaved the rotary halves of Q/K rows (the `llama` arch)."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Config fields every model of this family has."""
    norm_plus_one: bool = False
    """Norm weights are stored as `1 + w` (Gemma)."""
    fused_qkv: bool = False
    """Q, K and V are one `attn_qkv` tensor, rows [q; k; v]."""
    fused_gate_up: bool = False
    """`ffn_up` holds [gate; up] (Phi-3)."""


_LLAMA = _Arch("LlamaForCausalLM", permute_qk=True)
_ARCHS: dict[str, _Arch] = {
    "llama": _LLAMA,  # also Mistral, TinyLlama, SmolLM, Llama 2/3 (llama.cpp writes them as llama)
    "mistral": _Arch("MistralForCausalLM", permute_qk=True),
    "qwen2": _Arch("Qwen2ForCausalLM"),
    "qwen3": _Arch("Qwen3ForCausalLM"),
    "gemma2": _Arch(
        "Gemma2ForCausalLM",
        norm_plus_one=True,
        fixed={"norm_unit_offset": True, "activation": "gelu_tanh", "scale_embeddings": True,
               "sliding_window_pattern": 2},
    ),
    "phi3": _Arch("Phi3ForCausalLM", fused_qkv=True, fused_gate_up=True),
    "gpt2": _Arch(
        "GPT2LMHeadModel",
        fused_qkv=True,
        fixed={"norm_class": "layernorm", "mlp_class": "mlp", "activation": "gelu_tanh",
               "position_embedding": "learned"},
    ),
}

# GGUF tensor name stems <-> our key stems (biases follow the weights: `.weight` / `.bias`)
_TOP = {"token_embd": "embed_tokens", "position_embd": "embed_positions", "output_norm": "norm", "output": "lm_head"}
_BLOCK = {
    "attn_norm": "attn_norm",
    "ffn_norm": "mlp_norm",
    "post_attention_norm": "post_attn_norm",
    "post_ffw_norm": "post_mlp_norm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_INV = {v: k for k, v in _BLOCK.items()}
_TOP_INV = {v: k for k, v in _TOP.items()}
_BLK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")
_TOP_RE = re.compile(r"(\w+)\.(weight|bias)$")
_OUR_BLK_RE = re.compile(r"layers\.(\d+)\.(.+)\.(weight|bias)$")


# ---------------------------------------------------------------------------------------------
# Q/K row permutation (llama.cpp's rotary layout)
# ---------------------------------------------------------------------------------------------
def _to_interleaved(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF rows per head [x0..x(h/2-1), y0..y(h/2-1)] -> llama.cpp rows [x0, y0, x1, y1, …]."""
    rest = w.shape[1:]
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *rest).transpose(1, 2).reshape(w.shape)


def _from_interleaved(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of `_to_interleaved`: llama.cpp rows back to the HF half-split layout."""
    rest = w.shape[1:]
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *rest).transpose(1, 2).reshape(w.shape)


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Tensor:
    """One tensor of the file: its directory entry, and its bytes as a numpy view of the file."""

    name: str
    shape: tuple[int, ...]
    """ggml order (fastest dimension first), as stored."""
    tensor_type: Any
    """A `gguf.GGMLQuantizationType`."""
    data: np.ndarray
    """Row-major (HF) shape for plain types; for quantized ones rows of packed blocks, as bytes."""


def _tensors(path: Path, header: GGUFHeader) -> dict[str, _Tensor]:
    """The tensors of the directory, each a view of the memory-mapped file (nothing is read yet)."""
    import gguf
    import numpy as np

    plain = {gguf.GGMLQuantizationType.F16: np.float16, gguf.GGMLQuantizationType.F32: np.float32,
             gguf.GGMLQuantizationType.F64: np.float64, gguf.GGMLQuantizationType.I8: np.int8,
             gguf.GGMLQuantizationType.I16: np.int16, gguf.GGMLQuantizationType.I32: np.int32,
             gguf.GGMLQuantizationType.I64: np.int64}
    file = np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray) if header.tensors else None
    out: dict[str, _Tensor] = {}
    for info in header.tensors:
        where = f"tensor {info.name!r}"
        try:
            if info.name in out:
                raise ValueError("a second tensor of this name")
            qtype = gguf.GGMLQuantizationType(info.ggml_type)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            n_bytes = math.prod(info.shape) * type_size // block
            if info.offset + n_bytes > header.file_size:
                raise ValueError(f"its data ends at byte {info.offset + n_bytes}, past the end of the file")
            raw = file[info.offset : info.offset + n_bytes]
            shape = tuple(reversed(info.shape))
            data = raw.view(plain[qtype]) if qtype in plain else raw
            data = data.reshape(shape if qtype in plain else gguf.quant_shape_to_byte_shape(shape, qtype))
        except (ValueError, KeyError) as e:
            raise GGUFError(f"{path}: truncated or corrupt GGUF file ({where}: {e})") from None
        out[info.name] = _Tensor(info.name, info.shape, qtype, data)
    return out


class _Meta:
    """Typed access to the file's key/value metadata."""

    def __init__(self, metadata: dict[str, Any], path: Path) -> None:
        self.values = metadata
        self.path = path

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def int(self, key: str, default: int | None = None) -> int | None:
        v = self.get(key, default)
        if isinstance(v, list):  # some archs store per-layer lists; lmforge needs one value
            if len(set(v)) != 1:
                raise GGUFError(f"{self.path}: per-layer {key}={v[:8]}… is not supported (needs one value)")
            v = v[0]
        return None if v is None else int(v)

    def require(self, key: str) -> int:
        v = self.int(key)
        if v is None:
            raise GGUFError(f"{self.path}: metadata key {key!r} is missing")
        return v


def load_gguf(
    path: str | Path, dtype: torch.dtype | str | None = None, tokenizer_pre: str | None = None
) -> tuple[Config, dict[str, torch.Tensor], Tokenizer | None]:
    """Load a GGUF model file into an lmforge config and state dict (HF tensor layout).

    Any tensor type the `gguf` package can dequantize (F32, F16, BF16, Q4_0…Q8_0, K-quants…) is
    accepted; the result holds plain floating-point tensors.

    Args:
        path: The `.gguf` file.
        dtype: dtype of the returned tensors (`torch.bfloat16`, `"float16"` …); default float32.
        tokenizer_pre: the vocabulary's llama.cpp pre-tokenizer, over the file's `tokenizer.ggml.pre`.

    Returns:
        `(config, state_dict, tokenizer)`; the tokenizer is None when the file holds none (or
        `lmforge.tokenizer` cannot build one). With a tied head, `lm_head.weight` is absent.

    Raises:
        GGUFError: missing, non-GGUF, truncated or corrupt file; unsupported architecture or tensor.
    """
    import torch

    path = Path(path)
    header = read_gguf_header(path)
    meta = _Meta(header.metadata, path)
    arch_name = meta.get("general.architecture")
    if arch_name not in _ARCHS:
        raise GGUFError(
            f"{path}: GGUF architecture {arch_name!r} is not supported (supported: {', '.join(_ARCHS)})"
        )
    arch = _ARCHS[arch_name]
    tensors = _tensors(path, header)
    config = _config_from_gguf(meta, arch_name, arch, tensors)
    out_dtype = parse_dtype(dtype, GGUFError) or torch.float32

    state: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name == "rope_freqs.weight":  # consumed by the config (llama 3 rope scaling)
            continue
        for key, value in _tensor_to_ours(name, _dequantize(t, path), config, arch, path):
            state[key] = value.to(out_dtype)
    _check_state_dict(state, config, path)
    return config, state, _load_tokenizer(header.metadata, path, tokenizer_pre)


def _dequantize(t, path: Path) -> torch.Tensor:
    """One GGUF tensor as an fp32 torch tensor in row-major (HF) shape."""
    import numpy as np
    import torch
    from gguf.quants import dequantize

    try:
        # a plain ndarray view: numpy.memmap's per-slice bookkeeping makes dequantizing ~2x slower
        data = dequantize(t.data.view(np.ndarray), t.tensor_type)
    except NotImplementedError as e:
        raise GGUFError(f"{path}: tensor {t.name!r}: {e}") from None
    except Exception as e:
        raise GGUFError(f"{path}: truncated or corrupt GGUF file (tensor {t.name!r}: {e})") from None
    shape = tuple(int(n) for n in reversed(t.shape))
    arr = np.ascontiguousarray(data, dtype=np.float32).reshape(shape)
    if not arr.flags.writeable or np.may_share_memory(arr, t.data):
        arr = arr.copy()  # F32 comes back as a view of the read-only memory map: own the memory
    return torch.from_numpy(arr)


def _config_from_gguf(meta: _Meta, arch_name: str, arch: _Arch, tensors: dict) -> Config:
    p, path = arch_name, meta.path
    if meta.int(f"{p}.expert_count", 0):
        raise GGUFError(f"{path}: mixture-of-experts GGUF files are not supported yet")
    if "token_embd.weight" not in tensors:
        raise GGUFError(f"{path}: tensor 'token_embd.weight' is missing")
    vocab_size = int(tensors["token_embd.weight"].shape[1])
    n_embd = meta.require(f"{p}.embedding_length")
    n_head = meta.require(f"{p}.attention.head_count")
    head_size = meta.int(f"{p}.attention.key_length") or n_embd // n_head
    rope_dims = meta.int(f"{p}.rope.dimension_count") or head_size
    eps = meta.get(f"{p}.attention.layer_norm_rms_epsilon", meta.get(f"{p}.attention.layer_norm_epsilon", 1e-5))
    q_norm = tensors.get("blk.0.attn_q_norm.weight")
    fields: dict[str, Any] = dict(
        name=meta.get("general.name") or path.stem,
        hf_architecture=arch.hf_architecture,
        vocab_size=vocab_size,
        n_layer=meta.require(f"{p}.block_count"),
        n_embd=n_embd,
        n_head=n_head,
        n_query_groups=meta.int(f"{p}.attention.head_count_kv") or n_head,
        head_size=head_size,
        intermediate_size=meta.require(f"{p}.feed_forward_length"),
        block_size=meta.int(f"{p}.context_length") or 2048,
        norm_eps=float(eps),
        rope_base=float(meta.get(f"{p}.rope.freq_base", 10000.0)),
        rotary_percentage=rope_dims / head_size,
        # optional tensors tell which biases / extra norms the family has
        attn_bias="blk.0.attn_q.bias" in tensors or "blk.0.attn_qkv.bias" in tensors,
        attn_out_bias="blk.0.attn_output.bias" in tensors,
        mlp_bias="blk.0.ffn_up.bias" in tensors,
        lm_head_bias="output.bias" in tensors,
        norm_bias="output_norm.bias" in tensors,
        qk_norm=None if q_norm is None else ("head" if int(q_norm.shape[0]) == head_size else "full"),
        post_norm="blk.0.post_attention_norm.weight" in tensors,
        tie_embeddings="output.weight" not in tensors,
        bos_token_id=meta.int("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.int("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.int("tokenizer.ggml.padding_token_id"),
        rope_scaling=_rope_scaling(meta, p, tensors, head_size, rope_dims),
    )
    fields.update(arch.fixed)
    if arch_name == "gemma2":
        fields["attn_logit_softcap"] = meta.get(f"{p}.attn_logit_softcapping")
        fields["final_logit_softcap"] = meta.get(f"{p}.final_logit_softcapping")
        # llama.cpp's rule: Gemma 2 27B (46 layers) scales scores by n_embd/n_head, the others by head_size
        fields["attn_scale_base"] = n_embd / n_head if fields["n_layer"] == 46 else None
    window = meta.int(f"{p}.attention.sliding_window")
    if window and arch_name in ("gemma2", "phi3"):
        fields["sliding_window"] = window
    if arch_name == "gpt2":
        fields["rope_scaling"] = None
    try:
        return Config(**fields)
    except LmforgeError as e:
        raise GGUFError(f"{path}: inconsistent GGUF metadata ({e})") from None


def _rope_scaling(meta: _Meta, p: str, tensors: dict, head_size: int, rope_dims: int) -> dict | None:
    kind = meta.get(f"{p}.rope.scaling.type")
    if "rope_freqs.weight" in tensors:
        return _llama3_scaling_from_freqs(meta, tensors["rope_freqs.weight"], rope_dims)
    if kind in (None, "none"):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(meta.get(f"{p}.rope.scaling.factor"))}
    raise GGUFError(f"{meta.path}: rope scaling type {kind!r} is not supported (supported: linear, llama3)")


def _llama3_scaling_from_freqs(meta: _Meta, t, rope_dims: int) -> dict:
    """Recover Llama 3.x rope scaling parameters from llama.cpp's `rope_freqs` tensor.

    llama.cpp stores the per-frequency divisors instead of the parameters; every released Llama 3.x
    uses low/high frequency factors 1/4 and an 8192-token original context, with factor 8 or 32.
    """
    import torch

    stored = _dequantize(t, meta.path).double()
    base = float(meta.get("llama.rope.freq_base", 10000.0))
    inv_freq = 1.0 / (base ** (torch.arange(0, rope_dims, 2, dtype=torch.float64) / rope_dims))
    for factor in (8.0, 16.0, 32.0, 4.0, 2.0):
        params = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}
        if torch.allclose(inv_freq / _llama3_inv_freq(inv_freq, params), stored, rtol=1e-3):
            return params
    raise GGUFError(f"{meta.path}: tensor 'rope_freqs.weight' holds rope scaling lmforge cannot express")


def _llama3_inv_freq(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    """Llama 3 frequency scaling (the same rule as `lmforge.model.rope_inv_freq`), in float64."""
    import torch

    factor, low, high, old = s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old / low, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old / high) & (wavelen <= old / low)
    return torch.where(is_medium, smoothed, scaled)


def _tensor_to_ours(name: str, w: torch.Tensor, config: Config, arch: _Arch, path: Path):
    """Yield `(our_key, tensor)` pairs for one GGUF tensor (fused tensors yield several)."""
    m = _BLK_RE.match(name)
    if m is None:
        top = _TOP_RE.match(name)
        stem = top and _TOP.get(top.group(1))
        if stem is None:
            raise GGUFError(f"{path}: unexpected tensor {name!r} for this architecture")
        if arch.norm_plus_one and stem == "norm":
            w = w - 1.0
        yield f"{stem}.{top.group(2)}", w
        return
    i, stem, kind = m.group(1), m.group(2), m.group(3)
    prefix = f"layers.{i}."
    hs, nh, ng = config.head_size, config.n_head, config.n_query_groups
    if stem == "attn_qkv" and arch.fused_qkv:
        q, k, v = w.split([nh * hs, ng * hs, ng * hs], dim=0)
        yield from ((f"{prefix}self_attn.{n}.{kind}", x) for n, x in (("q_proj", q), ("k_proj", k), ("v_proj", v)))
        return
    if stem == "ffn_up" and arch.fused_gate_up and w.shape[0] == 2 * config.intermediate_size:
        gate, up = w.chunk(2, dim=0)
        yield f"{prefix}mlp.gate_proj.{kind}", gate
        yield f"{prefix}mlp.up_proj.{kind}", up
        return
    ours = _BLOCK.get(stem)
    if ours is None:
        raise GGUFError(f"{path}: unexpected tensor {name!r} for this architecture")
    if arch.permute_qk and stem in ("attn_q", "attn_k"):
        w = _from_interleaved(w, nh if stem == "attn_q" else ng)
    if arch.norm_plus_one and stem.endswith("norm"):
        w = w - 1.0
    yield f"{prefix}{ours}.{kind}", w


def _expected_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of `GPT(config)` (built on the meta device: no memory, no init)."""
    import torch

    from lmforge.model import GPT

    with torch.device("meta"):
        model = GPT(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def _check_state_dict(state: dict[str, torch.Tensor], config: Config, path: Path) -> None:
    expected = _expected_shapes(config)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise GGUFError(f"{path}: tensor for {missing[0]!r} is missing ({len(missing)} missing in all)")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise GGUFError(f"{path}: {key} has shape {tuple(state[key].shape)}, the metadata implies {shape}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise GGUFError(f"{path}: tensor {extra[0]!r} does not fit the architecture in the metadata")


def _load_tokenizer(metadata: dict[str, Any], path: Path, pre: str | None) -> Tokenizer | None:
    """The tokenizer in the file's `tokenizer.*` metadata, or None when it holds no vocabulary."""
    from lmforge.tokenizer import Tokenizer

    if "tokenizer.ggml.tokens" not in metadata:
        return None
    vocab = {k: v for k, v in metadata.items() if k.startswith("tokenizer.")}
    return Tokenizer.from_gguf_metadata(vocab, source=str(path), pre=pre)


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
_ROPE_DECODER: dict[str, Any] = {
    "position_embedding": "rope", "parallel_residual": False, "pre_norm": True, "post_norm": False,
    "norm_class": "rmsnorm", "norm_unit_offset": False, "mlp_class": "gated", "activation": "silu",
    "attn_bias": False, "attn_out_bias": False, "mlp_bias": False, "lm_head_bias": False,
    "attn_logit_softcap": None, "final_logit_softcap": None, "scale_embeddings": False,
    "rotary_percentage": 1.0, "qk_norm": None, "sliding_window": None,
}
# What each GGUF architecture we write can express: field -> the value it needs.
_EXPORT_NEEDS: dict[str, dict[str, Any]] = {
    "llama": _ROPE_DECODER,
    "qwen2": {**_ROPE_DECODER, "attn_bias": True},
    "qwen3": {**_ROPE_DECODER, "qk_norm": "head"},
    "phi3": {k: v for k, v in _ROPE_DECODER.items() if k != "sliding_window"},
    "gemma2": {k: v for k, v in _ROPE_DECODER.items() if k not in ("attn_logit_softcap", "final_logit_softcap",
                                                                    "sliding_window")}
    | {"post_norm": True, "norm_unit_offset": True, "activation": "gelu_tanh", "scale_embeddings": True,
       "sliding_window_pattern": 2},
    "gpt2": {"position_embedding": "learned", "parallel_residual": False, "pre_norm": True, "post_norm": False,
             "norm_class": "layernorm", "norm_bias": True, "mlp_class": "mlp", "activation": "gelu_tanh",
             "attn_bias": True, "attn_out_bias": True, "mlp_bias": True, "lm_head_bias": False, "qk_norm": None,
             "attn_logit_softcap": None, "final_logit_softcap": None, "scale_embeddings": False,
             "sliding_window": None, "attn_scale_base": None},
}
_EXPORT_PREFERRED = {"Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "Phi3ForCausalLM": "phi3",
                     "Gemma2ForCausalLM": "gemma2", "GPT2LMHeadModel": "gpt2"}
_FEATURE_NAMES = {
    "position_embedding": {"learned": "learned position embeddings", "rope": "rotary position embeddings"},
    "parallel_residual": "parallel residual blocks", "pre_norm": "blocks without pre-norms",
    "post_norm": "post-sublayer norms", "norm_unit_offset": "unit-offset norms",
    "scale_embeddings": "scaled embeddings", "attn_logit_softcap": "attention logit soft-capping",
    "final_logit_softcap": "final logit soft-capping", "rotary_percentage": "partial rotary embeddings",
    "sliding_window": "sliding-window attention", "attn_out_bias": "a bias on the attention output projection",
    "mlp_bias": "MLP biases", "lm_head_bias": "an output-head bias", "attn_scale_base": "a custom attention scale",
}


def _export_problems(config: Config, arch: str) -> list[str]:
    """What in `config` the GGUF architecture `arch` cannot express (empty: exportable)."""
    c, problems = config, []
    for key, need in _EXPORT_NEEDS[arch].items():
        have = getattr(c, key)
        if key == "sliding_window" and have is not None and have >= c.block_size:
            have = None  # a window as long as the context never slides (Mistral v0.1 at 4k)
        if have != need:
            named = _FEATURE_NAMES.get(key)
            named = named.get(have) if isinstance(named, dict) else named
            problems.append(named or f"{key}={have!r}")
    if arch == "gemma2":
        if c.attn_logit_softcap is None or c.final_logit_softcap is None or c.sliding_window is None:
            problems.append("Gemma 2 without soft-capping or a sliding window")
        # llama.cpp hard-codes the score scale: n_embd/n_head for the 46-layer 27B, head_size otherwise
        want = c.n_embd / c.n_head if c.n_layer == 46 else c.head_size
        if (c.attn_scale_base or c.head_size) != want:
            problems.append("a custom attention scale")
    elif arch != "gpt2" and c.attn_scale_base not in (None, c.head_size):
        problems.append("a custom attention scale")
    if arch == "gpt2" and c.n_query_groups != c.n_head:
        problems.append("grouped-query attention")
    if arch != "gpt2":
        kind = _rope_kind(c)
        if kind not in ("default", "linear", "llama3") or (arch in ("phi3", "gemma2") and kind != "default"):
            problems.append(f"rope scaling {kind!r}")
    return problems


def _rope_kind(config: Config) -> str:
    s = config.rope_scaling or {}
    return s.get("rope_type", s.get("type", "default"))


def _export_arch(config: Config) -> str:
    """The GGUF architecture that expresses `config`, or a GGUFError naming what cannot be exported.

    The architecture named by `config.hf_architecture` is preferred (a Phi-3 stays `phi3`); otherwise
    the first of llama, qwen2, qwen3, gemma2, gpt2 that can express every feature.
    """
    preferred = _EXPORT_PREFERRED.get(config.hf_architecture)
    for arch in ([preferred] if preferred else []) + ["llama", "qwen2", "qwen3", "gemma2", "gpt2"]:
        if not _export_problems(config, arch):
            return arch
    arch = preferred or "llama"
    raise GGUFError(f"cannot export {config.name!r} to GGUF: {_export_problems(config, arch)[0]} cannot be "
                    f"expressed by llama.cpp's {arch} architecture (nor by {', '.join(sorted(_EXPORT_NEEDS))})")


def export_gguf(
    state_dict: dict[str, torch.Tensor],
    config: Config,
    out_path: str | Path,
    tokenizer: Tokenizer | None = None,
    dtype: str = "f16",
) -> Path:
    """Write a model as a GGUF file that llama.cpp (and transformers) load.

    Llama-family configs become GGUF arch `llama` (Q/K rows permuted to llama.cpp's rotary
    layout), configs with q/k/v biases `qwen2`, with per-head q/k norms `qwen3`; Gemma 2, Phi-3 and
    GPT-2 configs get their own llama.cpp architectures (fused tensors, `1 + w` norms as llama.cpp
    stores them).

    Args:
        state_dict: Our state dict (`GPT.state_dict()` or a loaded one).
        config: Its config.
        out_path: The `.gguf` file to write (atomically).
        tokenizer: Written into the file's `tokenizer.*` metadata when given.
        dtype: `"f16"` (2-D weights in float16, norms and biases in float32, like llama.cpp) or `"f32"`.

    Returns:
        The path written.

    Raises:
        GGUFError: the config uses a feature these GGUF architectures cannot express, or the state
            dict does not match the config.
    """
    import gguf

    from lmforge._io import atomic_write

    if dtype not in ("f16", "f32"):
        raise GGUFError(f"export dtype {dtype!r} is not supported (use 'f16' or 'f32')")
    arch = _export_arch(config)
    tensors = dict(_tensors_to_gguf(state_dict, config, arch, dtype))
    tok_fields = _special_ids(config)
    if tokenizer is not None:
        tok_fields.update(_tokenizer_fields(tokenizer))  # the tokenizer's ids win over the config's
    out_path = Path(out_path)

    def write(tmp: Path) -> None:
        w = gguf.GGUFWriter(tmp, arch)
        _write_metadata(w, config, arch, dtype)
        _write_tokenizer(w, tok_fields)
        for name, arr in tensors.items():
            w.add_tensor(name, arr)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    atomic_write(out_path, write)
    return out_path


def _write_metadata(w, config: Config, arch: str, dtype: str) -> None:
    import gguf

    c = config
    w.add_name(c.name)
    w.add_context_length(c.block_size)
    w.add_embedding_length(c.n_embd)
    w.add_block_count(c.n_layer)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.n_head)
    w.add_head_count_kv(c.n_query_groups)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    if arch == "gpt2":
        w.add_layer_norm_eps(float(c.norm_eps))
    else:
        w.add_layer_norm_rms_eps(float(c.norm_eps))
        if c.head_size != c.n_embd // c.n_head or arch == "gemma2":
            w.add_key_length(c.head_size)
            w.add_value_length(c.head_size)
        w.add_rope_dimension_count(c.rope_n_elem)
        w.add_rope_freq_base(float(c.rope_base))
        if _rope_kind(c) == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(c.rope_scaling["factor"]))
    if c.sliding_window is not None and arch in ("gemma2", "phi3"):
        w.add_sliding_window(c.sliding_window)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(float(c.attn_logit_softcap))
        w.add_final_logit_softcapping(float(c.final_logit_softcap))


def _tensors_to_gguf(state: dict[str, torch.Tensor], config: Config, arch: str, dtype: str):
    """Yield `(gguf_name, numpy array)` in llama.cpp's order and layout."""
    import numpy as np
    import torch

    expected = _expected_shapes(config)
    keys = [k for k in state if not (config.tie_embeddings and k == "lm_head.weight")]
    unknown = sorted(set(keys) - set(expected))
    if unknown:
        raise GGUFError(f"state dict key {unknown[0]!r} does not belong to config {config.name!r}")
    missing = sorted(set(expected) - set(keys))
    if missing:
        raise GGUFError(f"state dict lacks {missing[0]!r} needed by config {config.name!r}")
    fused_qkv = arch in ("phi3", "gpt2")  # llama.cpp loads one attn_qkv tensor for these
    fused_gate_up = arch == "phi3"

    def get(key: str) -> torch.Tensor:
        w = state[key].detach().to("cpu", torch.float32)
        if tuple(w.shape) != expected[key]:
            raise GGUFError(f"state dict {key} has shape {tuple(w.shape)}, config {config.name!r} needs {expected[key]}")
        return w

    def order(key: str) -> tuple:
        m = _OUR_BLK_RE.match(key)
        if m:
            return (1, int(m.group(1)), key)
        return (0 if key.startswith("embed") else 2, 0, key)

    for key in sorted(keys, key=order):
        m = _OUR_BLK_RE.match(key)
        stem, kind = (m.group(2), m.group(3)) if m else key.rsplit(".", 1)
        prefix = f"layers.{m.group(1)}." if m else ""
        if fused_qkv and stem in ("self_attn.k_proj", "self_attn.v_proj"):
            continue  # written with q_proj
        if fused_gate_up and stem == "mlp.up_proj":
            continue  # written with gate_proj
        w = get(key)
        if fused_qkv and stem == "self_attn.q_proj":
            stem, w = "attn_qkv", torch.cat([w, get(f"{prefix}self_attn.k_proj.{kind}"),
                                             get(f"{prefix}self_attn.v_proj.{kind}")])
        elif fused_gate_up and stem == "mlp.gate_proj":
            stem, w = "ffn_up", torch.cat([w, get(f"{prefix}mlp.up_proj.{kind}")])
        else:
            stem = _BLOCK_INV[stem] if m else _TOP_INV[stem]
        name = f"blk.{m.group(1)}.{stem}.{kind}" if m else f"{stem}.{kind}"
        if arch == "llama" and stem in ("attn_q", "attn_k"):
            w = _to_interleaved(w, config.n_head if stem == "attn_q" else config.n_query_groups)
        if arch == "gemma2" and stem.endswith("norm"):
            w = w + 1.0  # llama.cpp's Gemma stores the applied scale 1 + w
        # llama.cpp keeps 1-D tensors (norms, biases) in f32 whatever the file type
        np_dtype = np.float16 if dtype == "f16" and w.dim() > 1 else np.float32
        yield name, np.ascontiguousarray(w.numpy().astype(np_dtype))
    if _rope_kind(config) == "llama3":
        # llama.cpp reads Llama 3 scaling as per-frequency divisors (`rope_freqs`), not parameters
        from lmforge.model import rope_inv_freq

        plain = Config(**{**config.__dict__, "rope_scaling": None})
        divisors = rope_inv_freq(plain) / rope_inv_freq(config)
        yield "rope_freqs.weight", divisors.numpy().astype(np.float32)


def _special_ids(config: Config) -> dict[str, int]:
    ids = {"bos": config.bos_token_id, "eos": config.eos_ids[0] if config.eos_ids else None,
           "padding": config.pad_token_id}
    return {f"tokenizer.ggml.{k}_token_id": int(v) for k, v in ids.items() if v is not None}


def _tokenizer_fields(tokenizer: Tokenizer) -> dict[str, Any]:
    """The `tokenizer.*` GGUF metadata for an lmforge Tokenizer (whatever it can describe)."""
    return dict(tokenizer.gguf_metadata())


_UINT32_KEYS = re.compile(r"tokenizer\.ggml\.\w+_token_id$")


def _write_tokenizer(w, fields: dict[str, Any]) -> None:
    import gguf

    for key, value in fields.items():
        if _UINT32_KEYS.match(key):
            w.add_uint32(key, int(value))
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, (list, tuple)):
            if key == "tokenizer.ggml.token_type":
                w.add_array(key, [int(gguf.TokenType(v)) for v in value])
            else:
                w.add_array(key, list(value))
        else:
            raise GGUFError(f"tokenizer metadata {key!r} has unsupported type {type(value).__name__}")
