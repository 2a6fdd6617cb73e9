"""Hugging Face checkpoints <-> lmforge state dicts.

Every supported architecture is one `Converter` in `CONVERTERS`: a declarative map
`{hf_key_template: rule}` where `{i}` stands for a layer index and `{e}` for an expert index, and
a rule is either our key template (a rename), `None` (an HF key dropped on purpose: causal-mask
buffers, rotary `inv_freq`) or a `Transform` (one HF tensor that is not a plain rename: GPT-2's
transposed Conv1D weights and fused q|k|v, GPT-NeoX's per-head interleaved q/k/v, Phi-3's fused
`qkv_proj`/`gate_up_proj`, transformers 5's fused 3-D Mixtral experts). The driver looks the
converter up by `config.hf_architecture` and never names a family.

Loading fails loudly: an HF key no rule matches, a tensor the config does not expect, a wrong shape
or a missing tensor is an `LmforgeError` naming the key and the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge._io import atomic_write, atomic_write_text, parse_dtype
from lmforge.config import Config, ConfigError
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    import torch

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PT_BIN, PT_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


# ---------------------------------------------------------------------------------------------
# the declarative maps
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Transform:
    """One HF tensor that maps onto our tensors by more than a rename.

    Attributes:
        ours: Our key templates, in the order `split` returns them; a template with `{e}` stands for
            one key per expert (`e = 0 … n_expert-1`, all experts of the first template first).
        split: HF tensor -> our tensors.
        join: Our tensors -> the HF tensor (the exact inverse of `split`).
    """

    ours: tuple[str, ...]
    split: Callable[[torch.Tensor, Config], list[torch.Tensor]]
    join: Callable[[list[torch.Tensor], Config], torch.Tensor]


Rule = str | Transform | None


@dataclass(frozen=True)
class Converter:
    """How one HF architecture names and lays out its tensors.

    Attributes:
        weights: `{hf_key_template: rule}`, used for loading and exporting.
        load_only: Other layouts accepted when loading (exports always use `weights`).
        prefix: The base-model prefix some checkpoints omit (GPT-2's own files have `h.0…`, not
            `transformer.h.0…`); a key that matches no rule is retried with it.
    """

    weights: dict[str, Rule]
    load_only: dict[str, Rule] = field(default_factory=dict)
    prefix: str = "model."

    def rules(self) -> list[tuple[re.Pattern[str], str, Rule]]:
        return [(_pattern(t), t, r) for t, r in (*self.weights.items(), *self.load_only.items())]


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{e\}", r"(?P<e>\d+)"))


def _qkv_sizes(c: Config) -> list[int]:
    return [c.n_head * c.head_size, c.n_query_groups * c.head_size, c.n_query_groups * c.head_size]


def _cat(ts: list[torch.Tensor], dim: int) -> torch.Tensor:
    import torch  # lazily: building the converter table must not import torch

    return torch.cat(ts, dim=dim)


def _stack(ts: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    import torch

    return torch.stack(ts, dim=dim)


def _rows(ours: tuple[str, ...], sizes: Callable[[Config], list[int]]) -> Transform:
    """Our tensors stacked along dim 0 (Phi-3 `qkv_proj`/`gate_up_proj`, GPT-2 `c_attn.bias`)."""
    return Transform(ours, lambda t, c: list(t.split(sizes(c), dim=0)), lambda ts, c: _cat(ts, 0))


def _conv1d(*ours: str, sizes: Callable[[Config], list[int]] | None = None) -> Transform:
    """GPT-2's Conv1D stores `weight` as (in, out): transpose, and split the fused q|k|v columns."""

    def split(t: torch.Tensor, c: Config) -> list[torch.Tensor]:
        parts = t.split(sizes(c), dim=1) if sizes else [t]
        return [p.T for p in parts]

    return Transform(ours, split, lambda ts, c: _cat([x.T for x in ts], 1))


