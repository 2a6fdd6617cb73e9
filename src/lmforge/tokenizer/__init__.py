"""One `Tokenizer` facade over the tokenizer formats LLMs ship with.

Backends (chosen by what the files are, never by a model name):

* HF `tokenizer.json` -> the `tokenizers` library (byte-level BPE, byte-fallback BPE, Unigram, ...).
* SentencePiece `tokenizer.model` (a protobuf) -> the `sentencepiece` library.
* tiktoken ranks (`*.tiktoken`, or Meta's Llama-3 `tokenizer.model`, which is the same text format)
  -> the `tiktoken` library.
* Vocabularies embedded in GGUF files, rebuilt as one of the above.

Modules: `facade` (`Tokenizer`: loading, BOS/EOS, special tokens, saving), `backends` (the three
libraries behind one interface), `gguf` (GGUF vocabularies both ways), `stream` (`StreamDecoder`),
`training` (`train_bpe`), `base` (token types, pre-tokenizer regexes, the byte-level map, the error).
The GGUF file itself is read by `lmforge.gguf_header`.

Heavy libraries are imported inside functions so that importing this package stays cheap.
"""

from lmforge.gguf_header import read_gguf_metadata
from lmforge.tokenizer.backends import merges_from_ranks
from lmforge.tokenizer.base import (
    BYTE,
    CONTROL,
    GPT2_PATTERN,
    LLAMA3_PATTERN,
    NORMAL,
    QWEN2_PATTERN,
    UNKNOWN,
    UNUSED,
    USER_DEFINED,
    TokenizerError,
    bytes_to_unicode,
)
from lmforge.tokenizer.facade import Tokenizer
from lmforge.tokenizer.stream import StreamDecoder
from lmforge.tokenizer.training import train_bpe

__all__ = [
    "BYTE",
    "CONTROL",
    "GPT2_PATTERN",
    "LLAMA3_PATTERN",
    "NORMAL",
    "QWEN2_PATTERN",
    "UNKNOWN",
    "UNUSED",
    "USER_DEFINED",
    "StreamDecoder",
    "Tokenizer",
    "TokenizerError",
    "bytes_to_unicode",
    "merges_from_ranks",
    "read_gguf_metadata",
    "train_bpe",
]
