"""Qwen2.5 (biases on q/k/v only) and Qwen3 (per-head RMSNorm on q and k, head size 128), Alibaba.

Base and instruct repos differ in their end-of-sequence id (`<|endoftext|>` 151643 vs `<|im_end|>`
151645) and, for Qwen2.5, in context length and the larger models' norm epsilon.
Numbers from each repo's `config.json`.
"""

from __future__ import annotations

from typing import Any

_ENDOFTEXT, _IM_END = 151643, 151645


def _qwen25(size: str, n_layer: int, n_embd: int, n_head: int, n_query_groups: int, inter: int, *,
            vocab_size: int, block_size: int, norm_eps: float, tie: bool) -> dict[str, Any]:
    return dict(
        name=f"Qwen2.5-{size}",
        hf_architecture="Qwen2ForCausalLM",
        hf_source=f"Qwen/Qwen2.5-{size}",
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_query_groups=n_query_groups,
        intermediate_size=inter,
        block_size=block_size,
        norm_eps=norm_eps,
        attn_bias=True,
        rope_base=1000000.0,
        tie_embeddings=tie,
        bos_token_id=_ENDOFTEXT,
        eos_token_id=_ENDOFTEXT,
    )


def _qwen3(size: str, n_layer: int, n_embd: int, n_head: int, inter: int, tie: bool) -> dict[str, Any]:
    return dict(
        name=f"Qwen3-{size}",
        hf_architecture="Qwen3ForCausalLM",
        hf_source=f"Qwen/Qwen3-{size}",
        vocab_size=151936,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_query_groups=8,
        head_size=128,
        intermediate_size=inter,
        block_size=40960,
        norm_eps=1e-6,
        qk_norm="head",
        rope_base=1000000.0,
        tie_embeddings=tie,
        bos_token_id=_ENDOFTEXT,
        eos_token_id=_IM_END,  # Qwen/Qwen3-* are the post-trained (chat) models
    )


_SMALL = dict(vocab_size=151936, norm_eps=1e-6, tie=True)
_LARGE = dict(vocab_size=152064, block_size=131072, tie=False)
_QWEN25 = [
    _qwen25("0.5B", 24, 896, 14, 2, 4864, block_size=32768, **_SMALL),
    _qwen25("1.5B", 28, 1536, 12, 2, 8960, block_size=131072, **_SMALL),
    _qwen25("3B", 36, 2048, 16, 2, 11008, block_size=32768, **_SMALL),
    _qwen25("7B", 28, 3584, 28, 4, 18944, norm_eps=1e-6, **_LARGE),
    _qwen25("14B", 48, 5120, 40, 8, 13824, norm_eps=1e-5, **_LARGE),
    _qwen25("32B", 64, 5120, 40, 8, 27648, norm_eps=1e-5, **_LARGE),
    _qwen25("72B", 80, 8192, 64, 8, 29568, norm_eps=1e-5, **_LARGE),
]
_QWEN25_INSTRUCT = [
    dict(c, name=f"{c['name']}-Instruct", hf_source=f"{c['hf_source']}-Instruct",
         block_size=32768, norm_eps=1e-6, eos_token_id=_IM_END)
    for c in _QWEN25
]

_QWEN3 = [
    _qwen3("0.6B", 28, 1024, 16, 3072, tie=True),
    _qwen3("1.7B", 28, 2048, 16, 6144, tie=True),
    _qwen3("4B", 36, 2560, 32, 9728, tie=True),
    _qwen3("8B", 36, 4096, 32, 12288, tie=False),
    _qwen3("14B", 40, 5120, 40, 17408, tie=False),
    _qwen3("32B", 64, 5120, 64, 25600, tie=False),
]
_QWEN3_BASE = [  # pre-trained only; there is no Qwen3-32B-Base
    dict(c, name=f"{c['name']}-Base", hf_source=f"{c['hf_source']}-Base", eos_token_id=_ENDOFTEXT)
    for c in _QWEN3
    if c["name"] != "Qwen3-32B"
]

ENTRIES: list[dict[str, Any]] = [*_QWEN25, *_QWEN25_INSTRUCT, *_QWEN3, *_QWEN3_BASE]

ALIASES: dict[str, str] = {}