def _neox_qkv(kind: str) -> Transform:
    """GPT-NeoX `query_key_value`: rows grouped per head as (nh, [q|k|v], hs)."""

    def split(t: torch.Tensor, c: Config) -> list[torch.Tensor]:
        grouped = t.reshape(c.n_head, 3, c.head_size, *t.shape[1:])  # (nh, 3, hs[, d])
        return [grouped[:, j].reshape(c.n_head * c.head_size, *t.shape[1:]) for j in range(3)]

    def join(ts: list[torch.Tensor], c: Config) -> torch.Tensor:
        grouped = _stack([x.reshape(c.n_head, c.head_size, *x.shape[1:]) for x in ts], dim=1)
        return grouped.reshape(3 * c.n_head * c.head_size, *ts[0].shape[1:])

    attn = "layers.{i}.self_attn."
    return Transform((f"{attn}q_proj.{kind}", f"{attn}k_proj.{kind}", f"{attn}v_proj.{kind}"), split, join)


def _experts_gate_up() -> Transform:
    """transformers 5 Mixtral `experts.gate_up_proj`: (E, 2·I, d), gate rows first."""

    def split(t: torch.Tensor, c: Config) -> list[torch.Tensor]:
        gate, up = t.split(c.intermediate_size, dim=1)
        return [*gate.unbind(0), *up.unbind(0)]

    def join(ts: list[torch.Tensor], c: Config) -> torch.Tensor:
        n = c.n_expert
        return _cat([_stack(ts[:n]), _stack(ts[n:])], 1)

    expert = "layers.{i}.mlp.experts.{e}."
    return Transform((f"{expert}gate_proj.weight", f"{expert}up_proj.weight"), split, join)


def _experts_down() -> Transform:
    """transformers 5 Mixtral `experts.down_proj`: (E, d, I)."""
    return Transform(("layers.{i}.mlp.experts.{e}.down_proj.weight",),
                     lambda t, c: list(t.unbind(0)), lambda ts, c: _stack(ts))


def _wb(hf: str, ours: str, kinds: tuple[str, ...] = ("weight", "bias")) -> dict[str, Rule]:
    """`{hf}.weight -> {ours}.weight` (and `.bias`); absent biases are simply never matched."""
    return {f"{hf}.{k}": f"{ours}.{k}" for k in kinds}


def _block(hf_layer: str, pairs: dict[str, str], kinds: tuple[str, ...] = ("weight", "bias")) -> dict[str, Rule]:
    out: dict[str, Rule] = {}
    for hf, ours in pairs.items():
        out |= _wb(f"{hf_layer}.{hf}", f"layers.{{i}}.{ours}", kinds)
    return out


_L = "model.layers.{i}"
_ATTN = {f"self_attn.{p}": f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
_GATED = {f"mlp.{p}": f"mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")}
_QK_NORM = {"self_attn.q_norm": "self_attn.q_norm", "self_attn.k_norm": "self_attn.k_norm"}
_PRE_NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"}
_ROTARY = {f"{_L}.self_attn.rotary_emb.inv_freq": None}  # old checkpoints saved the rotary buffer


def _llama_like(layer: dict[str, str], extra: dict[str, Rule] | None = None) -> dict[str, Rule]:
    """The `model.*` + `lm_head` layout shared by Llama and its descendants."""
    return {
        "model.embed_tokens.weight": "embed_tokens.weight",
        **_block(_L, layer),
        **_ROTARY,
        **(extra or {}),
        "model.norm.weight": "norm.weight",
        "lm_head.weight": "lm_head.weight",
    }


_GPT2_LAYER = "transformer.h.{i}"
_NEOX_LAYER = "gpt_neox.layers.{i}"

