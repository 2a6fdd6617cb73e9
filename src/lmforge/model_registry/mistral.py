"""Mistral 7B (v0.1 with a 4096-token sliding window; v0.2+ without, θ = 1e6, v0.3 with a 32768 vocab)
and Mixtral 8x7B (8 SwiGLU experts, top-2 routing). Numbers from each repo's `config.json`.
"""

from __future__ import annotations

from typing import Any

_MISTRAL_7B_V01 = dict(
    name="Mistral-7B-v0.1",
    hf_architecture="MistralForCausalLM",
    hf_source="mistralai/Mistral-7B-v0.1",
    vocab_size=32000,
    n_layer=32,
    n_embd=4096,
    n_head=32,
    n_query_groups=8,
    intermediate_size=14336,
    block_size=32768,
    norm_eps=1e-5,
    rope_base=10000.0,
    sliding_window=4096,
    bos_token_id=1,
    eos_token_id=2,
)

_MISTRAL_7B_V03 = dict(
    _MISTRAL_7B_V01,
    name="Mistral-7B-v0.3",
    hf_source="mistralai/Mistral-7B-v0.3",
    vocab_size=32768,
    rope_base=1000000.0,
    sliding_window=None,
)

_MIXTRAL_8X7B = dict(
    name="Mixtral-8x7B-v0.1",
    hf_architecture="MixtralForCausalLM",
    hf_source="mistralai/Mixtral-8x7B-v0.1",
    vocab_size=32000,
    n_layer=32,
    n_embd=4096,
    n_head=32,
    n_query_groups=8,
    intermediate_size=14336,
    block_size=32768,
    norm_eps=1e-5,
    rope_base=1000000.0,
    mlp_class="moe",
    n_expert=8,  # num_local_experts
    n_expert_per_token=2,  # num_experts_per_tok
    bos_token_id=1,
    eos_token_id=2,
)


def _named(base: dict[str, Any], name: str, **changes) -> dict[str, Any]:
    return dict(base, name=name, hf_source=f"mistralai/{name}", **changes)


ENTRIES: list[dict[str, Any]] = [
    _MISTRAL_7B_V01,
    _named(_MISTRAL_7B_V01, "Mistral-7B-Instruct-v0.1"),
    # v0.2 instruct: the v0.1 shape with θ = 1e6 and no sliding window
    _named(_MISTRAL_7B_V01, "Mistral-7B-Instruct-v0.2", rope_base=1000000.0, sliding_window=None),
    _MISTRAL_7B_V03,
    _named(_MISTRAL_7B_V03, "Mistral-7B-Instruct-v0.3"),
    _MIXTRAL_8X7B,
    _named(_MIXTRAL_8X7B, "Mixtral-8x7B-Instruct-v0.1"),
]

ALIASES: dict[str, str] = {
    "Mistral-7B": "Mistral-7B-v0.1",
    "Mixtral-8x7B": "Mixtral-8x7B-v0.1",
}
