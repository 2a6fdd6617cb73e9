"""Chat formatting: a model's own Jinja chat template, or a built-in prompt style.

A checkpoint that ships a chat template (tokenizer_config.json `chat_template`, or GGUF metadata
`tokenizer.chat_template`) is rendered with Jinja the way HF transformers renders it: a sandboxed
environment with `trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, a `tojson` filter
that keeps non-ASCII text, `raise_exception(msg)` and `strftime_now(fmt)`, and the variables
`messages`, `bos_token`, `eos_token` and `add_generation_prompt`.

Checkpoints without one use a built-in style (`PROMPT_STYLES`), picked from the tokens the
vocabulary has (`<|im_start|>` → chatml …) or the config name, or named explicitly.

    text = format_chat([{"role": "user", "content": "Hi"}], tokenizer, config)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.config import Config
    from lmforge.tokenizer import Tokenizer

Message = Mapping[str, Any]


class PromptError(LmforgeError, ValueError):
    """A chat template or prompt style failed (bad messages, unknown style, template error)."""


# ---------------------------------------------------------------------------------------------
# Jinja chat templates
# ---------------------------------------------------------------------------------------------
def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson HTML-escapes `<`, `>`, `&` and `'`; chat templates expect plain JSON
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    from datetime import datetime

    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(Extension):
        """`{% generation %}…{% endgeneration %}` marks assistant text for training masks; render its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body, lineno=lineno)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _Generation])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise PromptError(f"chat template has a syntax error at line {e.lineno}: {e.message}") from None


def render_template(template: str, messages: Sequence[Message], *, bos_token: str = "", eos_token: str = "",
                    add_generation_prompt: bool = True, **variables: Any) -> str:
    """Render a Jinja chat template as HF transformers does.

    Args:
        template: the template source.
        messages: `[{"role": "user", "content": "…"}, …]`.
        bos_token / eos_token: the tokenizer's special token strings.
        add_generation_prompt: end with the header of an assistant turn.
        **variables: extra template variables (`tools`, `documents`, `enable_thinking` …).
    """
    import jinja2

    try:
        return _compile(template).render(messages=list(messages), bos_token=bos_token, eos_token=eos_token,
                                         add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.TemplateError as e:
        raise PromptError(f"chat template error: {e}") from None


# ---------------------------------------------------------------------------------------------
# built-in prompt styles
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptStyle:
    """A chat format for checkpoints without a template.

    Attributes:
        name: the style's name (`--prompt-style NAME`).
        render: (messages, add_generation_prompt) -> prompt text.
        stop_tokens: token strings that end an assistant turn (besides the tokenizer's EOS).
        stop: strings that end a turn in styles without a dedicated token (e.g. "\\n### Instruction").
    """

    name: str
    render: Callable[[list[Message], bool], str]
    stop_tokens: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()


def _split_system(messages: list[Message]) -> tuple[str | None, list[Message]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def _render_plain(messages: list[Message], add_generation_prompt: bool) -> str:
    # a base model just continues the text: contents joined by blank lines
    return "\n\n".join(m["content"] for m in messages)


_ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                    "Write a response that appropriately completes the request.")


def _render_alpaca(messages: list[Message], add_generation_prompt: bool) -> str:
    system, rest = _split_system(messages)
    out = (system or _ALPACA_PREAMBLE) + "\n\n"
    for m in rest:
        if m["role"] == "user":
            out += f"### Instruction:\n{m['content']}\n\n"
        else:
            out += f"### Response:\n{m['content']}\n\n"
    if add_generation_prompt:
        out += "### Response:\n"
    return out


def _render_chatml(messages: list[Message], add_generation_prompt: bool) -> str:
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _render_llama2(messages: list[Message], add_generation_prompt: bool) -> str:
    # [INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] …  (the first
    # <s> is the tokenizer's BOS)
    system, rest = _split_system(messages)
    out, first = "", True
    for m in rest:
        if m["role"] == "user":
            content = m["content"]
            if first and system:
                content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
            out += ("" if first else "<s>") + f"[INST] {content.strip()} [/INST]"
            first = False
        else:
            out += f" {m['content'].strip()} </s>"
    return out


def _render_llama3(messages: list[Message], add_generation_prompt: bool) -> str:
    out = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
                  for m in messages)
    return out + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else "")