CONVERTERS: dict[str, Converter] = {
    "GPT2LMHeadModel": Converter(prefix="transformer.", weights={
        "transformer.wte.weight": "embed_tokens.weight",
        "transformer.wpe.weight": "embed_positions.weight",
        **_block(_GPT2_LAYER, {"ln_1": "attn_norm", "ln_2": "mlp_norm"}),
        f"{_GPT2_LAYER}.attn.c_attn.weight": _conv1d(
            *(f"layers.{{i}}.self_attn.{p}_proj.weight" for p in "qkv"), sizes=_qkv_sizes),
        f"{_GPT2_LAYER}.attn.c_attn.bias": _rows(
            tuple(f"layers.{{i}}.self_attn.{p}_proj.bias" for p in "qkv"), _qkv_sizes),
        f"{_GPT2_LAYER}.attn.c_proj.weight": _conv1d("layers.{i}.self_attn.o_proj.weight"),
        f"{_GPT2_LAYER}.attn.c_proj.bias": "layers.{i}.self_attn.o_proj.bias",
        f"{_GPT2_LAYER}.mlp.c_fc.weight": _conv1d("layers.{i}.mlp.up_proj.weight"),
        f"{_GPT2_LAYER}.mlp.c_fc.bias": "layers.{i}.mlp.up_proj.bias",
        f"{_GPT2_LAYER}.mlp.c_proj.weight": _conv1d("layers.{i}.mlp.down_proj.weight"),
        f"{_GPT2_LAYER}.mlp.c_proj.bias": "layers.{i}.mlp.down_proj.bias",
        # causal-mask buffers that older transformers saved with the weights
        f"{_GPT2_LAYER}.attn.bias": None,
        f"{_GPT2_LAYER}.attn.masked_bias": None,
        **_wb("transformer.ln_f", "norm"),
        "lm_head.weight": "lm_head.weight",
    }),
    "GPTNeoXForCausalLM": Converter(prefix="gpt_neox.", weights={
        "gpt_neox.embed_in.weight": "embed_tokens.weight",
        **_block(_NEOX_LAYER, {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm",
                               "attention.dense": "self_attn.o_proj",
                               "mlp.dense_h_to_4h": "mlp.up_proj", "mlp.dense_4h_to_h": "mlp.down_proj"}),
        f"{_NEOX_LAYER}.attention.query_key_value.weight": _neox_qkv("weight"),
        f"{_NEOX_LAYER}.attention.query_key_value.bias": _neox_qkv("bias"),
        f"{_NEOX_LAYER}.attention.rotary_emb.inv_freq": None,
        f"{_NEOX_LAYER}.attention.bias": None,
        f"{_NEOX_LAYER}.attention.masked_bias": None,
        **_wb("gpt_neox.final_layer_norm", "norm"),
        "embed_out.weight": "lm_head.weight",
    }),
    "LlamaForCausalLM": Converter(_llama_like({**_PRE_NORMS, **_ATTN, **_GATED})),
    "MistralForCausalLM": Converter(_llama_like({**_PRE_NORMS, **_ATTN, **_GATED})),
    "MixtralForCausalLM": Converter(
        # what transformers (4 and 5) writes: one tensor per expert
        _llama_like({**_PRE_NORMS, **_ATTN}, {
            f"{_L}.block_sparse_moe.gate.weight": "layers.{i}.mlp.router.weight",
            f"{_L}.block_sparse_moe.experts.{{e}}.w1.weight": "layers.{i}.mlp.experts.{e}.gate_proj.weight",
            f"{_L}.block_sparse_moe.experts.{{e}}.w2.weight": "layers.{i}.mlp.experts.{e}.down_proj.weight",
            f"{_L}.block_sparse_moe.experts.{{e}}.w3.weight": "layers.{i}.mlp.experts.{e}.up_proj.weight",
        }),
        load_only={  # transformers 5's in-memory layout: experts fused into 3-D tensors
            f"{_L}.mlp.gate.weight": "layers.{i}.mlp.router.weight",
            f"{_L}.mlp.experts.gate_up_proj": _experts_gate_up(),
            f"{_L}.mlp.experts.down_proj": _experts_down(),
        },
    ),
    "PhiForCausalLM": Converter({
        "model.embed_tokens.weight": "embed_tokens.weight",
        **_block(_L, {"input_layernorm": "attn_norm", "self_attn.q_proj": "self_attn.q_proj",
                      "self_attn.k_proj": "self_attn.k_proj", "self_attn.v_proj": "self_attn.v_proj",
                      "self_attn.dense": "self_attn.o_proj", "mlp.fc1": "mlp.up_proj", "mlp.fc2": "mlp.down_proj"}),
        **_ROTARY,
        **_wb("model.final_layernorm", "norm"),
        **_wb("lm_head", "lm_head"),
    }),
    "Phi3ForCausalLM": Converter(_llama_like({**_PRE_NORMS, "self_attn.o_proj": "self_attn.o_proj",
                                              "mlp.down_proj": "mlp.down_proj"}, {
        f"{_L}.self_attn.qkv_proj.weight": _rows(
            tuple(f"layers.{{i}}.self_attn.{p}_proj.weight" for p in "qkv"), _qkv_sizes),
        f"{_L}.mlp.gate_up_proj.weight": _rows(
            ("layers.{i}.mlp.gate_proj.weight", "layers.{i}.mlp.up_proj.weight"),
            lambda c: [c.intermediate_size, c.intermediate_size]),
    })),
    "Gemma2ForCausalLM": Converter(_llama_like({
        "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attn_norm",
        "pre_feedforward_layernorm": "mlp_norm", "post_feedforward_layernorm": "post_mlp_norm",
        **_ATTN, **_GATED})),
    "Qwen2ForCausalLM": Converter(_llama_like({**_PRE_NORMS, **_ATTN, **_GATED})),
    "Qwen3ForCausalLM": Converter(_llama_like({**_PRE_NORMS, **_ATTN, **_QK_NORM, **_GATED})),
    "Olmo2ForCausalLM": Converter(_llama_like({
        "post_attention_layernorm": "post_attn_norm", "post_feedforward_layernorm": "post_mlp_norm",
        **_ATTN, **_QK_NORM, **_GATED})),
}


