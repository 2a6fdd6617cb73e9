"""`lmforge chat SOURCE`: a multi-turn conversation in the terminal, replies streamed.

Input: Enter sends the message. A line ending with `\\` continues on the next line. `/paste`
starts a block for pasted text that ends with a line holding only `/end` (or Ctrl-D).
`/reset` clears the history, `/exit` (or Enter on an empty prompt, or Ctrl-D) quits; Ctrl-C
during a reply stops it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.api import LLM

HELP = ("Enter sends; end a line with \\ to continue it; /paste … /end for a pasted block; "
        "/reset clears the history; /exit or an empty prompt quits.")


def read_message(read_line: Callable[[str], str] = input) -> str | None:
    """Read one user message; None at end of input. Handles `\\` continuations and /paste blocks."""
    try:
        line = read_line(">> Prompt: ")
    except EOFError:
        return None
    if line.strip() == "/paste":
        lines = []
        while True:
            try:
                more = read_line("")
            except EOFError:
                break
            if more.strip() == "/end":
                break
            lines.append(more)
        return "\n".join(lines)
    lines = []
    while line.endswith("\\"):
        lines.append(line[:-1])
        try:
            line = read_line("... ")
        except EOFError:
            line = ""
            break
    lines.append(line)
    return "\n".join(lines)


def fit_history(llm: LLM, system: list[dict], history: list[dict], message: dict, style: str | None,
                reserve: int) -> tuple[list[int], int]:
    """Encode system + history + message, dropping the oldest turns until `reserve` tokens fit after it.

    Returns:
        (prompt ids, number of dropped user/assistant turn pairs); the history list is trimmed in place.
    """
    from lmforge.prompts import encode_chat

    ctx = llm.config.block_size
    dropped = 0
    while True:
        ids = encode_chat(system + history + [message], llm.tokenizer, llm.config, style)
        if len(ids) + reserve <= ctx or not history:
            return ids, dropped
        del history[:2]  # the oldest user turn and its reply
        dropped += 1


def chat(
    source: str,
    *,
    system: str | None = None,
    prompt_style: str | None = None,
    max_new_tokens: int = 512,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    quantize: str | None = None,
) -> None:
    """Chat in the terminal: Enter sends, a trailing \\ continues, /paste…/end, /reset, /exit or empty line quits.

    Enter sends a message; a line ending with `\\` continues on the next line; `/paste` starts a
    multi-line block that ends with a line holding only `/end`. `/reset` clears the history;
    `/exit`, Ctrl-D or Enter on an empty prompt quits. When the conversation outgrows the
    context window the oldest turns are dropped (and a note says so). After each reply a line
    `Time for inference: … sec total, … tokens/sec, … tokens` goes to stderr.

    Args:
        source: an lmforge checkpoint dir, an HF model dir, a .gguf file, or an HF repo id.
        system: a system message that opens the conversation.
        prompt_style: auto (default: the model's chat template, else a detected style), template,
            or a built-in style: default, alpaca, chatml, llama2, llama3, phi2, phi3, gemma.
        max_new_tokens: longest reply, in tokens.
        temperature: 0 for greedy decoding; higher is more random.
        top_k: sample from the k most likely tokens only (0 or null: all).
        top_p: nucleus sampling: smallest set of tokens with probability mass >= top_p (1: off).
        min_p: drop tokens less likely than min_p times the most likely one (0: off).
        repetition_penalty: > 1 discourages repeating earlier tokens (1: off).
        seed: random seed, for reproducible sampling.
        device: cpu, cuda, cuda:N or auto (default: cuda when available).
        dtype: float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on CUDA).
        quantize: CPU inference mode: int8 or bf16 (weight-only, fewer bytes per token), or fp32
            (same weights on lmforge's AVX2 kernels); default: plain PyTorch.
    """
    from lmforge.sampling import SamplingParams

    SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                   repetition_penalty=repetition_penalty, seed=seed)
    if prompt_style not in (None, "auto", "template"):
        from lmforge.prompts import get_style

        get_style(prompt_style)

    from lmforge.checkpoint import detect_source

    detect_source(source)  # a missing model fails before torch is imported
    from lmforge.api import LLM
    from lmforge.generate import stream
    from lmforge.prompts import resolve_style, stop_strings, stop_tokens

    llm = LLM.load(source, device=device, dtype=dtype, quantize=quantize)
    if llm.tokenizer is None:
        raise LmforgeError(f"{source}: has no tokenizer files; chat needs one")
    style = resolve_style(llm.tokenizer, llm.config, prompt_style)
    stops, stop_ids = stop_strings(llm.tokenizer, llm.config, style), stop_tokens(llm.tokenizer, llm.config, style)
    ctx = llm.config.block_size
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # pragma: no cover - not on every platform
        pass

    print(f"Chatting with {llm.config.name} ({'chat template' if style == 'template' else style + ' prompt style'}). "
          f"{HELP}", file=sys.stderr, flush=True)
    system_msgs = [{"role": "system", "content": system}] if system else []
    history: list[dict] = []
    # seeded once: replies differ from turn to turn but the whole session is reproducible
    turn_seed = seed
    while True:
        try:
            text = read_message()
        except KeyboardInterrupt:
            print(file=sys.stderr)
            break
        if text is None or not text.strip() or text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            history.clear()
            print("[history cleared]", file=sys.stderr, flush=True)
            continue
        message = {"role": "user", "content": text}
        reserve = min(max_new_tokens, ctx // 2)
        ids, dropped = fit_history(llm, system_msgs, history, message, style, reserve)
        if dropped:
            print(f"[dropped the {dropped} oldest turn(s) to fit the {ctx}-token context]", file=sys.stderr, flush=True)
        if len(ids) >= ctx:
            print(f"[your message has {len(ids)} tokens but the model's context is {ctx}; shorten it]",
                  file=sys.stderr, flush=True)
            continue
        params = SamplingParams(max_new_tokens=min(max_new_tokens, ctx - len(ids)), temperature=temperature,
                                top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
                                seed=turn_seed, stop=stops, stop_token_ids=stop_ids)
        if turn_seed is not None:
            turn_seed += 1
        print(">> Reply: ", end="", flush=True)
        t0 = time.perf_counter()
        pieces = stream(llm.model, llm.tokenizer, ids, params)
        reply = []
        try:
            for piece in pieces:
                reply.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            print(" [interrupted]", end="")
        elapsed = time.perf_counter() - t0
        print(flush=True)
        n = pieces.completion_tokens
        print(f"Time for inference: {elapsed:.2f} sec total, {n / elapsed:.2f} tokens/sec, {n} tokens",
              file=sys.stderr, flush=True)
        history += [message, {"role": "assistant", "content": "".join(reply)}]
