"""`lmforge chat SOURCE`: a multi-turn conversation in the terminal, replies streamed.

Input: Enter sends the message. A line ending with `\\` continues on the next line. `/paste`
starts a block for pasted text that ends with a line holding only `/end` (or Ctrl-D).
`/reset` clears the history, `/exit` (or Enter on an empty prompt, or Ctrl-D) quits; Ctrl-C
during a reply stops it.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

from lmforge.errors import LmforgeError
from lmforge.sampling import SamplingParams
from lmforge.verbs.flags import SAMPLING, Flat, ModelArgs, cli_sampling

if TYPE_CHECKING:
    from lmforge.api import LLM

# chat's stop strings are the prompt style's: no --stop
CHAT_SAMPLING = Flat(skip=(*SAMPLING.skip, "stop"))

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
    model: Annotated[ModelArgs, Flat()],
    *,
    system: str | None = None,
    prompt_style: str | None = None,
    sampling: Annotated[SamplingParams, CHAT_SAMPLING] = cli_sampling(max_new_tokens=512),
) -> None:
    """Chat in the terminal: Enter sends, a trailing \\ continues, /paste…/end, /reset, /exit or empty line quits.

    Enter sends a message; a line ending with `\\` continues on the next line; `/paste` starts a
    multi-line block that ends with a line holding only `/end`. `/reset` clears the history;
    `/exit`, Ctrl-D or Enter on an empty prompt quits. When the conversation outgrows the
    context window the oldest turns are dropped (and a note says so). After each reply a line
    `Time for inference: … sec total, … tokens/sec, … tokens` goes to stderr.

    Args:
        model: the model and how to load it.
        system: a system message that opens the conversation.
        prompt_style: auto (default: the model's chat template, else a detected style), template,
            or a built-in style: default, alpaca, chatml, llama2, llama3, phi2, phi3, gemma.
        sampling: how tokens are picked; max_new_tokens is the longest reply.
    """
    if prompt_style not in (None, "auto", "template"):
        from lmforge.prompts import get_style

        get_style(prompt_style)

    from lmforge.checkpoint import detect_source

    detect_source(model.source)  # a missing model fails before torch is imported
    from lmforge.api import LLM
    from lmforge.generate import stream
    from lmforge.prompts import resolve_style, stop_strings, stop_tokens

    llm = LLM.load(**dataclasses.asdict(model))
    if llm.tokenizer is None:
        raise LmforgeError(f"{model.source}: has no tokenizer files; chat needs one")
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
    turn_seed = sampling.seed
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
        reserve = min(sampling.max_new_tokens, ctx // 2)
        ids, dropped = fit_history(llm, system_msgs, history, message, style, reserve)
        if dropped:
            print(f"[dropped the {dropped} oldest turn(s) to fit the {ctx}-token context]", file=sys.stderr, flush=True)
        if len(ids) >= ctx:
            print(f"[your message has {len(ids)} tokens but the model's context is {ctx}; shorten it]",
                  file=sys.stderr, flush=True)
            continue
        params = dataclasses.replace(sampling, max_new_tokens=min(sampling.max_new_tokens, ctx - len(ids)),
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
