"""`lmforge generate SOURCE --prompt "…"`: stream one completion to stdout."""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Annotated

from lmforge.errors import LmforgeError
from lmforge.sampling import SamplingParams
from lmforge.verbs.flags import SAMPLING, Flat, ModelArgs, cli_sampling


def generate(
    model: Annotated[ModelArgs, Flat()],
    *,
    prompt: str = "What food do llamas eat?",
    sampling: Annotated[SamplingParams, SAMPLING] = cli_sampling(max_new_tokens=128),
    prompt_style: str | None = None,
    system: str | None = None,
    draft: str | None = None,
    speculative_k: int = 4,
) -> None:
    """Generate a completion for one prompt and stream it to stdout (timing on stderr).

    Args:
        model: the model and how to load it.
        prompt: the prompt text; `-` reads it from stdin.
        sampling: how tokens are picked.
        prompt_style: wrap the prompt as a chat turn: `auto` (the model's chat template, else a
            detected style), `template`, or a style name (default, alpaca, chatml, llama2, llama3,
            phi2, phi3, gemma). Unset: the prompt is used as raw text.
        system: system message (with --prompt-style only).
        draft: a small model with the same vocabulary for speculative decoding (greedy only:
            needs --temperature 0; the output is identical to greedy decoding without it).
        speculative_k: tokens the draft proposes per step.
    """
    # check the flags before loading anything
    if draft is not None and sampling.temperature != 0:
        raise LmforgeError(f"--draft needs greedy decoding: pass --temperature 0 (got {sampling.temperature})")
    if system is not None and prompt_style is None:
        raise LmforgeError("--system needs --prompt-style (e.g. --prompt-style auto)")
    if prompt_style not in (None, "auto", "template"):
        from lmforge.prompts import get_style

        get_style(prompt_style)
    if prompt == "-":
        prompt = sys.stdin.read()

    from lmforge.checkpoint import detect_source

    detect_source(model.source)  # a missing model fails before torch is imported
    from lmforge.api import LLM

    llm = LLM.load(**dataclasses.asdict(model))
    draft_llm = LLM.load(draft, device=model.device, dtype=model.dtype) if draft is not None else None
    # every SamplingParams field is a keyword of LLM.generate
    options = dict(dataclasses.asdict(sampling), stream=True, draft=draft_llm, speculative_k=speculative_k)
    t0 = time.perf_counter()
    if prompt_style is not None:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        pieces = llm.chat(messages, prompt_style=prompt_style, **options)
    else:
        pieces = llm.generate(prompt, **options)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    elapsed = time.perf_counter() - t0
    n = pieces.completion_tokens
    print(f"Time for inference: {elapsed:.2f} sec total, {n / elapsed:.2f} tokens/sec, {n} tokens", file=sys.stderr)
