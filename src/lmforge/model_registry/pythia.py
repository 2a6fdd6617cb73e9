"""Pythia (EleutherAI, GPT-NeoX architecture): parallel residual with two LayerNorms,
25 % rotary dims, exact GELU, biases everywhere, untied head.

`vocab_size` is the padded embedding size of each checkpoint (50304 for most sizes;
the tokenizer itself has 50277 entries). Numbers from `EleutherAI/pythia-*/config.json`.
"""

from __future__ import annotations

from typing import Any


def _pythia(size: str, n_layer: int, n_embd: int, n_head: int, vocab_size: int = 50304) -> dict[str, Any]:
    return dict(
        name=f"pythia-{size}",
        hf_architecture="GPTNeoXForCausalLM",
        hf_source=f"EleutherAI/pythia-{size}",
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        intermediate_size=4 * n_embd,
        block_size=2048,  # max_position_embeddings
        norm_class="layernorm",
        norm_eps=1e-5,
        mlp_class="mlp",
        activation="gelu",
        attn_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        rotary_percentage=0.25,  # rotary_pct
        rope_base=10000.0,
        parallel_residual=True,  # use_parallel_residual
        tie_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )


_BASE: list[dict[str, Any]] = [
    _pythia("14m", 6, 128, 4),
    _pythia("31m", 6, 256, 8),
    _pythia("70m", 6, 512, 8),
    _pythia("160m", 12, 768, 12),
    _pythia("410m", 24, 1024, 16),
    _pythia("1b", 16, 2048, 8),
    _pythia("1.4b", 24, 2048, 16),
    _pythia("2.8b", 32, 2560, 32),
    _pythia("6.9b", 32, 4096, 32, vocab_size=50432),
    _pythia("12b", 36, 5120, 40, vocab_size=50688),
]

# the same architectures trained on the deduplicated Pile
_DEDUPED: list[dict[str, Any]] = [
    dict(c, name=f"{c['name']}-deduped", hf_source=f"{c['hf_source']}-deduped") for c in _BASE
]

ENTRIES: list[dict[str, Any]] = _BASE + _DEDUPED

ALIASES: dict[str, str] = {}
