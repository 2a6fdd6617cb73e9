"""Llama 2, Llama 3 / 3.1 / 3.2 (Meta) and TinyLlama: RMSNorm, SwiGLU, RoPE, no biases.

Numbers from each repo's `config.json`. Chat/instruct variants share the base architecture and
differ only in their end-of-sequence ids (Llama 3 instruct models stop on `<|eot_id|>`).
"""

from __future__ import annotations

from typing import Any

_LLAMA31_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
_LLAMA32_ROPE = {**_LLAMA31_ROPE, "factor": 32.0}
# <|end_of_text|>, <|eom_id|>, <|eot_id|>
_LLAMA31_INSTRUCT_EOS = [128001, 128008, 128009]


def _llama2(size: str, n_layer: int, n_embd: int, n_head: int, n_query_groups: int, inter: int) -> dict[str, Any]:
    return dict(
        name=f"Llama-2-{size}-hf",
        hf_architecture="LlamaForCausalLM",
        hf_source=f"meta-llama/Llama-2-{size}-hf",
        vocab_size=32000,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_query_groups=n_query_groups,
        intermediate_size=inter,
        block_size=4096,
        norm_eps=1e-5,
        rope_base=10000.0,
        bos_token_id=1,
        eos_token_id=2,
    )


def _llama3(name: str, repo: str, n_layer: int, n_embd: int, n_head: int, inter: int, block_size: int,
            rope_scaling: dict | None, tie: bool = False, head_size: int | None = None) -> dict[str, Any]:
    return dict(
        name=name,
        hf_architecture="LlamaForCausalLM",
        hf_source=f"meta-llama/{repo}",
        vocab_size=128256,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_query_groups=8,
        head_size=head_size,
        intermediate_size=inter,
        block_size=block_size,
        norm_eps=1e-5,
        rope_base=500000.0,
        rope_scaling=rope_scaling,
        tie_embeddings=tie,
        bos_token_id=128000,
        eos_token_id=128001,
    )


def _chat(base: dict[str, Any], name: str, repo: str, **changes) -> dict[str, Any]:
    return dict(base, name=name, hf_source=repo, **changes)


_LLAMA2 = [
    _llama2("7b", 32, 4096, 32, 32, 11008),
    _llama2("13b", 40, 5120, 40, 40, 13824),
    _llama2("70b", 80, 8192, 64, 8, 28672),
]
_LLAMA2_CHAT = [
    _chat(c, c["name"].replace("-hf", "-chat-hf"), c["hf_source"].replace("-hf", "-chat-hf")) for c in _LLAMA2
]

_LLAMA3 = [
    _llama3("Llama-3-8B", "Meta-Llama-3-8B", 32, 4096, 32, 14336, 8192, None),
    _llama3("Llama-3-70B", "Meta-Llama-3-70B", 80, 8192, 64, 28672, 8192, None),
    _llama3("Llama-3.1-8B", "Llama-3.1-8B", 32, 4096, 32, 14336, 131072, _LLAMA31_ROPE),
    _llama3("Llama-3.1-70B", "Llama-3.1-70B", 80, 8192, 64, 28672, 131072, _LLAMA31_ROPE),
    _llama3("Llama-3.1-405B", "Llama-3.1-405B", 126, 16384, 128, 53248, 131072, _LLAMA31_ROPE),
    _llama3("Llama-3.2-1B", "Llama-3.2-1B", 16, 2048, 32, 8192, 131072, _LLAMA32_ROPE, tie=True, head_size=64),
    _llama3("Llama-3.2-3B", "Llama-3.2-3B", 28, 3072, 24, 8192, 131072, _LLAMA32_ROPE, tie=True, head_size=128),
]
_LLAMA3_INSTRUCT = [
    # Llama 3 (not 3.1) instruct config.json names only <|eot_id|>
    _chat(c, f"{c['name']}-Instruct", f"{c['hf_source']}-Instruct",
          eos_token_id=128009 if c["name"].startswith("Llama-3-") else list(_LLAMA31_INSTRUCT_EOS))
    for c in _LLAMA3
]

_TINYLLAMA = dict(
    name="TinyLlama-1.1B",
    hf_architecture="LlamaForCausalLM",
    hf_source="TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
    vocab_size=32000,
    n_layer=22,
    n_embd=2048,
    n_head=32,
    n_query_groups=4,
    intermediate_size=5632,
    block_size=2048,
    norm_eps=1e-5,
    rope_base=10000.0,
    bos_token_id=1,
    eos_token_id=2,
)

ENTRIES: list[dict[str, Any]] = [
    *_LLAMA2,
    *_LLAMA2_CHAT,
    *_LLAMA3,
    *_LLAMA3_INSTRUCT,
    _TINYLLAMA,
    _chat(_TINYLLAMA, "TinyLlama-1.1B-Chat-v1.0", "TinyLlama/TinyLlama-1.1B-Chat-v1.0"),
]

ALIASES: dict[str, str] = {
    "Llama-2-7b": "Llama-2-7b-hf",
    "Llama-2-13b": "Llama-2-13b-hf",
    "Llama-2-70b": "Llama-2-70b-hf",
    "Meta-Llama-3-8B": "Llama-3-8B",
    "Meta-Llama-3-70B": "Llama-3-70B",
    "Meta-Llama-3-8B-Instruct": "Llama-3-8B-Instruct",
    "Meta-Llama-3-70B-Instruct": "Llama-3-70B-Instruct",
    "Meta-Llama-3.1-8B": "Llama-3.1-8B",
    "Meta-Llama-3.1-70B": "Llama-3.1-70B",
    "Meta-Llama-3.1-405B": "Llama-3.1-405B",
    "Meta-Llama-3.1-8B-Instruct": "Llama-3.1-8B-Instruct",
    "Meta-Llama-3.1-70B-Instruct": "Llama-3.1-70B-Instruct",
    "Meta-Llama-3.1-405B-Instruct": "Llama-3.1-405B-Instruct",
    "TinyLlama-1.1B-intermediate-step-1431k-3T": "TinyLlama-1.1B",
    "tiny-llama-1.1b": "TinyLlama-1.1B",
}
