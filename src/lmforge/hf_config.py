"""Hugging Face `config.json` <-> `Config` fields, for every supported architecture.

Each architecture is one `_Arch` entry of `ARCHITECTURES`: the defaults transformers applies when a
key is absent, a reader turning the HF dict into `Config` fields and a writer doing the reverse.
This module is a translator below `lmforge.config`: `hf_to_fields` returns the keyword arguments
that `Config.from_hf` builds the `Config` from, and `config_to_hf` reads the attributes of the
config it is given, so it never imports `lmforge.config` (data flows one way).
Features an architecture fixes (GPT-2's learned positions, Gemma 2's norm offset …) are constants of
its reader, so the model never needs to know a family name.

`config_to_hf` reads its own output back and refuses a config whose fields the target architecture
cannot express (say a sliding window on `LlamaForCausalLM`), instead of silently dropping a feature.

Reading accepts both the transformers 4 spelling of rotary settings (`rope_theta`, `rope_scaling`,
`rotary_pct`, `partial_rotary_factor`) and the transformers 5 one (`rope_parameters`); writing emits
both, so either version loads the file.

This module imports no torch (config loading stays fast).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from lmforge.config import Config

_SLIDING, _FULL = "sliding_attention", "full_attention"


# ---------------------------------------------------------------------------------------------
# defensive access to an HF dict
# ---------------------------------------------------------------------------------------------
_KINDS: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "positive int": lambda v: _KINDS["int"](v) and v > 0,
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "dict": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list),
    # token ids: one int or a list of ints (Llama 3.1 has several end-of-sequence ids)
    "ids": lambda v: _KINDS["int"](v) or (isinstance(v, list) and all(_KINDS["int"](x) for x in v)),
}


class _HF:
    """One HF config dict with the architecture's defaults; every error names the key and the file."""

    def __init__(self, data: dict[str, Any], source: str, defaults: dict[str, Any]) -> None:
        self.data, self.source, self.defaults = data, source, defaults

    def __call__(self, key: str, kind: str, optional: bool = False) -> Any:
        """The value of `key` (or the architecture default), checked to be of `kind`.

        `optional` allows `null`; a key with neither a value nor a default is required.
        """
        if key in self.data:
            value = self.data[key]
        elif key in self.defaults:
            value = self.defaults[key]
        else:
            raise ConfigError(f"{self.source}: required key {key!r} is missing")
        if value is None and optional:
            return None
        if not _KINDS[kind](value):
            raise ConfigError(f"{self.source}: key {key!r} must be {'an int' if kind == 'int' else 'a ' + kind}, "
                              f"got {value!r}")
        return float(value) if kind == "float" else value

    def unsupported(self, what: str) -> ConfigError:
        return ConfigError(f"{self.source}: {what} is not supported by lmforge")