def converter_for(config: Config) -> Converter:
    """The converter of `config.hf_architecture` (an `LmforgeError` names the supported ones)."""
    try:
        return CONVERTERS[config.hf_architecture]
    except KeyError:
        raise ConfigError(f"hf_architecture {config.hf_architecture!r} has no weight converter "
                          f"(supported: {', '.join(CONVERTERS)})") from None


def _expand(templates: tuple[str, ...], i: str | int | None, config: Config) -> list[str]:
    keys = []
    for t in templates:
        experts = range(config.n_expert) if "{e}" in t else [None]
        keys += [t.format(i=i, e=e) for e in experts]
    return keys


# ---------------------------------------------------------------------------------------------
# HF -> ours
# ---------------------------------------------------------------------------------------------
def expected_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Our state-dict keys and shapes for `config`, without allocating (a tied head is left out)."""
    import torch

    from lmforge.model import GPT

    with torch.device("meta"):
        model = GPT(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        del shapes["lm_head.weight"]
    return shapes


def convert_from_hf(tensors: Iterator[tuple[str, torch.Tensor, str]], config: Config,
                    dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Map `(hf_key, tensor, file)` triples onto our state dict, checking names and shapes.

    Returns:
        Our state dict. With `tie_embeddings`, `lm_head.weight` is the very tensor
        `embed_tokens.weight` (so `GPT.load_state_dict` works strictly).
    """
    import torch

    conv = converter_for(config)
    rules = conv.rules()
    expected = expected_shapes(config)
    ours: dict[str, torch.Tensor] = {}
    source = "checkpoint"
    for hf_key, tensor, file in tensors:
        source = file
        match = _match(rules, hf_key) or (None if hf_key.startswith(conv.prefix) else _match(rules, conv.prefix + hf_key))
        if match is None:
            raise LmforgeError(f"{file}: unknown key {hf_key!r} for {config.hf_architecture} "
                               "(lmforge does not know where this tensor goes)")
        groups, rule = match
        if rule is None:
            continue
        if isinstance(rule, str):
            keys, parts = [rule.format(**groups)], [tensor]
        else:
            keys = _expand(rule.ours, groups.get("i"), config)
            try:
                parts = rule.split(tensor, config)
            except RuntimeError as e:  # a fused tensor whose size disagrees with the config
                raise LmforgeError(f"{file}: key {hf_key!r} of shape {tuple(tensor.shape)} cannot be split "
                                   f"as the config implies ({e})") from None
            if len(parts) != len(keys):  # e.g. a fused expert tensor for another number of experts
                raise LmforgeError(f"{file}: key {hf_key!r} of shape {tuple(tensor.shape)} holds {len(parts)} "
                                   f"tensors, but the config implies {len(keys)}")
            # clone: views into one fused tensor would share storage (safetensors refuses to save those)
            parts = [p.clone(memory_format=torch.contiguous_format) for p in parts]
        for key, part in zip(keys, parts):
            if config.tie_embeddings and key == "lm_head.weight":
                continue  # some tied checkpoints store the head anyway; ours *is* the embedding
            if key not in expected:
                raise LmforgeError(f"{file}: key {hf_key!r} does not fit the config "
                                   f"({key} is not a parameter of this model)")
            if tuple(part.shape) != expected[key]:
                raise LmforgeError(f"{file}: key {hf_key!r} has shape {tuple(part.shape)}, but the config "
                                   f"implies {expected[key]} for {key}")
            ours[key] = part.to(dtype) if dtype is not None and part.is_floating_point() else part
    missing = [k for k in expected if k not in ours]
    if missing:
        where = source if source == "checkpoint" else str(Path(source).parent)
        raise LmforgeError(f"{where}: missing key {hf_key_for(missing[0], config)!r} "
                           f"(needed for {missing[0]}; {len(missing)} missing in all)")
    if config.tie_embeddings:
        ours["lm_head.weight"] = ours["embed_tokens.weight"]
    return ours


