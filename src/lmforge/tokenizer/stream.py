"""Incremental decoding that never splits a UTF-8 character (for streaming generated text)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.tokenizer.facade import Tokenizer


class StreamDecoder:
    """Turns a stream of token ids into text pieces without ever splitting a UTF-8 character.

    Each `push` decodes a short window (the previous piece's tokens as context, then the new ones)
    and returns what the new tokens added. While that text ends in U+FFFD, the last token(s) hold an
    incomplete character: nothing is returned until a later token completes it (after 4 tokens the
    U+FFFD is taken as real). The pieces concatenate to `tokenizer.decode(all ids)`.
    """

    _MAX_HOLD = 4  # a UTF-8 character has at most 4 bytes, so at most 4 tokens can hold parts of it

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # start of the context window
        self._read = 0  # tokens before this index have been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is incomplete)."""
        self.ids.append(int(token_id))
        return self._emit(final=False)

    def flush(self) -> str:
        """Return whatever is still held back (at the end of generation)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        if self._read == len(self.ids):
            return ""
        before = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        if not final and text.endswith("\ufffd") and len(self.ids) - self._read < self._MAX_HOLD:
            return ""
        # the window's text normally extends `before`; if a decoder rewrote the seam, emit what is new
        piece = text[len(before) :] if text.startswith(before) else text[len(os.path.commonprefix([before, text])) :]
        self._prefix, self._read = self._read, len(self.ids)
        return piece
