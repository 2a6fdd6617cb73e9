"""SmolLM2 (Hugging Face): small Llama-shaped models with a 49152-token vocab and a tied head.

Base models use id 0 (`<|endoftext|>`) as bos/eos; the instruct models use ChatML's
`<|im_start|>` (1) / `<|im_end|>` (2). Numbers from each repo's `config.json`.
"""

from __future__ import annotations

from typing import Any


def _smollm2(size: str, n_layer: int, n_embd: int, n_head: int, n_query_groups: int, inter: int,
             rope_base: float) -> dict[str, Any]:
    return dict(
        name=f"SmolLM2-{size}",
        hf_architecture="LlamaForCausalLM",
        hf_source=f"HuggingFaceTB/SmolLM2-{size}",
        vocab_size=49152,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_query_groups=n_query_groups,
        intermediate_size=inter,
        block_size=8192,
        norm_eps=1e-5,
        rope_base=rope_base,
        tie_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
    )


_BASE = [
    _smollm2("135M", 30, 576, 9, 3, 1536, 100000.0),
    _smollm2("360M", 32, 960, 15, 5, 2560, 100000.0),
    _smollm2("1.7B", 24, 2048, 32, 32, 8192, 130000.0),
]

ENTRIES: list[dict[str, Any]] = _BASE + [
    dict(c, name=f"{c['name']}-Instruct", hf_source=f"{c['hf_source']}-Instruct",
         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    for c in _BASE
]

ALIASES: dict[str, str] = {}
