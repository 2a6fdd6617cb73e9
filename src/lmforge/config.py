"""Model configuration: one dataclass describes every supported decoder family.

This module imports no torch, so listing models and parsing YAML stays fast.
Family differences are plain fields whose defaults turn features off; the model
never branches on a family name.

Data flows one way: this module builds `Config`s from the named configs' fields
(`lmforge.model_registry`) and from HF `config.json` fields (`lmforge.hf_config`);
neither of those imports this module back.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmforge.errors import ConfigError

__all__ = ["CONFIG_FORMAT_VERSION", "Config", "ConfigError", "get_config", "list_configs", "named_configs"]

CONFIG_FORMAT_VERSION = 1


@dataclass
class Config:
    """Architecture of a decoder-only transformer.

    Attributes:
        name: Human-readable model name (a registry key for named configs).
        hf_architecture: The HF `architectures[0]` this config exports to (`LlamaForCausalLM` …).
        vocab_size: Number of rows in the embedding table.
        n_layer: Number of transformer blocks.
        n_embd: Hidden size.
        n_head: Number of query heads.
        n_query_groups: Number of key/value heads (GQA); `n_head` means plain multi-head attention.
        head_size: Size of one head; derived as `n_embd // n_head` when not given.
        intermediate_size: Hidden size of the MLP (per expert for MoE).
        block_size: Longest sequence the model was trained for (max position embeddings).
        norm_class: `rmsnorm` or `layernorm`.
        norm_eps: Epsilon of every norm.
        norm_bias: Whether LayerNorms carry a bias (ignored for RMSNorm).
        norm_unit_offset: Norm weight is stored as `w - 1` and applied as `1 + w` (Gemma).
        mlp_class: `gated` (SwiGLU/GeGLU), `mlp` (up → act → down) or `moe` (gated experts).
        activation: `silu`, `gelu` (exact), `gelu_tanh`, or `relu`.
        n_expert: Number of experts when `mlp_class == "moe"`.
        n_expert_per_token: Experts each token is routed to.
        attn_bias: Bias on the q/k/v projections.
        attn_out_bias: Bias on the attention output projection.
        mlp_bias: Bias on the MLP projections.
        lm_head_bias: Bias on the output head (Phi-2).
        position_embedding: `rope` or `learned` (GPT-2).
        rotary_percentage: Fraction of each head's dims that are rotated (Pythia 0.25, Phi-2 0.4).
        rope_base: Rotary base θ.
        rope_scaling: HF-style rope scaling dict (`{"rope_type": "llama3", ...}` or `linear`).
        parallel_residual: Attention and MLP both read the block input (GPT-NeoX, Phi-2).
        shared_attention_norm: With `parallel_residual`, one norm feeds both branches (Phi-2).
        pre_norm: Norm applied to each sublayer's input (almost everyone).
        post_norm: Norm applied to each sublayer's output before the residual add (Gemma 2, OLMo-2).
        qk_norm: None, `head` (RMSNorm per head, Qwen3) or `full` (RMSNorm over the projection, OLMo-2).
        sliding_window: Attention window in tokens, or None.
        sliding_window_pattern: 1: every layer slides; N: layer i slides unless `i % N == N - 1` (Gemma 2: 2).
        attn_logit_softcap: tanh soft-capping of attention scores (Gemma 2).
        final_logit_softcap: tanh soft-capping of output logits (Gemma 2).
        attn_scale_base: Scores are scaled by `attn_scale_base ** -0.5` (default: head_size).
        scale_embeddings: Multiply token embeddings by `sqrt(n_embd)` (Gemma).
        tie_embeddings: Output head shares the embedding matrix.
        bos_token_id / eos_token_id / pad_token_id: Special ids carried for generation defaults.
    """

    name: str = "custom"
    hf_architecture: str = "LlamaForCausalLM"
    vocab_size: int = 32000
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_query_groups: int | None = None
    head_size: int | None = None
    intermediate_size: int | None = None
    block_size: int = 2048
    norm_class: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_eps: float = 1e-5
    norm_bias: bool = True
    norm_unit_offset: bool = False
    mlp_class: Literal["gated", "mlp", "moe"] = "gated"
    activation: Literal["silu", "gelu", "gelu_tanh", "relu"] = "silu"
    n_expert: int = 0
    n_expert_per_token: int = 0
    attn_bias: bool = False
    attn_out_bias: bool = False
    mlp_bias: bool = False
    lm_head_bias: bool = False
    position_embedding: Literal["rope", "learned"] = "rope"
    rotary_percentage: float = 1.0
    rope_base: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    parallel_residual: bool = False
    shared_attention_norm: bool = False
    pre_norm: bool = True
    post_norm: bool = False
    qk_norm: Literal["head", "full"] | None = None
    sliding_window: int | None = None
    sliding_window_pattern: int = 1
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    attn_scale_base: float | None = None
    scale_embeddings: bool = False
    tie_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    hf_source: str | None = field(default=None, compare=False)
    """Where the named config's numbers come from (an HF repo's config.json)."""

    def __post_init__(self) -> None:
        # sizes first: the derivations below divide by them, the model allocates them
        for key in ("vocab_size", "n_layer", "n_embd", "n_head", "n_query_groups", "head_size", "intermediate_size",
                    "block_size"):
            value = getattr(self, key)
            if value is None and key in ("n_query_groups", "head_size", "intermediate_size"):
                continue  # derived below
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key} must be an int >= 1, got {value!r}")
        for key in ("sliding_window", "attn_scale_base", "attn_logit_softcap", "final_logit_softcap"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be > 0 (or None for none), got {getattr(self, key)!r}")
        if self.n_query_groups is None:
            self.n_query_groups = self.n_head
        if self.head_size is None:
            if self.n_embd % self.n_head:
                raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
            self.head_size = self.n_embd // self.n_head
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.n_embd
        if self.n_head % self.n_query_groups:
            raise ConfigError(f"n_head ({self.n_head}) must be a multiple of n_query_groups ({self.n_query_groups})")
        choices = {
            "norm_class": ("rmsnorm", "layernorm"),
            "mlp_class": ("gated", "mlp", "moe"),
            "activation": ("silu", "gelu", "gelu_tanh", "relu"),
            "position_embedding": ("rope", "learned"),
            "qk_norm": (None, "head", "full"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}={getattr(self, key)!r} is not one of {allowed}")
        if self.mlp_class == "moe" and not (0 < self.n_expert_per_token <= self.n_expert):
            raise ConfigError("mlp_class='moe' needs 0 < n_expert_per_token <= n_expert")
        if not 0.0 < self.rotary_percentage <= 1.0:
            raise ConfigError(f"rotary_percentage must be in (0, 1], got {self.rotary_percentage}")
        if self.rope_n_elem % 2:
            raise ConfigError(f"rotated dims per head must be even, got {self.rope_n_elem}")
        if self.sliding_window_pattern < 1:
            raise ConfigError("sliding_window_pattern must be >= 1")

    # ---- derived quantities -------------------------------------------------------------
    @property
    def rope_n_elem(self) -> int:
        """Number of rotated dimensions per head."""
        return int(self.rotary_percentage * self.head_size)

    @property
    def q_per_kv(self) -> int:
        return self.n_head // self.n_query_groups

    def layer_uses_sliding_window(self, i: int) -> bool:
        if self.sliding_window is None:
            return False
        p = self.sliding_window_pattern
        return p == 1 or i % p != p - 1

    @property
    def eos_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, (list, tuple)) else [self.eos_token_id]

    def num_parameters(self) -> int:
        """Parameter count computed from the fields alone (no torch needed).

        Counts the tensors `GPT(config)` creates; a tied head is counted once.
        """
        d, hs = self.n_embd, self.head_size
        q_out, kv_out = self.n_head * hs, self.n_query_groups * hs
        norm = d * (2 if self.norm_class == "layernorm" and self.norm_bias else 1)
        attn = d * (q_out + 2 * kv_out) + q_out * d
        if self.attn_bias:
            attn += q_out + 2 * kv_out
        if self.attn_out_bias:
            attn += d
        if self.qk_norm == "head":
            attn += 2 * hs
        elif self.qk_norm == "full":
            attn += q_out + kv_out
        inter = self.intermediate_size
        if self.mlp_class == "mlp":
            mlp = 2 * d * inter + ((inter + d) if self.mlp_bias else 0)
        else:
            one = 3 * d * inter + ((2 * inter + d) if self.mlp_bias else 0)
            mlp = one if self.mlp_class == "gated" else self.n_expert * one + d * self.n_expert
        n_norms = 0
        if self.pre_norm:
            n_norms += 1 if self.parallel_residual and self.shared_attention_norm else 2
        if self.post_norm:
            n_norms += 2
        block = attn + mlp + n_norms * norm
        total = self.n_layer * block + self.vocab_size * d + norm
        if self.position_embedding == "learned":
            total += self.block_size * d
        if not self.tie_embeddings:
            total += self.vocab_size * d
        if self.lm_head_bias:
            total += self.vocab_size
        return total

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lmforge_config_version"] = CONFIG_FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        data = dict(data)
        data.pop("lmforge_config_version", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            hint = _suggest(unknown[0], known)
            raise ConfigError(f"{source}: unknown config key {unknown[0]!r}{hint}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        from lmforge._io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_file(cls, path: str | Path) -> Config:
        from lmforge._io import read_json

        path = Path(path)
        data = read_json(path, ConfigError)
        if "lmforge_config_version" not in data:
            return cls.from_hf(data, source=str(path))
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_name(cls, name: str, /, **overrides: Any) -> Config:
        """A fresh copy of a named config (`lmforge models` lists them), with `overrides` applied.

        Args:
            name: A registry name (case-insensitive) or alias, e.g. `"gpt2"`, `"Llama-3.1-8B"`.
            **overrides: `Config` fields to change, e.g. `n_layer=2` for a shallow test model.
                Changing `n_embd`/`n_head` re-derives `head_size`, `n_query_groups` (multi-head
                models) and `intermediate_size` (4 * n_embd) where the named config had them
                derived and the overrides do not set them.

        Returns:
            A new `Config`; mutating it does not touch the registry.

        Raises:
            ConfigError: unknown name, unknown override key, or an inconsistent result.
        """
        from lmforge.model_registry import canonical_name

        base = named_configs()[canonical_name(name)]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            hint = _suggest(unknown[0], known)
            raise ConfigError(f"get_config({base.name!r}): unknown override {unknown[0]!r}{hint}")
        values = {f.name: copy.deepcopy(getattr(base, f.name)) for f in dataclasses.fields(cls)}
        if "n_embd" in overrides or "n_head" in overrides:
            # re-derive what the named config derived (head_size = n_embd // n_head, MHA kv heads,
            # intermediate = 4 * n_embd), so `n_embd=128, n_head=4` on gpt2 gives head_size 32, not 64
            if "head_size" not in overrides and base.head_size * base.n_head == base.n_embd:
                values["head_size"] = None
            if "n_query_groups" not in overrides and base.n_query_groups == base.n_head:
                values["n_query_groups"] = None
        if "n_embd" in overrides and "intermediate_size" not in overrides and base.intermediate_size == 4 * base.n_embd:
            values["intermediate_size"] = None
        values.update(overrides)
        try:
            return cls(**values)
        except TypeError as e:  # a value of the wrong kind, e.g. n_layer="x" compared with ints
            raise ConfigError(f"get_config({base.name!r}): bad override value ({e})") from None

    @classmethod
    def from_hf(cls, hf: dict[str, Any] | str | Path, source: str | None = None) -> Config:
        """Derive a config from an HF `config.json` (dict or path) of a supported architecture.

        Raises:
            ConfigError: unknown architecture, a missing/mistyped key, a feature lmforge lacks, or
                values that do not make a consistent config; every message names `source`.
        """
        from lmforge.hf_config import hf_to_fields

        if not isinstance(hf, dict):
            path = Path(hf)
            if path.is_dir():
                path = path / "config.json"
            source = source or str(path)
            from lmforge._io import read_json

            hf = read_json(path, ConfigError)
        source = source or "config.json"
        fields = hf_to_fields(hf, source)
        try:
            return cls(**fields)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_hf(self) -> dict[str, Any]:
        """The HF `config.json` dict for this architecture."""
        from lmforge.hf_config import config_to_hf

        return config_to_hf(self)


@functools.cache
def named_configs() -> dict[str, Config]:
    """Every named config by its canonical name (the HF repo's name), in registry (family) order.

    Built once from `lmforge.model_registry`'s data on first use; treat it as read-only and take a
    fresh copy with `Config.from_name`.
    """
    from lmforge.model_registry import ENTRIES

    return {name: Config(**fields) for name, fields in ENTRIES.items()}


def get_config(name: str, /, **overrides: Any) -> Config:
    """`Config.from_name(name, **overrides)`: a fresh copy of a named config."""
    return Config.from_name(name, **overrides)


def list_configs() -> list[Config]:
    """Copies of every named config, in registry order (family by family)."""
    return [copy.deepcopy(c) for c in named_configs().values()]


def _suggest(word: str, options: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, sorted(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""

