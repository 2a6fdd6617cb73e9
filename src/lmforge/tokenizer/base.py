"""Facts about tokenizer formats that every backend shares: token types, pre-tokenizer regexes,
GPT-2's byte-to-character map, and the error type."""

from __future__ import annotations

from functools import cache

from lmforge.errors import LmforgeError


class TokenizerError(LmforgeError):
    """A tokenizer file is missing, malformed or unsupported."""


# GGUF token types (same numbering as SentencePiece's piece types)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer regexes. GPT-2's is the original; Llama-3 (and cl100k-like) and Qwen2 differ in
# how they treat digits (runs of up to 3 vs single digits) and newlines.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_PRE_PATTERNS = {"llama3": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN}


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (how byte-level BPE writes tokens).

    Printable Latin-1 bytes map to themselves; the other 68 bytes are shifted to code points 256+.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@cache
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def bytelevel(token: bytes) -> str:
    """A token's bytes as byte-level BPE writes them ("Ġthe" for b" the")."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def from_bytelevel(token: str) -> bytes | None:
    """Inverse of `bytelevel`; None for a string that is not byte-level text."""
    table = _unicode_to_bytes()
    try:
        return bytes(table[c] for c in token)
    except KeyError:
        return None


def pre_tokenizer(kind: str):
    """A `tokenizers` pre-tokenizer: "gpt2" (GPT-2's regex inside ByteLevel), "digits" (every digit
    split off first, then GPT-2's), or "llama3" / "qwen2" (that regex, then a regex-less ByteLevel)."""
    from tokenizers import Regex, pre_tokenizers

    if kind == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "digits":
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        )
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRE_PATTERNS[kind]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
