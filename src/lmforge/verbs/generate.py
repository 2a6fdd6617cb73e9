"""`lmforge generate SOURCE --prompt "…"`: stream one completion to stdout."""

from __future__ import annotations

import sys
import time

from lmforge.errors import LmforgeError


def generate(
    source: str,
    *,
    prompt: str = "What food do llamas eat?",
    max_new_tokens: int = 128,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    stop: list[str] | None = None,
    prompt_style: str | None = None,
    system: str | None = None,
    draft: str | None = None,
    speculative_k: int = 4,
    device: str | None = None,
    dtype: str | None = None,
    quantize: str | None = None,
) -> None:
    """Generate a completion for one prompt and stream it to stdout (timing on stderr).

    Args:
        source: an lmforge checkpoint dir, an HF model dir, a .gguf file, or an HF repo id.
        prompt: the prompt text; `-` reads it from stdin.
        max_new_tokens: stop after this many generated tokens.
        temperature: 0 for greedy decoding; higher is more random.
        top_k: sample from the k most likely tokens only (0 or null: all).
        top_p: nucleus sampling: smallest set of tokens with probability mass >= top_p (1: off).
        min_p: drop tokens less likely than min_p times the most likely one (0: off).
        repetition_penalty: > 1 discourages repeating prompt or output tokens (1: off).
        seed: random seed, for reproducible sampling.
        stop: strings that end the completion (not printed); repeat the flag for several.
        prompt_style: wrap the prompt as a chat turn: `auto` (the model's chat template, else a
            detected style), `template`, or a style name (default, alpaca, chatml, llama2, llama3,
            phi2, phi3, gemma). Unset: the prompt is used as raw text.
        system: system message (with --prompt-style only).
        draft: a small model with the same vocabulary for speculative decoding (greedy only:
            needs --temperature 0; the output is identical to greedy decoding without it).
        speculative_k: tokens the draft proposes per step.
        device: cpu, cuda, cuda:N or auto (default: cuda when available).
        dtype: float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on CUDA).
        quantize: CPU inference mode: int8 or bf16 (weight-only, fewer bytes per token), or fp32
            (same weights on lmforge's AVX2 kernels); default: plain PyTorch.
    """
    from lmforge.sampling import SamplingParams

    # check the flags before loading anything
    SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                   repetition_penalty=repetition_penalty, seed=seed, stop=stop or [])
    if draft is not None and temperature != 0:
        raise LmforgeError(f"--draft needs greedy decoding: pass --temperature 0 (got {temperature})")
    if system is not None and prompt_style is None:
        raise LmforgeError("--system needs --prompt-style (e.g. --prompt-style auto)")
    if prompt_style not in (None, "auto", "template"):
        from lmforge.prompts import get_style

        get_style(prompt_style)
    if prompt == "-":
        prompt = sys.stdin.read()

    from lmforge.checkpoint import detect_source

    detect_source(source)  # a missing model fails before torch is imported
    from lmforge.api import LLM

    llm = LLM.load(source, device=device, dtype=dtype, quantize=quantize)
    draft_llm = LLM.load(draft, device=device, dtype=dtype) if draft is not None else None
    sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                    repetition_penalty=repetition_penalty, seed=seed, stop=stop, stream=True, draft=draft_llm,
                    speculative_k=speculative_k)
    t0 = time.perf_counter()
    if prompt_style is not None:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        pieces = llm.chat(messages, prompt_style=prompt_style, **sampling)
    else:
        pieces = llm.generate(prompt, **sampling)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    elapsed = time.perf_counter() - t0
    n = pieces.completion_tokens
    print(f"Time for inference: {elapsed:.2f} sec total, {n / elapsed:.2f} tokens/sec, {n} tokens", file=sys.stderr)
