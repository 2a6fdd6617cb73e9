"""Gemma 2 (Google): RMSNorm stored as `w - 1`, embeddings scaled by sqrt(d), a norm before and after
each sublayer, tanh soft-capping of attention scores (50) and logits (30), sliding-window attention
(4096) on every other layer starting with layer 0, GeGLU (tanh), tied head.
Numbers from each repo's `config.json`.
"""

from __future__ import annotations

from typing import Any


def _gemma2(size: str, n_layer: int, n_embd: int, n_head: int, n_query_groups: int, head_size: int,
            inter: int, query_pre_attn_scalar: int) -> dict[str, Any]:
    return dict(
        name=f"gemma-2-{size}",
        hf_architecture="Gemma2ForCausalLM",
        hf_source=f"google/gemma-2-{size}",
        vocab_size=256000,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_query_groups=n_query_groups,
        head_size=head_size,
        intermediate_size=inter,
        block_size=8192,
        norm_eps=1e-6,
        norm_unit_offset=True,
        activation="gelu_tanh",  # "gelu_pytorch_tanh"
        rope_base=10000.0,
        pre_norm=True,
        post_norm=True,
        sliding_window=4096,
        sliding_window_pattern=2,
        attn_logit_softcap=50.0,
        final_logit_softcap=30.0,
        # scores scale by query_pre_attn_scalar ** -0.5; None means head_size (as `from_hf` reads it)
        attn_scale_base=None if query_pre_attn_scalar == head_size else float(query_pre_attn_scalar),
        scale_embeddings=True,
        tie_embeddings=True,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )


_BASE = [
    _gemma2("2b", 26, 2304, 8, 4, 256, 9216, 256),
    _gemma2("9b", 42, 3584, 16, 8, 256, 14336, 256),
    # 27B scales scores by (d / n_head) = 144, not by its head size 128
    _gemma2("27b", 46, 4608, 32, 16, 128, 36864, 144),
]

ENTRIES: list[dict[str, Any]] = _BASE + [
    # instruction-tuned: also stops on <end_of_turn>
    dict(c, name=f"{c['name']}-it", hf_source=f"{c['hf_source']}-it", eos_token_id=[1, 107])
    for c in _BASE
]

ALIASES: dict[str, str] = {}