def _render_phi2(messages: list[Message], add_generation_prompt: bool) -> str:
    system, rest = _split_system(messages)
    out = f"{system}\n" if system else ""
    for m in rest:
        out += f"Instruct: {m['content']}\n" if m["role"] == "user" else f"Output: {m['content']}\n"
    return out + ("Output:" if add_generation_prompt else "")


def _render_phi3(messages: list[Message], add_generation_prompt: bool) -> str:
    out = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages)
    return out + ("<|assistant|>\n" if add_generation_prompt else "")


def _render_gemma(messages: list[Message], add_generation_prompt: bool) -> str:
    # Gemma has no system role: the system text opens the first user turn
    system, rest = _split_system(messages)
    out = ""
    for i, m in enumerate(rest):
        role = "model" if m["role"] == "assistant" else m["role"]
        content = m["content"].strip()
        if i == 0 and system:
            content = f"{system.strip()}\n\n{content}"
        out += f"<start_of_turn>{role}\n{content}<end_of_turn>\n"
    return out + ("<start_of_turn>model\n" if add_generation_prompt else "")


PROMPT_STYLES: dict[str, PromptStyle] = {
    s.name: s
    for s in (
        PromptStyle("default", _render_plain),
        PromptStyle("alpaca", _render_alpaca, stop=("\n### Instruction:",)),
        PromptStyle("chatml", _render_chatml, stop_tokens=("<|im_end|>", "<|endoftext|>")),
        PromptStyle("llama2", _render_llama2, stop_tokens=("</s>",)),
        PromptStyle("llama3", _render_llama3, stop_tokens=("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>")),
        PromptStyle("phi2", _render_phi2, stop=("\nInstruct:",)),
        PromptStyle("phi3", _render_phi3, stop_tokens=("<|end|>", "<|endoftext|>")),
        PromptStyle("gemma", _render_gemma, stop_tokens=("<end_of_turn>", "<eos>")),
    )
}
_ALIASES = {"plain": "default", "none": "default", "llama-2": "llama2", "llama-3": "llama3", "phi": "phi2",
            "phi-2": "phi2", "phi-3": "phi3", "qwen": "chatml"}

# special tokens that identify a style when the vocabulary has them, most specific first
_STYLE_MARKERS = (
    ("<|eot_id|>", "llama3"),
    ("<start_of_turn>", "gemma"),
    ("<|im_start|>", "chatml"),
    ("<|assistant|>", "phi3"),
)
# config names (lower case) that identify a style: substring -> style
_STYLE_NAMES = (
    ("llama-3", "llama3"), ("llama3", "llama3"), ("llama-2", "llama2"), ("llama2", "llama2"),
    ("gemma", "gemma"), ("phi-3", "phi3"), ("phi3", "phi3"), ("phi-2", "phi2"), ("phi2", "phi2"),
    ("qwen", "chatml"), ("smollm", "chatml"), ("alpaca", "alpaca"),
)


