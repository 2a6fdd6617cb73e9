"""OLMo 2 (AI2, November 2024 release): norms only after each sublayer (no input norms), RMSNorm
over the whole q and k projections, untied head. Numbers from each repo's `config.json`.
"""

from __future__ import annotations

from typing import Any


def _olmo2(size: str, n_layer: int, n_embd: int, n_head: int, inter: int) -> dict[str, Any]:
    return dict(
        name=f"OLMo-2-1124-{size}",
        hf_architecture="Olmo2ForCausalLM",
        hf_source=f"allenai/OLMo-2-1124-{size}",
        vocab_size=100352,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        intermediate_size=inter,
        block_size=4096,
        norm_eps=1e-6,
        rope_base=500000.0,
        pre_norm=False,
        post_norm=True,
        qk_norm="full",
        eos_token_id=100257,
        pad_token_id=100277,
    )


_BASE = [
    _olmo2("7B", 32, 4096, 32, 11008),
    _olmo2("13B", 40, 5120, 40, 13824),
]

ENTRIES: list[dict[str, Any]] = _BASE + [
    dict(c, name=f"{c['name']}-Instruct", hf_source=f"{c['hf_source']}-Instruct") for c in _BASE
]

ALIASES: dict[str, str] = {
    "OLMo-2-7B": "OLMo-2-1124-7B",
    "OLMo-2-13B": "OLMo-2-1124-13B",
    "OLMo-2-7B-Instruct": "OLMo-2-1124-7B-Instruct",
    "OLMo-2-13B-Instruct": "OLMo-2-1124-13B-Instruct",
}