def _match(rules, key: str) -> tuple[dict[str, str], Rule] | None:
    for pattern, _, rule in rules:
        m = pattern.fullmatch(key)
        if m:
            return m.groupdict(), rule
    return None


def hf_key_for(our_key: str, config: Config, renames_only: bool = False) -> str | None:
    """The HF key that holds `our_key` in an exported checkpoint. With `renames_only`, None unless
    the HF tensor is exactly ours under another name (not a fused or transposed one)."""
    for hf_template, rule in converter_for(config).weights.items():
        if renames_only and not isinstance(rule, str):
            continue
        for template in (rule,) if isinstance(rule, str) else (rule.ours if rule else ()):
            m = _pattern(template).fullmatch(our_key)
            if m:
                return hf_template.format(i=m.groupdict().get("i"), e=m.groupdict().get("e"))
    return None if renames_only else our_key


# ---------------------------------------------------------------------------------------------
# ours -> HF
# ---------------------------------------------------------------------------------------------
def convert_to_hf(state_dict: dict[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    """Our state dict -> HF tensors (contiguous, CPU); a tied head is not duplicated.

    Raises:
        LmforgeError: a key of ours has no place in the architecture, or a fused group is incomplete.
    """
    remaining = dict(state_dict)
    if config.tie_embeddings:
        remaining.pop("lm_head.weight", None)
    out: dict[str, torch.Tensor] = {}
    for hf_template, rule in converter_for(config).weights.items():
        if rule is None:
            continue
        templates = (rule,) if isinstance(rule, str) else rule.ours
        layers = range(config.n_layer) if "{i}" in hf_template else [None]
        experts = range(config.n_expert) if isinstance(rule, str) and "{e}" in hf_template else [None]
        for i in layers:
            for e in experts:
                keys = [t.format(i=i, e=e) for t in templates] if isinstance(rule, str) else _expand(templates, i, config)
                present = [k in remaining for k in keys]
                if not any(present):
                    continue  # an optional tensor this config does not have (a bias …)
                if not all(present):
                    absent = keys[present.index(False)]
                    raise LmforgeError(f"state dict lacks {absent!r}, needed to write {hf_template.format(i=i, e=e)!r}")
                tensors = [remaining.pop(k).detach().cpu() for k in keys]
                t = tensors[0] if isinstance(rule, str) else rule.join(tensors, config)
                out[hf_template.format(i=i, e=e)] = t.contiguous()
    if remaining:
        raise LmforgeError(f"state dict key {next(iter(remaining))!r} has no place in a "
                           f"{config.hf_architecture} checkpoint")
    return out


def _check_shapes(state_dict: dict[str, torch.Tensor], config: Config) -> None:
    """Refuse tensors the config does not describe (say a classifier head swapped into `lm_head`)."""
    for key, shape in expected_shapes(config).items():
        if key in state_dict and tuple(state_dict[key].shape) != shape:
            raise LmforgeError(f"state dict key {key!r} has shape {tuple(state_dict[key].shape)}, but the config "
                               f"implies {shape}; only a language model with its original head can be exported")


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def weight_files(model_dir: Path) -> list[Path]:
    """The weight files of an HF model directory, safetensors preferred over `.bin`."""
    for single, index in ((SAFETENSORS, SAFETENSORS_INDEX), (PT_BIN, PT_BIN_INDEX)):
        if (model_dir / single).is_file():
            return [model_dir / single]
        if (model_dir / index).is_file():
            path = model_dir / index
            try:
                weight_map = json.loads(path.read_text())["weight_map"]
                names = list(dict.fromkeys(weight_map.values()))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise LmforgeError(f"{path}: not a valid shard index ({_first_line(e)})") from None
            files = [model_dir / n for n in names]
            for f in files:
                if not f.is_file():
                    raise LmforgeError(f"{path}: shard {f.name!r} is missing; re-download it")
            return files
    raise LmforgeError(f"{model_dir}: no weights found (expected {SAFETENSORS}, {SAFETENSORS_INDEX}, "
                       f"{PT_BIN} or {PT_BIN_INDEX})")


def read_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor, str]]:
    """Yield `(key, tensor, file)` from safetensors or `.bin` files, one tensor at a time."""
    import torch

    for f in files:
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(f), framework="pt", device="cpu") as handle:
                    for key in handle.keys():
                        yield key, handle.get_tensor(key), str(f)
            except LmforgeError:
                raise
            except Exception as e:  # SafetensorError, OSError … all mean a damaged file here
                raise LmforgeError(f"{f}: truncated or corrupt safetensors file ({_first_line(e)}); "
                                   "re-download it") from None
        else:
            try:
                try:
                    state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as e:
                    if "mmap" not in str(e):
                        raise
                    # files from torch < 1.6 (pre-zip format, e.g. the original GPT-2) cannot be mmapped
                    state = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:  # truncated zip, pickle refused by weights_only …
                raise LmforgeError(f"{f}: not a readable PyTorch weights file ({_first_line(e)}); "
                                   "re-download it") from None
            if not isinstance(state, dict):
                raise LmforgeError(f"{f}: expected a state dict, found {type(state).__name__}")
            for key, tensor in state.items():
                yield key, tensor, str(f)