def get_style(name: str) -> PromptStyle:
    """The built-in style `name` (`default`, `alpaca`, `chatml`, `llama2`, `llama3`, `phi2`, `phi3`, `gemma`)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in PROMPT_STYLES:
        raise PromptError(f"unknown prompt style {name!r} (choose one of: {', '.join(PROMPT_STYLES)}, or 'template')")
    return PROMPT_STYLES[key]


def detect_style(tokenizer: Tokenizer | None, config: Config | None) -> str:
    """Name of the best built-in style for a checkpoint without a chat template."""
    if tokenizer is not None:
        for token, style in _STYLE_MARKERS:
            if tokenizer.token_to_id(token) is not None:
                return style
    name = (config.name if config is not None else "").lower()
    for part, style in _STYLE_NAMES:
        if part in name and (style != "llama2" or "chat" in name):
            return style
    return "default"


def resolve_style(tokenizer: Tokenizer | None, config: Config | None, style: str | None = None) -> str:
    """`"template"` when the model's chat template applies, else a built-in style name.

    `style` None or "auto" picks automatically: the template when the tokenizer has one.
    """
    if style in (None, "auto"):
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return "template"
        return detect_style(tokenizer, config)
    if style == "template":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise PromptError("--prompt-style template: this checkpoint has no chat template "
                              f"(choose one of: {', '.join(PROMPT_STYLES)})")
        return "template"
    return get_style(style).name


def _special(tokenizer: Tokenizer | None, token_id: int | None) -> str:
    if tokenizer is None or token_id is None:
        return ""
    return tokenizer.id_to_token(token_id) or ""


def _check_messages(messages: Sequence[Message]) -> list[Message]:
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise PromptError(f"message {i} must be a dict with 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise PromptError(f"message {i} has role {m['role']!r} (use system, user, assistant or tool)")
        out.append(m)
    return out


def format_chat(messages: Sequence[Message], tokenizer: Tokenizer | None, config: Config | None = None,
                style: str | None = None, add_generation_prompt: bool = True, **variables: Any) -> str:
    """Render a conversation as prompt text for this model.

    Args:
        messages: `[{"role": "system"|"user"|"assistant", "content": "…"}, …]`.
        tokenizer: supplies the chat template and special token strings.
        config: used to choose a built-in style when there is no template.
        style: None/"auto" (template if present, else detected), "template", or a built-in style name.
        add_generation_prompt: end with the start of an assistant turn.
        **variables: extra template variables.
    """
    messages = _check_messages(messages)
    chosen = resolve_style(tokenizer, config, style)
    if chosen == "template":
        return render_template(tokenizer.chat_template, messages, bos_token=_special(tokenizer, tokenizer.bos_id),
                               eos_token=_special(tokenizer, tokenizer.eos_id),
                               add_generation_prompt=add_generation_prompt, **variables)
    return get_style(chosen).render(messages, add_generation_prompt)


def encode_chat(messages: Sequence[Message], tokenizer: Tokenizer, config: Config | None = None,
                style: str | None = None, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `format_chat(...)`.

    A template writes its own BOS (as transformers' `apply_chat_template` assumes), so its text is
    encoded without adding one; built-in styles get the tokenizer's default BOS.
    """
    chosen = resolve_style(tokenizer, config, style)
    text = format_chat(messages, tokenizer, config, chosen, add_generation_prompt)
    return tokenizer.encode(text, bos=False if chosen == "template" else None)


_TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>",
                    "<|end_of_text|>", "</s>", "<eos>")


def stop_tokens(tokenizer: Tokenizer | None, config: Config | None = None, style: str | None = None) -> list[int]:
    """Token ids that end an assistant turn in this format (besides the tokenizer's EOS)."""
    if tokenizer is None:
        return []
    chosen = resolve_style(tokenizer, config, style)
    if chosen == "template":
        # a template names no stop token: take the end-of-turn tokens the vocabulary has,
        # but only those the template actually writes
        names = [t for t in _TURN_END_TOKENS if t in tokenizer.chat_template]
    else:
        names = list(get_style(chosen).stop_tokens)
    ids = [tokenizer.token_to_id(t) for t in names]
    return sorted({i for i in ids if i is not None})


def stop_strings(tokenizer: Tokenizer | None, config: Config | None = None, style: str | None = None) -> list[str]:
    """Text stop strings of a built-in style (templates use stop tokens only)."""
    chosen = resolve_style(tokenizer, config, style)
    return [] if chosen == "template" else list(get_style(chosen).stop)
