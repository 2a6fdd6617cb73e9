"""GPT-2 (OpenAI, 2019): learned positions, LayerNorm, GELU (tanh), biases everywhere, tied head.

Numbers from each repo's `config.json` (`n_inner: null` means `4 * n_embd`).
"""

from __future__ import annotations

from typing import Any


def _gpt2(name: str, n_layer: int, n_embd: int, n_head: int) -> dict[str, Any]:
    return dict(
        name=name,
        hf_architecture="GPT2LMHeadModel",
        hf_source=f"openai-community/{name}",
        vocab_size=50257,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        intermediate_size=4 * n_embd,
        block_size=1024,  # n_positions
        norm_class="layernorm",
        norm_eps=1e-5,
        mlp_class="mlp",
        activation="gelu_tanh",  # "gelu_new"
        attn_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        position_embedding="learned",
        tie_embeddings=True,
        bos_token_id=50256,
        eos_token_id=50256,
    )


ENTRIES: list[dict[str, Any]] = [
    _gpt2("gpt2", 12, 768, 12),
    _gpt2("gpt2-medium", 24, 1024, 16),
    _gpt2("gpt2-large", 36, 1280, 20),
    _gpt2("gpt2-xl", 48, 1600, 25),
]

ALIASES: dict[str, str] = {
    "gpt2-124m": "gpt2",
    "gpt2-355m": "gpt2-medium",
    "gpt2-774m": "gpt2-large",
    "gpt2-1.5b": "gpt2-xl",
}