def load_hf_checkpoint(path: str | Path, config: Config | None = None,
                       dtype: torch.dtype | str | None = None) -> tuple[Config, dict[str, torch.Tensor]]:
    """Load an HF model directory (`config.json` + safetensors or `.bin` weights, sharded or not).

    Args:
        path: The directory (or any file inside it).
        config: Use this config instead of reading `config.json`.
        dtype: Cast floating-point weights to this dtype (default: as stored).

    Returns:
        `(config, state_dict)` with our key names, ready for `GPT(config).load_state_dict`.

    Raises:
        LmforgeError: a missing/damaged file, an unsupported architecture, or tensors that do not
            match the config — always one line naming the file (and key).
    """
    path = Path(path)
    if not path.exists():
        raise LmforgeError(f"{path}: no such file or directory")
    model_dir = path if path.is_dir() else path.parent
    torch_dtype = parse_dtype(dtype, LmforgeError)
    if config is None:
        config_file = model_dir / "config.json"
        if not config_file.is_file():
            raise LmforgeError(f"{model_dir}: no config.json (not a Hugging Face model directory)")
        config = Config.from_hf(config_file)
    state_dict = convert_from_hf(read_tensors(weight_files(model_dir)), config, torch_dtype)
    return config, state_dict


def export_hf(state_dict: dict[str, torch.Tensor], config: Config, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Write an HF model directory that `transformers.AutoModelForCausalLM.from_pretrained` loads.

    Writes `model.safetensors` (a tied head is stored once), `config.json`, `generation_config.json`
    and, if given, the tokenizer files. Every file is written atomically.

    Args:
        state_dict: Our state dict (e.g. `model.state_dict()`).
        config: Its config; `config.hf_architecture` picks the HF architecture.
        out_dir: The directory to write (created if needed).
        tokenizer: An `lmforge.tokenizer.Tokenizer` to save alongside, or None.

    Returns:
        `out_dir` as a Path.
    """
    from safetensors.torch import save_file

    from lmforge.hf_config import config_to_hf

    out_dir = Path(out_dir)
    _check_shapes(state_dict, config)
    tensors = convert_to_hf(state_dict, config)
    floats = [t.dtype for t in tensors.values() if t.is_floating_point()]
    dtype = str(floats[0]).removeprefix("torch.") if floats else None
    hf_config = config_to_hf(config, dtype=dtype)  # raises before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / SAFETENSORS, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    atomic_write_text(out_dir / "config.json", json.dumps(hf_config, indent=2) + "\n")
    generation = {k: getattr(config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                  if getattr(config, k) is not None}
    atomic_write_text(out_dir / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(out_dir)
    return out_dir
