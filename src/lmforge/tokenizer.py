"""One `Tokenizer` facade over the tokenizer formats LLMs ship with.

Backends (chosen by what the files are, never by a model name):

* HF `tokenizer.json` -> the `tokenizers` library (byte-level BPE, byte-fallback BPE, Unigram, ...).
* SentencePiece `tokenizer.model` (a protobuf) -> the `sentencepiece` library.
* tiktoken ranks (`*.tiktoken`, or Meta's Llama-3 `tokenizer.model`, which is the same text format)
  -> the `tiktoken` library.
* Vocabularies embedded in GGUF files: a BPE ("gpt2") vocab is rebuilt as a `tokenizers` BPE from
  `tokenizer.ggml.tokens` + `.merges` with the pre-tokenizer that `tokenizer.ggml.pre` names; a
  SentencePiece ("llama") vocab becomes a SentencePiece model built from pieces, scores and types.

The facade adds what every caller needs on top: BOS/EOS handling, special tokens written in text
(`"<|im_end|>"` encodes to its id), decoding that keeps partial UTF-8 bytes honest, an incremental
`stream_decoder()`, the chat template, and `save()` to files `transformers.AutoTokenizer` loads.

Heavy libraries are imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

import base64
import json
import mmap
import os
import re
import struct
import warnings
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from lmforge._io import atomic_write_bytes, atomic_write_text
from lmforge.errors import LmforgeError


class TokenizerError(LmforgeError):
    """A tokenizer file is missing, malformed or unsupported."""


# ---------------------------------------------------------------------------------------------
# facts about the formats

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

# `tokenizer.ggml.pre` values -> (pre-tokenizer kind, BPE ignore_merges). "gpt2": GPT-2's regex inside
# ByteLevel; "digits": every digit split off, then GPT-2's regex (StarCoder, SmolLM); the others a
# Split on the named regex followed by a regex-less ByteLevel.
_GGUF_PRE: dict[str, tuple[str, bool]] = {
    "default": ("gpt2", False),
    "gpt-2": ("gpt2", False),
    "gpt2": ("gpt2", False),
    "mpt": ("gpt2", False),
    "olmo": ("gpt2", False),
    "gpt-neox": ("gpt2", False),
    "smollm": ("digits", False),
    "starcoder": ("digits", False),
    "refact": ("digits", False),
    "llama-bpe": ("llama3", True),
    "llama3": ("llama3", True),
    "dbrx": ("llama3", False),
    "smaug-bpe": ("llama3", False),
    "qwen2": ("qwen2", False),
}
_PRE_PATTERNS = {"llama3": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN}

# Meta's Llama-3 `tokenizer.model` (tiktoken format) holds only the 128,000 ranks: the special tokens
# follow at 128000.. (Llama 3.1 names), reserved ones filling up to 256.
_LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]
_LLAMA3_N_SPECIAL = 256


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


def _bytelevel(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def _from_bytelevel(token: str) -> bytes | None:
    table = _unicode_to_bytes()
    try:
        return bytes(table[c] for c in token)
    except KeyError:
        return None


# ---------------------------------------------------------------------------------------------
# GGUF metadata (a small reader: gguf.GGUFReader parses every array element into numpy objects,
# which takes a minute for a 128k-token vocabulary; this reads the same header in a second)

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}


def read_gguf_metadata(path: str | os.PathLike, prefix: str = "") -> dict[str, Any]:
    """Read the key/value metadata of a GGUF file (no tensors).

    Args:
        path: the .gguf file.
        prefix: keep only keys starting with this (e.g. "tokenizer."); others are skipped cheaply.

    Returns:
        {key: value}: strings as `str`, numeric arrays as Python lists, string arrays as lists of `str`.
    """
    import numpy as np

    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise TokenizerError(f"{path}: cannot open GGUF file ({e.strerror})") from None
    with f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise TokenizerError(f"{path}: not a GGUF file (bad magic {bytes(buf[:4])!r})")
        version = struct.unpack_from("<I", buf, 4)[0]
        if version < 2:
            raise TokenizerError(f"{path}: GGUF version {version} is too old (need 2 or later)")
        n_kv = struct.unpack_from("<Q", buf, 16)[0]
        pos = 24

        def string() -> str:
            nonlocal pos
            (n,) = struct.unpack_from("<Q", buf, pos)
            s = buf[pos + 8 : pos + 8 + n].decode("utf-8", errors="replace")
            pos += 8 + n
            return s

        def skip_string() -> None:
            nonlocal pos
            pos += 8 + struct.unpack_from("<Q", buf, pos)[0]

        def value(vtype: int, keep: bool):
            nonlocal pos
            if vtype == 8:
                if keep:
                    return string()
                skip_string()
                return None
            if vtype == 9:
                etype, count = struct.unpack_from("<IQ", buf, pos)
                pos += 12
                if etype == 8:
                    if not keep:
                        for _ in range(count):
                            skip_string()
                        return None
                    return [string() for _ in range(count)]
                if etype == 9:
                    return [value(9, keep) for _ in range(count)]
                dt = np.dtype(_GGUF_NUMPY[etype])
                arr = np.frombuffer(buf, dtype=dt, count=count, offset=pos) if keep else None
                pos += dt.itemsize * count
                if arr is None:
                    return None
                return arr.astype(bool).tolist() if etype == 7 else arr.tolist()
            fmt = _GGUF_SCALARS.get(vtype)
            if fmt is None:
                raise TokenizerError(f"{path}: unknown GGUF value type {vtype} at byte {pos}")
            (v,) = struct.unpack_from(fmt, buf, pos)
            pos += struct.calcsize(fmt)
            return v

        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string()
            (vtype,) = struct.unpack_from("<I", buf, pos)
            pos += 4
            keep = key.startswith(prefix)
            v = value(vtype, keep)
            if keep:
                meta[key] = v
        return meta


# ---------------------------------------------------------------------------------------------
# backends: each encodes plain text (no BOS/EOS added) and decodes ids


class _HFBackend:
    """A `tokenizers.Tokenizer` (tokenizer.json, or a vocabulary rebuilt from GGUF/encoder.json)."""

    kind = "tokenizers"

    def __init__(self, tok, gguf_pre: str | None = None):
        self.tok = tok
        self.gguf_pre = gguf_pre  # llama.cpp's name for the pre-tokenizer, when known
        self.special_ids = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.tok.id_to_token(i)

    def special_tokens(self) -> dict[str, int]:
        return {t.content: i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}


class _SPMBackend:
    """A SentencePiece model (tokenizer.model protobuf, or one built from a GGUF "llama" vocab).

    SentencePiece never matches control pieces (`<s>`, `<|end|>`) in text, so the splitting on special
    tokens happens here; each text fragment gets the dummy-prefix space, as llama.cpp does.
    """

    kind = "sentencepiece"

    def __init__(self, proto_bytes: bytes):
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb

        self.proto_bytes = proto_bytes
        self.proto = pb.ModelProto()
        self.proto.ParseFromString(proto_bytes)
        self.sp = spm.SentencePieceProcessor(model_proto=proto_bytes)
        n = self.sp.get_piece_size()
        self.special_ids = {i for i in range(n) if self.sp.is_control(i)}
        self._specials = {self.sp.id_to_piece(i): i for i in self.special_ids if self.sp.id_to_piece(i)}
        # like llama.cpp, text is cut at control *and* user-defined pieces, each fragment getting its
        # own dummy-prefix space
        atomic = {p.piece: i for i, p in enumerate(self.proto.pieces) if p.type == USER_DEFINED and p.piece}
        self._atomic = {**atomic, **self._specials}
        alternation = "|".join(re.escape(s) for s in sorted(self._atomic, key=len, reverse=True))
        self._split = re.compile(f"({alternation})") if self._atomic else None

    def encode(self, text: str) -> list[int]:
        if self._split is None:
            return self.sp.encode(text) if text else []
        ids: list[int] = []
        for i, part in enumerate(self._split.split(text)):
            if i % 2:
                ids.append(self._atomic[part])
            elif part:
                ids.extend(self.sp.encode(part))
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        out: list[str] = []
        run: list[int] = []

        def flush() -> None:
            if not run:
                return
            text = self.sp.decode(run)
            # SentencePiece drops the first piece's leading space (the dummy prefix); after text or a
            # special token that space is real, as HF's decoders keep it
            if out and self.sp.id_to_piece(run[0]).startswith("▁"):
                text = " " + text
            out.append(text)
            run.clear()

        for i in ids:
            if i in self.special_ids:
                flush()
                if not skip_special_tokens:
                    out.append(self.sp.id_to_piece(i))
            else:
                run.append(i)
        flush()
        return "".join(out)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def token_to_id(self, token: str) -> int | None:
        i = self.sp.piece_to_id(token)
        return i if self.sp.id_to_piece(i) == token else None

    def id_to_token(self, i: int) -> str | None:
        return self.sp.id_to_piece(i) if 0 <= i < self.sp.get_piece_size() else None

    def special_tokens(self) -> dict[str, int]:
        return dict(self._specials)

    def to_hf(self):
        """An equivalent `tokenizers` BPE with byte fallback (the layout of Llama-2's tokenizer.json).

        SentencePiece BPE merges the adjacent pair whose merged piece scores highest; as HF merges
        that is every split (left, right) of a normal piece into two pieces, ranked by the merged
        piece's score.
        """
        from sentencepiece import sentencepiece_model_pb2 as pb
        from tokenizers import AddedToken, decoders, models, normalizers
        from tokenizers import Tokenizer as HFTokenizer

        if self.proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
            raise TokenizerError("only SentencePiece BPE models convert to tokenizer.json (this one is not BPE)")
        pieces = self.proto.pieces
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        candidates = []
        for i, p in enumerate(pieces):
            if p.type != NORMAL:
                continue
            for k in range(1, len(p.piece)):
                left, right = p.piece[:k], p.piece[k:]
                if left in vocab and right in vocab:
                    candidates.append((-p.score, i, vocab[left], vocab[right], left, right))
        candidates.sort()
        merges = [(c[4], c[5]) for c in candidates]
        unk = pieces[self.sp.unk_id()].piece
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True))
        prefix = self.proto.normalizer_spec.add_dummy_prefix
        steps = [normalizers.Prepend("▁")] if prefix else []
        tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
        dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        tok.decoder = decoders.Sequence([*dec, decoders.Strip(" ", 1, 0)] if prefix else dec)
        tok.add_tokens(
            [
                AddedToken(p.piece, special=p.type == CONTROL, normalized=False)
                for p in pieces
                if p.type in (CONTROL, USER_DEFINED) and p.piece
            ]
        )
        return tok


class _TiktokenBackend:
    """tiktoken ranks + a pre-tokenizer regex + special tokens (OpenAI encodings, Llama-3)."""

    kind = "tiktoken"

    def __init__(self, name: str, ranks: dict[bytes, int], pat_str: str, specials: dict[str, int]):
        import tiktoken

        self.name, self.ranks, self.pat_str, self.specials = name, ranks, pat_str, specials
        self.enc = tiktoken.Encoding(name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=specials)
        self.special_ids = set(specials.values())
        self._id_to_special = {i: s for s, i in specials.items()}

    def encode(self, text: str) -> list[int]:
        return self.enc.encode(text, allowed_special="all")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_batch(texts, allowed_special="all")

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        return self.enc.decode(ids, errors="replace")

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    def token_to_id(self, token: str) -> int | None:
        if token in self.specials:
            return self.specials[token]
        raw = _from_bytelevel(token)
        return self.ranks.get(raw) if raw is not None else None

    def id_to_token(self, i: int) -> str | None:
        if i in self._id_to_special:
            return self._id_to_special[i]
        try:
            return _bytelevel(self.enc.decode_single_token_bytes(i))
        except KeyError:
            return None

    def special_tokens(self) -> dict[str, int]:
        return dict(self.specials)

    def to_hf(self):
        """An equivalent `tokenizers` byte-level BPE (for tokenizer.json and GGUF export); cached."""
        if getattr(self, "_hf", None) is None:
            self._hf = self._build_hf()
        return self._hf

    def _build_hf(self):
        from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        vocab = {_bytelevel(tok): rank for tok, rank in self.ranks.items()}
        merges = [(_bytelevel(a), _bytelevel(b)) for a, b in merges_from_ranks(self.ranks)]
        # tiktoken looks a whole pre-token up before merging: that is BPE's ignore_merges
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(self.pat_str), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        specials = sorted(self.specials.items(), key=lambda kv: kv[1])
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s, _ in specials])
        for s, i in specials:
            if tok.token_to_id(s) != i:
                raise TokenizerError(f"special token {s!r} must follow the ranks contiguously to convert (id {i})")
        return tok


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recover BPE merges from tiktoken ranks: each multi-byte token's last merge, in rank order.

    The last merge is found by running BPE on the token's bytes with only lower-ranked tokens
    allowed; it must end in exactly two parts.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, best_rank = -1, rank
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best_rank:
                    best, best_rank = i, r
            if best < 0:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 2:
            raise TokenizerError(f"rank {rank} ({token!r}) cannot be built by merging lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def _read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                tok, rank = line.split()
                ranks[base64.b64decode(tok, validate=True)] = int(rank)
            except ValueError:
                raise TokenizerError(f"{path}:{n}: not a tiktoken ranks line (`<base64> <rank>`)") from None
    return ranks


def _is_tiktoken_text(path: Path) -> bool:
    """tiktoken files are ASCII lines `<base64> <rank>`; a SentencePiece model is a binary protobuf."""
    with open(path, "rb") as f:
        head = f.read(256).split(b"\n")[0]
    return bool(re.fullmatch(rb"[A-Za-z0-9+/=]+ \d+", head))


# ---------------------------------------------------------------------------------------------
# the facade


def _content(value: Any) -> str | None:
    """A special token as written in HF configs: a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise TokenizerError(f"{path}: invalid JSON ({e})") from None
    return data if isinstance(data, dict) else {}


class Tokenizer:
    """Text <-> token ids for any supported format, with the model's special-token conventions.

    Build one with `Tokenizer.from_dir`, `Tokenizer.from_gguf`, `Tokenizer.from_tiktoken` or
    `train_bpe`; write it with `save`.
    """

    def __init__(
        self,
        backend: _HFBackend | _SPMBackend | _TiktokenBackend,
        *,
        bos_id: int | None = None,
        eos_ids: Iterable[int] = (),
        pad_id: int | None = None,
        unk_id: int | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
        chat_template: str | None = None,
        source: str = "",
    ):
        self._backend = backend
        self.bos_id = bos_id
        self.eos_ids = list(dict.fromkeys(int(i) for i in eos_ids))
        self.pad_id = pad_id
        self.unk_id = unk_id
        self.add_bos = bool(add_bos)
        self.add_eos = bool(add_eos)
        self.chat_template = chat_template
        self.source = source

    def __repr__(self) -> str:
        return (
            f"Tokenizer({self._backend.kind}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_ids={self.eos_ids}, add_bos={self.add_bos}, source={self.source!r})"
        )

    # ---- basic API

    @property
    def backend(self) -> str:
        """Which library does the work: "tokenizers", "sentencepiece" or "tiktoken"."""
        return self._backend.kind

    @property
    def vocab_size(self) -> int:
        """Number of token ids (the largest id + 1), special tokens included."""
        return self._backend.vocab_size

    @property
    def eos_id(self) -> int | None:
        """The main end-of-sequence id (first of `eos_ids`)."""
        return self.eos_ids[0] if self.eos_ids else None

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special (control) tokens by text, e.g. {"<|im_end|>": 2}."""
        return self._backend.special_tokens()

    @property
    def special_ids(self) -> set[int]:
        return set(self._backend.special_ids)

    def token_to_id(self, token: str) -> int | None:
        """The id of a token as the vocabulary writes it (e.g. "Ġthe", "▁the", "<|im_end|>"), or None."""
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary's string for an id (byte-level or SentencePiece form), or None if out of range."""
        return self._backend.id_to_token(int(token_id))

    def encode(self, text: str, bos: bool | None = None, eos: bool = False) -> list[int]:
        """Token ids of `text`; special tokens written in the text become their ids.

        Args:
            text: the text.
            bos: prepend BOS (None: the model's default, `add_bos`).
            eos: append EOS.
        """
        ids = self._backend.encode(text)
        return self._wrap(ids, bos, eos)

    def encode_batch(self, texts: list[str], bos: bool | None = None, eos: bool = False) -> list[list[int]]:
        """`encode` for many texts (in parallel where the backend can)."""
        return [self._wrap(ids, bos, eos) for ids in self._backend.encode_batch(list(texts))]

    def _wrap(self, ids: list[int], bos: bool | None, eos: bool) -> list[int]:
        if self.add_bos if bos is None else bos:
            if self.bos_id is None:
                raise TokenizerError(f"BOS requested but this tokenizer ({self.source}) has no BOS token")
            ids = [self.bos_id, *ids]
        if eos:
            if self.eos_id is None:
                raise TokenizerError(f"EOS requested but this tokenizer ({self.source}) has no EOS token")
            ids = [*ids, self.eos_id]
        return list(ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`. Bytes that do not form complete UTF-8 characters come out as U+FFFD."""
        return self._backend.decode([int(i) for i in ids], skip_special_tokens)

    def stream_decoder(self, skip_special_tokens: bool = False) -> StreamDecoder:
        """An incremental decoder: `.push(id)` returns the new text, never half a character."""
        return StreamDecoder(self, skip_special_tokens)

    # ---- loading

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a checkpoint / HF tokenizer directory.

        Reads tokenizer.json, or tokenizer.model (SentencePiece or tiktoken format), or
        vocab.json + merges.txt / encoder.json + vocab.bpe (GPT-2 style); then tokenizer_config.json
        (bos/eos/pad, add_bos_token/add_eos_token, chat_template, added tokens),
        special_tokens_map.json, chat_template.jinja and generation_config.json (eos ids).
        """
        d = Path(path)
        if d.is_file():
            if d.suffix == ".gguf":
                return cls.from_gguf(d)
            if d.suffix == ".tiktoken":
                return cls.from_tiktoken(d)
            d = d.parent
        if not d.is_dir():
            raise TokenizerError(f"{d}: no such tokenizer directory")
        config = _read_json(d / "tokenizer_config.json")
        added = {
            int(i): (_content(t), bool(t.get("special", True)) if isinstance(t, dict) else True)
            for i, t in (config.get("added_tokens_decoder") or {}).items()
        }
        if (d / "tokenizer.json").is_file():
            from tokenizers import Tokenizer as HFTokenizer

            try:
                backend = _HFBackend(HFTokenizer.from_file(str(d / "tokenizer.json")))
            except Exception as e:  # the Rust error text is the useful part
                raise TokenizerError(f"{d / 'tokenizer.json'}: cannot load ({e})") from None
        elif (d / "tokenizer.model").is_file():
            model = d / "tokenizer.model"
            if _is_tiktoken_text(model):
                specials = {c: i for i, (c, _) in added.items() if c}
                tok = cls.from_tiktoken(model, special_tokens=specials or None)
                backend = tok._backend
                if not config:
                    return tok  # a bare Meta directory: the Llama-3 defaults from_tiktoken chose
            else:
                backend = _SPMBackend(model.read_bytes())
        elif (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            backend = _HFBackend(_gpt2_bpe(d / "vocab.json", d / "merges.txt", added))
        elif (d / "encoder.json").is_file() and (d / "vocab.bpe").is_file():
            backend = _HFBackend(_gpt2_bpe(d / "encoder.json", d / "vocab.bpe", added))
        else:
            raise TokenizerError(
                f"{d}: no tokenizer files (expected tokenizer.json, tokenizer.model, "
                f"or vocab.json + merges.txt)"
            )
        return cls._with_config(backend, d, config)

    @classmethod
    def _with_config(cls, backend, d: Path, config: dict) -> Tokenizer:
        special_map = _read_json(d / "special_tokens_map.json")
        generation = _read_json(d / "generation_config.json")

        def token_id(key: str) -> int | None:
            text = _content(config.get(key)) or _content(special_map.get(key))
            return backend.token_to_id(text) if text else None

        bos_id, eos_id, pad_id, unk_id = (token_id(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token"))
        if isinstance(backend, _SPMBackend):  # the model itself knows its ids
            sp = backend.sp
            bos_id = bos_id if bos_id is not None else (sp.bos_id() if sp.bos_id() >= 0 else None)
            eos_id = eos_id if eos_id is not None else (sp.eos_id() if sp.eos_id() >= 0 else None)
            unk_id = unk_id if unk_id is not None else (sp.unk_id() if sp.unk_id() >= 0 else None)
        bos_id = generation.get("bos_token_id", bos_id) if bos_id is None else bos_id
        eos_ids = [eos_id] if eos_id is not None else []
        gen_eos = generation.get("eos_token_id")
        if gen_eos is not None:
            eos_ids += gen_eos if isinstance(gen_eos, list) else [gen_eos]
        if pad_id is None and isinstance(generation.get("pad_token_id"), int):
            pad_id = generation["pad_token_id"]
        add_bos = config.get("add_bos_token")
        if add_bos is None:
            add_bos = _adds_bos(backend, bos_id)
        chat_template = _chat_template(d, config)
        return cls(
            backend,
            bos_id=bos_id,
            eos_ids=eos_ids,
            pad_id=pad_id,
            unk_id=unk_id,
            add_bos=add_bos,
            add_eos=bool(config.get("add_eos_token", False)),
            chat_template=chat_template,
            source=str(d),
        )

    @classmethod
    def from_tiktoken(
        cls,
        path: str | os.PathLike,
        *,
        pat_str: str | None = None,
        special_tokens: dict[str, int] | None = None,
    ) -> Tokenizer:
        """Load tiktoken ranks: an OpenAI `<name>.tiktoken` file or Meta's Llama-3 `tokenizer.model`.

        The regex and special tokens come from the arguments, else from tiktoken's own definition of
        the file's encoding name (r50k_base, p50k_base, cl100k_base, o200k_base), else from a
        `<name>.json` beside it, else (a file of 128,000 ranks) Llama-3's.
        """
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: no such tiktoken file")
        ranks = _read_tiktoken_ranks(path)
        name = path.stem
        known = _openai_encoding(name, ranks)
        sidecar = _read_json(path.with_suffix(".json"))
        llama3 = not known and not sidecar and len(ranks) == 128000
        if pat_str is None:
            pat_str = known.get("pat_str") or sidecar.get("pat_str") or (LLAMA3_PATTERN if llama3 else None)
        if pat_str is None:
            raise TokenizerError(f"{path}: unknown tiktoken encoding {name!r}: pass pat_str (its pre-tokenizer regex)")
        if special_tokens is None:
            special_tokens = known.get("special_tokens") or sidecar.get("special_tokens")
        if special_tokens is None and llama3:
            names = _LLAMA3_SPECIALS + [
                f"<|reserved_special_token_{i}|>" for i in range(2, 2 + _LLAMA3_N_SPECIAL - len(_LLAMA3_SPECIALS))
            ]
            special_tokens = {s: 128000 + i for i, s in enumerate(names)}
        special_tokens = dict(special_tokens or {})
        backend = _TiktokenBackend(name, ranks, pat_str, special_tokens)
        if llama3:
            bos, eos_ids, add_bos = special_tokens.get("<|begin_of_text|>"), ["<|end_of_text|>", "<|eot_id|>"], True
            eos_ids = [special_tokens[s] for s in eos_ids if s in special_tokens]
        else:
            bos = special_tokens.get("<|endoftext|>")
            eos_ids, add_bos = ([bos] if bos is not None else []), False
        return cls(backend, bos_id=bos, eos_ids=eos_ids, add_bos=add_bos, source=str(path))

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> Tokenizer:
        """The tokenizer embedded in a GGUF file (model or vocab-only)."""
        meta = read_gguf_metadata(path, prefix="tokenizer.")
        return cls.from_gguf_metadata(meta, source=str(path))

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any], source: str = "gguf") -> Tokenizer:
        """Build from GGUF `tokenizer.*` metadata ({key: value}, e.g. from `read_gguf_metadata`)."""
        model = meta.get("tokenizer.ggml.model")
        tokens = meta.get("tokenizer.ggml.tokens")
        if model is None or not tokens:
            raise TokenizerError(f"{source}: no tokenizer in this GGUF (tokenizer.ggml.model/tokens missing)")
        types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))

        def opt_id(key: str) -> int | None:
            v = meta.get(f"tokenizer.ggml.{key}_token_id")
            return int(v) if v is not None and 0 <= int(v) < len(tokens) else None

        pre = meta.get("tokenizer.ggml.pre", "default")
        if model == "gpt2":
            backend = _HFBackend(_gguf_bpe(tokens, types, meta.get("tokenizer.ggml.merges") or [], pre, source), pre)
            default_add_bos = _GGUF_PRE.get(pre, ("", False))[0] == "llama3"
        elif model == "llama":
            scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
            add_prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
            proto = _spm_proto(tokens, scores, types, opt_id("unknown"), opt_id("bos"), opt_id("eos"), add_prefix)
            backend = _SPMBackend(proto)
            default_add_bos = True
        else:
            raise TokenizerError(
                f"{source}: unsupported GGUF tokenizer model {model!r} (supported: 'gpt2' BPE, 'llama' SentencePiece)"
            )
        eos_ids = [i for i in (opt_id("eos"), opt_id("eot"), opt_id("eom")) if i is not None]
        template = meta.get("tokenizer.chat_template")
        return cls(
            backend,
            bos_id=opt_id("bos"),
            eos_ids=eos_ids,
            pad_id=opt_id("padding"),
            unk_id=opt_id("unknown"),
            add_bos=meta.get("tokenizer.ggml.add_bos_token", default_add_bos),
            add_eos=meta.get("tokenizer.ggml.add_eos_token", False),
            chat_template=template if isinstance(template, str) else None,
            source=source,
        )

    # ---- writing

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write tokenizer.json (+ tokenizer.model for SentencePiece) and tokenizer_config.json.

        `transformers.AutoTokenizer.from_pretrained(out_dir)` loads the result and encodes the same
        ids (BOS included by default exactly when `add_bos`). Returns `out_dir`.
        """
        out = Path(out_dir)
        if out.suffix == ".json" and not out.is_dir():  # a path to tokenizer.json was given
            out = out.parent
        out.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {}
        backend = self._backend
        if isinstance(backend, _SPMBackend):
            # the .model for SentencePiece users, the equivalent tokenizer.json for AutoTokenizer (whose
            # own conversion of a .model treats runs of spaces differently from SentencePiece)
            atomic_write_bytes(out / "tokenizer.model", backend.proto_bytes)
            hf = backend.to_hf()
        elif isinstance(backend, _TiktokenBackend):
            hf = backend.to_hf()
        else:
            hf = backend.tok
        self._set_post_processor(hf)
        atomic_write_text(out / "tokenizer.json", hf.to_str(pretty=False))
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config["added_tokens_decoder"] = {
            str(i): _added_token_json(t.content, t.special, t) for i, t in hf.get_added_tokens_decoder().items()
        }
        for key, i in (("bos_token", self.bos_id), ("eos_token", self.eos_id), ("pad_token", self.pad_id), ("unk_token", self.unk_id)):
            if i is not None:
                config[key] = self.id_to_token(i)
        config.update(
            add_bos_token=self.add_bos,
            add_eos_token=self.add_eos,
            clean_up_tokenization_spaces=False,
            model_max_length=1_000_000_000,
        )
        if self.chat_template:
            config["chat_template"] = self.chat_template
        atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return out

    def _set_post_processor(self, hf) -> None:
        """Make `hf`'s post-processor add BOS/EOS the way `encode` does by default (what HF applies)."""
        from tokenizers import processors

        bos = [self.id_to_token(self.bos_id)] if self.add_bos and self.bos_id is not None else []
        eos = [self.id_to_token(self.eos_id)] if self.add_eos and self.eos_id is not None else []
        if not bos and not eos:
            hf.post_processor = None
            return
        single = [*bos, "$A:0", *eos]
        pair = [*single, *(f"{t}:1" for t in bos), "$B:1", *(f"{t}:1" for t in eos)]
        ids = {t: hf.token_to_id(t) for t in bos + eos}
        hf.post_processor = processors.TemplateProcessing(
            single=" ".join(single), pair=" ".join(pair), special_tokens=list(ids.items())
        )

    def gguf_metadata(self) -> dict[str, Any]:
        """This tokenizer as GGUF `tokenizer.*` metadata (for writing a GGUF file)."""
        backend = self._backend
        meta: dict[str, Any] = {}
        if isinstance(backend, _SPMBackend):
            pieces = backend.proto.pieces
            meta["tokenizer.ggml.model"] = "llama"
            meta["tokenizer.ggml.pre"] = "default"
            meta["tokenizer.ggml.tokens"] = [p.piece for p in pieces]
            meta["tokenizer.ggml.scores"] = [float(p.score) for p in pieces]
            meta["tokenizer.ggml.token_type"] = [int(p.type) for p in pieces]
            meta["tokenizer.ggml.add_space_prefix"] = bool(backend.proto.normalizer_spec.add_dummy_prefix)
        else:
            hf = backend.to_hf() if isinstance(backend, _TiktokenBackend) else backend.tok
            spec = json.loads(hf.to_str())
            if spec["model"]["type"] != "BPE":
                raise TokenizerError(f"cannot write a {spec['model']['type']} tokenizer as GGUF (only BPE and SentencePiece)")
            n = hf.get_vocab_size(with_added_tokens=True)
            tokens = [f"[PAD{i}]" for i in range(n)]
            types = [UNUSED] * n
            for tok, i in hf.get_vocab(with_added_tokens=True).items():
                if i < n:
                    tokens[i], types[i] = tok, NORMAL
            for i, t in hf.get_added_tokens_decoder().items():
                if i < n:
                    types[i] = CONTROL if t.special else USER_DEFINED
            merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
            meta["tokenizer.ggml.model"] = "gpt2"
            meta["tokenizer.ggml.pre"] = _gguf_pre_name(backend, spec)
            meta["tokenizer.ggml.tokens"] = tokens
            meta["tokenizer.ggml.token_type"] = types
            meta["tokenizer.ggml.merges"] = merges
        for key, i in (("bos", self.bos_id), ("eos", self.eos_id), ("padding", self.pad_id), ("unknown", self.unk_id)):
            if i is not None:
                meta[f"tokenizer.ggml.{key}_token_id"] = int(i)
        for i in self.eos_ids[1:2]:
            meta["tokenizer.ggml.eot_token_id"] = int(i)
        meta["tokenizer.ggml.add_bos_token"] = self.add_bos
        meta["tokenizer.ggml.add_eos_token"] = self.add_eos
        if self.chat_template:
            meta["tokenizer.chat_template"] = self.chat_template
        return meta


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


# ---------------------------------------------------------------------------------------------
# builders


def _added_token_json(content: str, special: bool, tok: Any = None) -> dict[str, Any]:
    return {
        "content": content,
        "lstrip": bool(getattr(tok, "lstrip", False)),
        "normalized": bool(getattr(tok, "normalized", False)),
        "rstrip": bool(getattr(tok, "rstrip", False)),
        "single_word": bool(getattr(tok, "single_word", False)),
        "special": bool(special),
    }


def _adds_bos(backend, bos_id: int | None) -> bool:
    """Whether a tokenizer.json's post-processor prepends BOS (HF's source of truth for that)."""
    if bos_id is None:
        return False
    if isinstance(backend, _HFBackend):
        ids = backend.tok.encode("a", add_special_tokens=True).ids
        return bool(ids) and ids[0] == bos_id
    return isinstance(backend, _SPMBackend)  # Llama-style SentencePiece models add BOS


def _chat_template(d: Path, config: dict) -> str | None:
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text(encoding="utf-8")
    template = config.get("chat_template")
    if template is None and (d / "chat_template.json").is_file():
        template = _read_json(d / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def _pre_tokenizer(kind: str):
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


def _gguf_bpe(tokens: list[str], types: list[int], merges: list[str], pre: str, source: str):
    """A `tokenizers` byte-level BPE from a GGUF "gpt2" vocabulary."""
    from tokenizers import AddedToken, decoders, models, normalizers
    from tokenizers import Tokenizer as HFTokenizer

    if pre not in _GGUF_PRE:
        warnings.warn(
            f"{source}: tokenizer.ggml.pre {pre!r} is not known to lmforge; using GPT-2's pre-tokenizer "
            f"(known: {', '.join(sorted(_GGUF_PRE))})",
            stacklevel=3,
        )
    kind, ignore_merges = _GGUF_PRE.get(pre, ("gpt2", False))
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges))
    if kind == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _pre_tokenizer(kind)
    tok.decoder = decoders.ByteLevel()
    added = [
        AddedToken(t, special=ty == CONTROL, normalized=False)
        for t, ty in zip(tokens, types)
        if ty in (CONTROL, USER_DEFINED)
    ]
    tok.add_tokens(added)
    return tok


def _gguf_pre_name(backend: _HFBackend | _TiktokenBackend, spec: dict) -> str:
    """llama.cpp's `tokenizer.ggml.pre` name for a byte-level BPE's pre-tokenizer."""
    if isinstance(backend, _HFBackend) and backend.gguf_pre:
        return backend.gguf_pre
    if isinstance(backend, _TiktokenBackend):
        # GPT-2's regex and tiktoken's faster equivalent; cl100k's is the one Llama-3 adopted
        if backend.name in ("gpt2", "r50k_base", "p50k_base"):
            return "gpt-2"
        if backend.name == "cl100k_base" or backend.pat_str == LLAMA3_PATTERN:
            return "llama-bpe"
        raise TokenizerError(f"tiktoken encoding {backend.name!r} has no llama.cpp pre-tokenizer known to lmforge")
    text = json.dumps(spec.get("pre_tokenizer"))
    if json.dumps(LLAMA3_PATTERN)[1:-1] in text:
        return "llama-bpe"
    if json.dumps(QWEN2_PATTERN)[1:-1] in text:
        return "qwen2"
    if '"Digits"' in text and '"ByteLevel"' in text:
        return "smollm"
    if '"ByteLevel"' in text and '"use_regex": true' in text:
        return "gpt-2"
    raise TokenizerError("this tokenizer's pre-tokenizer has no llama.cpp equivalent known to lmforge")


def _gpt2_bpe(vocab_path: Path, merges_path: Path, added: dict[int, tuple[str | None, bool]]):
    """A GPT-2 style byte-level BPE from vocab.json/encoder.json + merges.txt/vocab.bpe."""
    from tokenizers import AddedToken, decoders, models
    from tokenizers import Tokenizer as HFTokenizer

    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    lines = merges_path.read_text(encoding="utf-8").splitlines()
    merges = [tuple(ln.split(" ", 1)) for ln in lines if ln and not ln.startswith("#version")]
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = _pre_tokenizer("gpt2")
    tok.decoder = decoders.ByteLevel()
    specials = [t for t in vocab if t.startswith("<|") and t.endswith("|>")]
    specials += [c for c, special in added.values() if c and special]
    if specials:
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in dict.fromkeys(specials)])
    return tok


def _spm_proto(
    tokens: list[str],
    scores: list[float],
    types: list[int],
    unk_id: int | None,
    bos_id: int | None,
    eos_id: int | None,
    add_dummy_prefix: bool,
) -> bytes:
    """A SentencePiece BPE model (serialized ModelProto) from a GGUF "llama" vocabulary."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    if unk_id is None:
        unk_id = next((i for i, t in enumerate(types) if t == UNKNOWN), 0)
    for i, (tok, score, ty) in enumerate(zip(tokens, scores, types)):
        p = m.pieces.add()
        p.piece, p.score = tok, float(score)
        # SentencePiece wants exactly one UNKNOWN piece, at unk_id; other "unknown" ones never appear
        if i == unk_id:
            p.type = pb.ModelProto.SentencePiece.UNKNOWN
        elif ty == UNKNOWN:
            p.type = pb.ModelProto.SentencePiece.UNUSED
        else:
            p.type = ty if ty in (NORMAL, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL
    spec = m.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = BYTE in types
    spec.unk_id, spec.unk_piece = unk_id, tokens[unk_id]
    spec.bos_id, spec.eos_id, spec.pad_id = -1, -1, -1
    if bos_id is not None and m.pieces[bos_id].type == pb.ModelProto.SentencePiece.CONTROL:
        spec.bos_id, spec.bos_piece = bos_id, tokens[bos_id]
    if eos_id is not None and m.pieces[eos_id].type == pb.ModelProto.SentencePiece.CONTROL:
        spec.eos_id, spec.eos_piece = eos_id, tokens[eos_id]
    spec.split_digits = True
    spec.allow_whitespace_only_pieces = True
    norm = m.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(add_dummy_prefix)
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return m.SerializeToString()


def _openai_encoding(name: str, ranks: dict[bytes, int]) -> dict[str, Any]:
    """pat_str and special tokens of an OpenAI encoding, as the installed tiktoken defines them."""
    from unittest import mock

    try:
        from tiktoken_ext import openai_public
    except ImportError:
        return {}
    make = getattr(openai_public, "ENCODING_CONSTRUCTORS", {}).get(name)
    if make is None:
        return {}
    # the constructors download their ranks; hand them ours instead
    with mock.patch.object(openai_public, "load_tiktoken_bpe", lambda *a, **k: ranks):
        spec = make()
    return {"pat_str": spec["pat_str"], "special_tokens": spec["special_tokens"]}


# ---------------------------------------------------------------------------------------------
# training


def iter_text_files(files: Iterable[str | os.PathLike]) -> Iterator[str]:
    """Texts of .txt files (whole, in chunks of paragraphs) and .jsonl files (each line's "text")."""
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise TokenizerError(f"{path}: no such file")
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError:
                        raise TokenizerError(f"{path}:{n}: invalid JSON line") from None
                    text = row.get("text") if isinstance(row, dict) else row
                    if not isinstance(text, str):
                        raise TokenizerError(f'{path}:{n}: expected a string or an object with a "text" string')
                    yield text
        else:
            text = path.read_text(encoding="utf-8", errors="replace")
            # chunks keep the trainer's memory flat and let it parallelise; paragraph seams keep words whole
            chunk: list[str] = []
            size = 0
            for para in text.split("\n\n"):
                chunk.append(para)
                size += len(para) + 2
                if size > 1 << 16:
                    yield "\n\n".join(chunk) + "\n\n"
                    chunk, size = [], 0
            if chunk:
                yield "\n\n".join(chunk)


def train_bpe(
    texts: Iterable[str],
    vocab_size: int = 8000,
    min_frequency: int = 2,
    special_tokens: list[str] | None = None,
) -> Tokenizer:
    """Train a GPT-2 style byte-level BPE.

    Args:
        texts: training texts. An item that names an existing .txt/.jsonl file is read from that file.
        vocab_size: target vocabulary size (special tokens and the 256 byte tokens included).
        min_frequency: a pair must occur this often to be merged.
        special_tokens: special tokens (default ["<|endoftext|>"]); the first is BOS, EOS and PAD.

    Returns:
        The trained `Tokenizer` (add_bos False: documents are separated by EOS, GPT-2 style).
    """
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    specials = list(special_tokens or ["<|endoftext|>"])
    if vocab_size < 256 + len(specials) + 1:
        raise TokenizerError(f"vocab_size {vocab_size} is too small: a byte-level BPE needs more than {256 + len(specials)}")

    def stream() -> Iterator[str]:
        for t in texts:
            if len(t) < 4096 and "\n" not in t and t.endswith((".txt", ".jsonl")) and Path(t).is_file():
                yield from iter_text_files([t])
            else:
                yield t

    seen = 0

    def counted() -> Iterator[str]:
        nonlocal seen
        for t in stream():
            seen += len(t)
            yield t

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[AddedToken(s, special=True, normalized=False) for s in specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(counted(), trainer=trainer)
    if seen == 0:
        raise TokenizerError("no training text: the inputs are empty")
    first = tok.token_to_id(specials[0])
    return Tokenizer(_HFBackend(tok), bos_id=first, eos_ids=[first], pad_id=first, add_bos=False, source="train_bpe")
