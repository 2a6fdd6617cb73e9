"""The three libraries that do the work, behind one small interface: each backend encodes plain
text (no BOS/EOS added), decodes ids, and knows its vocabulary and special tokens.

* `HFBackend`: a `tokenizers.Tokenizer` (tokenizer.json, GPT-2's vocab.json + merges.txt, or a
  vocabulary rebuilt from GGUF).
* `SPMBackend`: a SentencePiece model (tokenizer.model, or one built from a GGUF "llama" vocab).
* `TiktokenBackend`: tiktoken ranks with a pre-tokenizer regex (OpenAI encodings, Llama-3).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from lmforge.tokenizer.base import (
    CONTROL,
    NORMAL,
    USER_DEFINED,
    TokenizerError,
    bytelevel,
    from_bytelevel,
    pre_tokenizer,
)


class HFBackend:
    """A `tokenizers.Tokenizer` (tokenizer.json, or a vocabulary rebuilt from GGUF/encoder.json)."""

    kind = "tokenizers"

    def __init__(self, tok, gguf_pre: str | None = None):
        self.tok = tok
        self.gguf_pre = gguf_pre  # llama.cpp's name for the pre-tokenizer, when known
        self.special_ids = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}

    def encode(self, text: str) -> list[int]:
        # encode_batch releases the GIL while it runs (encode holds it): a server tokenizing a long
        # prompt on a worker thread keeps its event loop responsive
        return self.tok.encode_batch([text], add_special_tokens=False)[0].ids

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


class SPMBackend:
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

        if self.proto.trainer_spec.model_type == pb.TrainerSpec.UNIGRAM:
            return self._unigram_to_hf()
        if self.proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
            raise TokenizerError("only SentencePiece BPE and unigram models convert to tokenizer.json")
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


    def _unigram_to_hf(self):
        """An equivalent `tokenizers` Unigram (T5 / XLM-R layout): the same pieces and scores, the
        model's normalization (its precompiled charsmap; extra whitespace removed) and `▁` words."""
        from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        pieces = self.proto.pieces
        tok = HFTokenizer(models.Unigram([(p.piece, p.score) for p in pieces], unk_id=self.sp.unk_id(),
                                         byte_fallback=self.proto.trainer_spec.byte_fallback))
        norm = self.proto.normalizer_spec
        steps = [normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []
        if norm.remove_extra_whitespaces:
            steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()]
        if steps:
            tok.normalizer = normalizers.Sequence(steps)
        scheme = "always" if norm.add_dummy_prefix else "never"
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
        tok.add_tokens([AddedToken(p.piece, special=p.type == CONTROL, normalized=False)
                        for p in pieces if p.type in (CONTROL, USER_DEFINED) and p.piece])
        return tok


class TiktokenBackend:
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
        raw = from_bytelevel(token)
        return self.ranks.get(raw) if raw is not None else None

    def id_to_token(self, i: int) -> str | None:
        if i in self._id_to_special:
            return self._id_to_special[i]
        try:
            return bytelevel(self.enc.decode_single_token_bytes(i))
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

        vocab = {bytelevel(tok): rank for tok, rank in self.ranks.items()}
        merges = [(bytelevel(a), bytelevel(b)) for a, b in merges_from_ranks(self.ranks)]
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


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
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


def is_tiktoken_text(path: Path) -> bool:
    """tiktoken files are ASCII lines `<base64> <rank>`; a SentencePiece model is a binary protobuf."""
    with open(path, "rb") as f:
        head = f.read(256).split(b"\n")[0]
    return bool(re.fullmatch(rb"[A-Za-z0-9+/=]+ \d+", head))


def gpt2_bpe(vocab_path: Path, merges_path: Path, added: dict[int, tuple[str | None, bool]]):
    """A GPT-2 style byte-level BPE from vocab.json/encoder.json + merges.txt/vocab.bpe."""
    from tokenizers import AddedToken, decoders, models
    from tokenizers import Tokenizer as HFTokenizer

    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    lines = merges_path.read_text(encoding="utf-8").splitlines()
    merges = [tuple(ln.split(" ", 1)) for ln in lines if ln and not ln.startswith("#version")]
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizer("gpt2")
    tok.decoder = decoders.ByteLevel()
    specials = [t for t in vocab if t.startswith("<|") and t.endswith("|>")]
    specials += [c for c, special in added.values() if c and special]
    if specials:
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in dict.fromkeys(specials)])
    return tok


def openai_encoding(name: str, ranks: dict[bytes, int]) -> dict[str, Any]:
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