def _activation(h: _HF, key: str) -> str:
    name = h(key, "str")
    mapped = {"silu": "silu", "swish": "silu", "gelu": "gelu", "relu": "relu",
              # transformers' `gelu_new` is the tanh approximation written out by hand
              "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}.get(name)
    if mapped is None:
        raise ConfigError(f"{h.source}: {key}={name!r} is not supported "
                          "(supported: silu, gelu, gelu_new, gelu_pytorch_tanh, relu)")
    return mapped


def _token_ids(h: _HF) -> dict[str, Any]:
    return {f"{k}_token_id": h(f"{k}_token_id", "ids", optional=True) for k in ("bos", "eos", "pad")}


def _rope(h: _HF, partial: bool) -> dict[str, Any]:
    """Rotary settings from either spelling; `partial`: the architecture honours a rotated fraction."""
    new = h.data.get("rope_parameters") or {}
    legacy = h.data.get("rope_scaling") or {}
    for key, value in (("rope_parameters", new), ("rope_scaling", legacy)):
        if not isinstance(value, dict):
            raise ConfigError(f"{h.source}: key {key!r} must be a dict, got {value!r}")
        if any(isinstance(v, dict) for v in value.values()):
            raise h.unsupported(f"per-layer-type {key}")
    # transformers 5 gives a legacy `rope_scaling` priority over `rope_parameters`, then falls back
    # to top-level keys; we do the same.
    params = legacy or new

    def pick(key: str, *fallbacks: str) -> Any:
        for source in (params, new):
            if key in source:
                return source[key]
        for k in fallbacks:
            if k in h.data:
                return h.data[k]
        return h.defaults.get(fallbacks[0] if fallbacks else key)

    theta = pick("rope_theta", "rope_theta", "rotary_emb_base")
    out: dict[str, Any] = {"rope_base": _number(h, "rope_theta", theta)}
    if partial:
        out["rotary_percentage"] = _number(h, "partial_rotary_factor",
                                           pick("partial_rotary_factor", "partial_rotary_factor", "rotary_pct"))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        out["rope_scaling"] = None
    elif kind in _ROPE_SCALING_KEYS:
        scaling: dict[str, Any] = {"rope_type": kind}
        for key in _ROPE_SCALING_KEYS[kind]:
            if key not in params:
                raise ConfigError(f"{h.source}: rope scaling {kind!r} needs key {key!r}")
            value = _number(h, key, params[key])
            scaling[key] = int(value) if key == "original_max_position_embeddings" else value
        out["rope_scaling"] = scaling
    else:
        raise ConfigError(f"{h.source}: rope type {kind!r} is not supported (supported: default, linear, llama3)")
    return out


_ROPE_SCALING_KEYS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def _number(h: _HF, key: str, value: Any) -> float:
    if not _KINDS["float"](value):
        raise ConfigError(f"{h.source}: rope setting {key!r} must be a number, got {value!r}")
    return float(value)


def _sliding_pattern(sliding: list[bool], source: str) -> int:
    """The `Config.sliding_window_pattern` reproducing a per-layer list of sliding flags."""
    for p in range(1, len(sliding) + 1):
        if all((p == 1 or i % p != p - 1) == s for i, s in enumerate(sliding)):
            return p
    raise ConfigError(f"{source}: layer_types {['sliding' if s else 'full' for s in sliding]} is not a supported "
                      "pattern (every layer slides, or all but every N-th)")


def _layer_types(h: _HF, n_layer: int, default: list[bool]) -> list[bool]:
    types = h.data.get("layer_types")
    if types is None:
        return default
    if not (isinstance(types, list) and len(types) == n_layer and set(types) <= {_SLIDING, _FULL}):
        raise ConfigError(f"{h.source}: layer_types must list {n_layer} of {_SLIDING!r}/{_FULL!r}, got {types!r}")
    return [t == _SLIDING for t in types]


def _window(h: _HF, window: int | None, sliding: list[bool]) -> dict[str, Any]:
    if window is None or not any(sliding):
        return {"sliding_window": None, "sliding_window_pattern": 1}
    return {"sliding_window": window, "sliding_window_pattern": _sliding_pattern(sliding, h.source)}


# ---------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------
def _decoder(h: _HF, head_dim: bool = True, partial_rope: bool = False, gqa: bool = True) -> dict[str, Any]:
    """Fields named alike by every `hidden_size`-style architecture (all but GPT-2).

    `head_dim`/`gqa`: the architecture reads `head_dim`/`num_key_value_heads` (else they are derived).
    """
    n_embd, n_head = h("hidden_size", "int"), h("num_attention_heads", "positive int")  # divides below
    return dict(
        vocab_size=h("vocab_size", "int"),
        n_layer=h("num_hidden_layers", "int"),
        n_embd=n_embd,
        n_head=n_head,
        n_query_groups=(h("num_key_value_heads", "int", optional=True) if gqa else None) or n_head,
        head_size=(h("head_dim", "int", optional=True) if head_dim else None) or n_embd // n_head,
        intermediate_size=h("intermediate_size", "int"),
        block_size=h("max_position_embeddings", "int"),
        tie_embeddings=h("tie_word_embeddings", "bool"),
        **_rope(h, partial_rope),
        **_token_ids(h),
    )


def _rms(h: _HF) -> dict[str, Any]:
    return dict(norm_class="rmsnorm", norm_eps=h("rms_norm_eps", "float"), activation=_activation(h, "hidden_act"))


def _read_gpt2(h: _HF) -> dict[str, Any]:
    if not h("scale_attn_weights", "bool"):
        raise h.unsupported("scale_attn_weights=false")
    if h("scale_attn_by_inverse_layer_idx", "bool"):
        raise h.unsupported("scale_attn_by_inverse_layer_idx=true")
    n_embd = h("n_embd", "int")
    return dict(
        vocab_size=h("vocab_size", "int"), n_layer=h("n_layer", "int"), n_embd=n_embd, n_head=h("n_head", "int"),
        intermediate_size=h("n_inner", "int", optional=True) or 4 * n_embd, block_size=h("n_positions", "int"),
        norm_class="layernorm", norm_eps=h("layer_norm_epsilon", "float"), mlp_class="mlp",
        activation=_activation(h, "activation_function"), attn_bias=True, attn_out_bias=True, mlp_bias=True,
        position_embedding="learned", tie_embeddings=h("tie_word_embeddings", "bool"), **_token_ids(h),
    )


def _read_gpt_neox(h: _HF) -> dict[str, Any]:
    bias = h("attention_bias", "bool")
    return dict(_decoder(h, head_dim=False, partial_rope=True, gqa=False), norm_class="layernorm",
                norm_eps=h("layer_norm_eps", "float"), mlp_class="mlp", activation=_activation(h, "hidden_act"),
                attn_bias=bias, attn_out_bias=bias, mlp_bias=True,
                parallel_residual=h("use_parallel_residual", "bool"))


def _read_llama(h: _HF) -> dict[str, Any]:
    bias = h("attention_bias", "bool")
    return dict(_decoder(h), **_rms(h), attn_bias=bias, attn_out_bias=bias, mlp_bias=h("mlp_bias", "bool"))


def _read_mistral(h: _HF) -> dict[str, Any]:
    fields = dict(_decoder(h), **_rms(h))
    return dict(fields, **_window(h, h("sliding_window", "int", optional=True), [True] * fields["n_layer"]))


def _read_mixtral(h: _HF) -> dict[str, Any]:
    return dict(_read_mistral(h), mlp_class="moe", n_expert=h("num_local_experts", "int"),
                n_expert_per_token=h("num_experts_per_tok", "int"))


def _read_phi(h: _HF) -> dict[str, Any]:
    if h("qk_layernorm", "bool"):
        raise h.unsupported("qk_layernorm=true")
    return dict(_decoder(h, head_dim=False, partial_rope=True), norm_class="layernorm",
                norm_eps=h("layer_norm_eps", "float"), mlp_class="mlp", activation=_activation(h, "hidden_act"),
                attn_bias=True, attn_out_bias=True, mlp_bias=True, lm_head_bias=True,
                parallel_residual=True, shared_attention_norm=True)


def _read_phi3(h: _HF) -> dict[str, Any]:
    fields = dict(_decoder(h, partial_rope=True), **_rms(h))
    if fields["rope_scaling"] is not None:
        raise h.unsupported(f"rope scaling {fields['rope_scaling']['rope_type']!r} for Phi-3")
    return dict(fields, **_window(h, h("sliding_window", "int", optional=True), [True] * fields["n_layer"]))


def _read_gemma2(h: _HF) -> dict[str, Any]:
    if h.data.get("use_bidirectional_attention"):
        raise h.unsupported("use_bidirectional_attention=true")
    fields = _decoder(h)
    bias = h("attention_bias", "bool")
    scale_base = h("query_pre_attn_scalar", "float")
    # transformers 5 default: layers 0, 2, 4 … slide, 1, 3, 5 … see everything
    sliding = _layer_types(h, fields["n_layer"], [(i + 1) % 2 == 1 for i in range(fields["n_layer"])])
    # `hidden_activation` is what Gemma 2 uses; old files carry a (possibly different) `hidden_act` too
    act_key = "hidden_activation" if h.data.get("hidden_activation") or "hidden_act" not in h.data else "hidden_act"
    return dict(
        fields, norm_class="rmsnorm", norm_eps=h("rms_norm_eps", "float"), norm_unit_offset=True,
        activation=_activation(h, act_key), attn_bias=bias, attn_out_bias=bias, post_norm=True,
        attn_scale_base=None if scale_base == fields["head_size"] else scale_base,
        attn_logit_softcap=h("attn_logit_softcapping", "float", optional=True),
        final_logit_softcap=h("final_logit_softcapping", "float", optional=True),
        scale_embeddings=True, **_window(h, h("sliding_window", "int", optional=True), sliding),
    )


def _read_qwen(h: _HF, qk_norm: str | None) -> dict[str, Any]:
    fields = dict(_decoder(h), **_rms(h))
    n = fields["n_layer"]
    window = h("sliding_window", "int", optional=True) if h("use_sliding_window", "bool") else None
    first_sliding = h("max_window_layers", "int")
    sliding = _layer_types(h, n, [i >= first_sliding for i in range(n)])
    if qk_norm is None:  # Qwen2: q/k/v always carry a bias, the output projection never
        bias = dict(attn_bias=True, attn_out_bias=False)
    else:
        b = h("attention_bias", "bool")
        bias = dict(attn_bias=b, attn_out_bias=b)
    return dict(fields, **bias, qk_norm=qk_norm, **_window(h, window, sliding))


def _read_olmo2(h: _HF) -> dict[str, Any]:
    bias = h("attention_bias", "bool")
    return dict(_decoder(h), **_rms(h), attn_bias=bias, attn_out_bias=bias, qk_norm="full",
                pre_norm=False, post_norm=True)


# ---------------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------------
def _int_if_whole(x: float) -> int | float:
    # transformers 5 validates field types strictly: an int field refuses 256.0
    return int(x) if float(x).is_integer() else float(x)


def _float(x: float | None) -> float | None:
    return None if x is None else float(x)


def _write_ids(c: Config) -> dict[str, Any]:
    return {"bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id}


def _write_rope(c: Config, partial: bool) -> dict[str, Any]:
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": float(c.rope_base)}
    if c.rope_scaling:
        params.update(c.rope_scaling)
    if partial:
        params["partial_rotary_factor"] = float(c.rotary_percentage)
    out: dict[str, Any] = {"rope_parameters": params, "rope_theta": float(c.rope_base)}  # v5 and v4 spellings
    if c.rope_scaling:
        out["rope_scaling"] = dict(c.rope_scaling)
    if partial:
        out["partial_rotary_factor"] = float(c.rotary_percentage)
    return out


def _write_decoder(c: Config, partial_rope: bool = False) -> dict[str, Any]:
    return dict(
        vocab_size=c.vocab_size, hidden_size=c.n_embd, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, num_key_value_heads=c.n_query_groups, head_dim=c.head_size,
        intermediate_size=c.intermediate_size, max_position_embeddings=c.block_size,
        tie_word_embeddings=c.tie_embeddings, **_write_rope(c, partial_rope), **_write_ids(c),
    )


def _hf_activation(c: Config, tanh_name: str = "gelu_pytorch_tanh") -> str:
    return {"gelu_tanh": tanh_name}.get(c.activation, c.activation)


def _write_rms(c: Config) -> dict[str, Any]:
    return {"rms_norm_eps": float(c.norm_eps), "hidden_act": _hf_activation(c)}


def _layer_type_list(c: Config) -> list[str]:
    return [_SLIDING if c.layer_uses_sliding_window(i) else _FULL for i in range(c.n_layer)]


def _write_gpt2(c: Config) -> dict[str, Any]:
    return dict(vocab_size=c.vocab_size, n_layer=c.n_layer, n_embd=c.n_embd, n_head=c.n_head,
                n_inner=c.intermediate_size, n_positions=c.block_size, n_ctx=c.block_size,
                layer_norm_epsilon=float(c.norm_eps), activation_function=_hf_activation(c, "gelu_new"),
                scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                tie_word_embeddings=c.tie_embeddings, **_write_ids(c))


def _write_gpt_neox(c: Config) -> dict[str, Any]:
    out = dict(_write_decoder(c, partial_rope=True), layer_norm_eps=float(c.norm_eps), hidden_act=_hf_activation(c),
               attention_bias=c.attn_bias, use_parallel_residual=c.parallel_residual,
               rotary_pct=float(c.rotary_percentage), rotary_emb_base=float(c.rope_base))
    del out["head_dim"], out["num_key_value_heads"]
    return out


def _write_llama(c: Config) -> dict[str, Any]:
    return dict(_write_decoder(c), **_write_rms(c), attention_bias=c.attn_bias, mlp_bias=c.mlp_bias)


def _write_mistral(c: Config) -> dict[str, Any]:
    return dict(_write_decoder(c), **_write_rms(c), sliding_window=c.sliding_window)


def _write_mixtral(c: Config) -> dict[str, Any]:
    return dict(_write_mistral(c), num_local_experts=c.n_expert, num_experts_per_tok=c.n_expert_per_token)


def _write_phi(c: Config) -> dict[str, Any]:
    out = dict(_write_decoder(c, partial_rope=True), layer_norm_eps=float(c.norm_eps),
               hidden_act=_hf_activation(c, "gelu_new"), qk_layernorm=False)
    del out["head_dim"]
    return out


def _write_phi3(c: Config) -> dict[str, Any]:
    return dict(_write_decoder(c, partial_rope=True), **_write_rms(c), sliding_window=c.sliding_window)


def _write_gemma2(c: Config) -> dict[str, Any]:
    act = _hf_activation(c)
    return dict(_write_decoder(c), rms_norm_eps=float(c.norm_eps), hidden_activation=act, hidden_act=act,
                attention_bias=c.attn_bias, query_pre_attn_scalar=_int_if_whole(c.attn_scale_base or c.head_size),
                attn_logit_softcapping=_float(c.attn_logit_softcap), final_logit_softcapping=_float(c.final_logit_softcap),
                # Gemma 2 always has a window; layer_types says which layers use it
                sliding_window=c.sliding_window or c.block_size, layer_types=_layer_type_list(c))


def _write_qwen(c: Config) -> dict[str, Any]:
    out = dict(_write_decoder(c), **_write_rms(c), use_sliding_window=c.sliding_window is not None,
               sliding_window=c.sliding_window, max_window_layers=0, layer_types=_layer_type_list(c))
    if c.qk_norm == "head":
        out["attention_bias"] = c.attn_bias
    return out


def _write_olmo2(c: Config) -> dict[str, Any]:
    return dict(_write_decoder(c), **_write_rms(c), attention_bias=c.attn_bias)


# ---------------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Arch:
    """How one HF architecture spells a `Config`."""

    model_type: str
    defaults: dict[str, Any]
    """Values transformers 5 uses when config.json lacks the key (keys without one are required)."""
    read: Callable[[_HF], dict[str, Any]]
    write: Callable[[Config], dict[str, Any]]


_IDS = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
_COMMON = {"num_key_value_heads": None, "head_dim": None, "rope_theta": 10000.0, "tie_word_embeddings": False,
           "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, **_IDS}

ARCHITECTURES: dict[str, _Arch] = {
    "GPT2LMHeadModel": _Arch("gpt2", {
        "n_positions": 1024, "n_inner": None, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "tie_word_embeddings": True,
        "bos_token_id": 50256, "eos_token_id": 50256, "pad_token_id": None,
    }, _read_gpt2, _write_gpt2),
    "GPTNeoXForCausalLM": _Arch("gpt_neox", {
        **_COMMON, "max_position_embeddings": 2048, "layer_norm_eps": 1e-5, "hidden_act": "gelu",
        "attention_bias": True, "use_parallel_residual": True, "partial_rotary_factor": 0.25,
        "bos_token_id": 0, "eos_token_id": 2,
    }, _read_gpt_neox, _write_gpt_neox),
    "LlamaForCausalLM": _Arch("llama", {
        **_COMMON, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "bos_token_id": 1, "eos_token_id": 2,
    }, _read_llama, _write_llama),
    "MistralForCausalLM": _Arch("mistral", {
        **_COMMON, "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "sliding_window": 4096,
        "bos_token_id": 1, "eos_token_id": 2,
    }, _read_mistral, _write_mistral),
    "MixtralForCausalLM": _Arch("mixtral", {
        **_COMMON, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 1e6,
        "sliding_window": None, "num_local_experts": 8, "num_experts_per_tok": 2, "bos_token_id": 1, "eos_token_id": 2,
    }, _read_mixtral, _write_mixtral),
    "PhiForCausalLM": _Arch("phi", {
        **_COMMON, "max_position_embeddings": 2048, "layer_norm_eps": 1e-5, "hidden_act": "gelu_new",
        "partial_rotary_factor": 0.5, "qk_layernorm": False, "bos_token_id": 1, "eos_token_id": 2,
    }, _read_phi, _write_phi),
    "Phi3ForCausalLM": _Arch("phi3", {
        **_COMMON, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "partial_rotary_factor": 1.0,
        "sliding_window": None, "bos_token_id": 1, "eos_token_id": 32000, "pad_token_id": 32000,
    }, _read_phi3, _write_phi3),
    "Gemma2ForCausalLM": _Arch("gemma2", {
        **_COMMON, "head_dim": 256, "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True, "query_pre_attn_scalar": 256,
        "sliding_window": 4096, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
    }, _read_gemma2, _write_gemma2),
    "Qwen2ForCausalLM": _Arch("qwen2", {
        **_COMMON, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "use_sliding_window": False,
        "sliding_window": None, "max_window_layers": 28,
    }, lambda h: _read_qwen(h, qk_norm=None), _write_qwen),
    "Qwen3ForCausalLM": _Arch("qwen3", {
        **_COMMON, "head_dim": 128, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
        "use_sliding_window": False, "sliding_window": None, "max_window_layers": 28,
    }, lambda h: _read_qwen(h, qk_norm="head"), _write_qwen),
    "Olmo2ForCausalLM": _Arch("olmo2", {
        **_COMMON, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "eos_token_id": 50279, "pad_token_id": 1,
    }, _read_olmo2, _write_olmo2),
}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(ARCHITECTURES)
_BY_MODEL_TYPE = {arch.model_type: name for name, arch in ARCHITECTURES.items()}


def hf_architecture(hf: dict[str, Any], source: str) -> str:
    """The supported architecture an HF config dict describes (`architectures[0]`, else `model_type`)."""
    archs = hf.get("architectures")
    if isinstance(archs, list) and archs:
        name = archs[0]
    elif "model_type" in hf:
        name = hf["model_type"]
        name = _BY_MODEL_TYPE.get(name, name) if isinstance(name, str) else name
    else:
        raise ConfigError(f"{source}: neither 'architectures' nor 'model_type' is set; is this an HF config.json?")
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise ConfigError(f"{source}: architecture {name!r} is not supported "
                          f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    return name


def hf_to_fields(hf: dict[str, Any], source: str = "config.json") -> dict[str, Any]:
    """The `Config` keyword arguments an HF `config.json` dict describes (`Config.from_hf` builds it).

    Args:
        hf: The parsed `config.json`.
        source: Where it came from; every error message names it.

    Returns:
        The fields of the equivalent `Config`, with `name` and `hf_architecture` set.

    Raises:
        ConfigError: unknown architecture, a missing/mistyped key, or a feature lmforge lacks.
    """
    if not isinstance(hf, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(hf).__name__}")
    name = hf_architecture(hf, source)
    arch = ARCHITECTURES[name]
    fields = arch.read(_HF(hf, source, arch.defaults))
    default_name = Path(source).parent.name if Path(source).name == "config.json" else ""
    model_name = hf.get("_name_or_path") or default_name or arch.model_type
    return dict(name=str(model_name), hf_architecture=name, **fields)


def config_to_hf(config: Config, dtype: str | None = None) -> dict[str, Any]:
    """The HF `config.json` dict for `config` (transformers 4 and 5 both load it).

    Args:
        config: The model config (read by attribute); `config.hf_architecture` picks the HF architecture.
        dtype: Torch dtype name of the weights written next to it (`"bfloat16"` …), if known.

    Raises:
        ConfigError: the architecture is unknown or cannot express one of the config's fields.
    """
    name = config.hf_architecture
    if name not in ARCHITECTURES:
        raise ConfigError(f"hf_architecture {name!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    arch = ARCHITECTURES[name]
    hf: dict[str, Any] = {"architectures": [name], "model_type": arch.model_type, **arch.write(config)}
    if dtype is not None:
        hf["dtype"] = dtype  # transformers 5
        hf["torch_dtype"] = dtype  # transformers 4
    # read our own output back: whatever does not survive is a feature this architecture lacks
    ours, theirs = _behaviour(config), _behaviour(type(config).from_hf(hf, source=f"{name} config"))
    for key, value in ours.items():
        if value != theirs[key]:
            raise ConfigError(f"{name} cannot express {key}={value!r} (it would read back as {theirs[key]!r}); "
                              "choose another hf_architecture or change the config")
    return hf


def _behaviour(c: Config) -> dict[str, Any]:
    """The fields that change what the model computes, with equivalent spellings made equal.

    (`attn_scale_base=None` means the head size; a rope base is moot with learned positions …)
    """
    d = {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name not in ("name", "hf_source")}
    d["attn_scale_base"] = float(c.attn_scale_base or c.head_size)
    d["sliding_window_pattern"] = [c.layer_uses_sliding_window(i) for i in range(c.n_layer)]
    if not any(d["sliding_window_pattern"]):
        d["sliding_window"] = None
    if c.position_embedding == "learned":
        d.update(rope_base=None, rope_scaling=None, rotary_percentage=None)
    if c.norm_class == "rmsnorm":
        d["norm_bias"] = None
    if not c.parallel_residual:
        d["shared_attention_norm"] = None
    if c.mlp_class != "moe":
        d.update(n_expert=None, n_expert_per_token=None)
    for key in ("eos_token_id",):  # [2] and 2 name the same single id
        if isinstance(d[key], (list, tuple)):
            d[key] = list(d[key]) if len(d[key]) != 1 else d[key][0]
    return d
