"""Microsoft Phi-2 (parallel attention + MLP sharing one LayerNorm, 40 % rotary dims, biases,
biased output head) and Phi-3-mini-4k (a Llama-shaped model; HF fuses qkv and gate/up, which
changes no counts). Numbers from each repo's `config.json`.
"""

from __future__ import annotations

from typing import Any

ENTRIES: list[dict[str, Any]] = [
    dict(
        name="phi-2",
        hf_architecture="PhiForCausalLM",
        hf_source="microsoft/phi-2",
        vocab_size=51200,
        n_layer=32,
        n_embd=2560,
        n_head=32,
        intermediate_size=10240,
        block_size=2048,
        norm_class="layernorm",
        norm_eps=1e-5,
        mlp_class="mlp",
        activation="gelu_tanh",  # "gelu_new"
        attn_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        lm_head_bias=True,
        rotary_percentage=0.4,  # partial_rotary_factor: 32 of 80 dims
        rope_base=10000.0,
        parallel_residual=True,
        shared_attention_norm=True,
        bos_token_id=50256,
        eos_token_id=50256,
    ),
    dict(
        name="Phi-3-mini-4k-instruct",
        hf_architecture="Phi3ForCausalLM",
        hf_source="microsoft/Phi-3-mini-4k-instruct",
        vocab_size=32064,
        n_layer=32,
        n_embd=3072,
        n_head=32,
        intermediate_size=8192,
        block_size=4096,
        norm_eps=1e-5,
        rope_base=10000.0,
        sliding_window=2047,
        bos_token_id=1,
        eos_token_id=32000,  # <|endoftext|>
        pad_token_id=32000,
    ),
]

ALIASES: dict[str, str] = {
    "phi2": "phi-2",
    "Phi-3-mini-4k": "Phi-3-mini-4k-instruct",
}
