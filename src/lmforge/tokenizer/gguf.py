"""Tokenizer vocabularies embedded in GGUF files, both ways.

A BPE ("gpt2") vocab is rebuilt as a `tokenizers` BPE from `tokenizer.ggml.tokens` + `.merges` with
the pre-tokenizer that `tokenizer.ggml.pre` names; a SentencePiece ("llama") vocab becomes a
SentencePiece model built from pieces, scores and types. Reading the file is `lmforge.gguf_header`'s
job; this module turns its `tokenizer.*` metadata into a backend and a backend back into metadata.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from lmforge.tokenizer.backends import HFBackend, SPMBackend, TiktokenBackend
from lmforge.tokenizer.base import (
    BYTE,
    CONTROL,
    LLAMA3_PATTERN,
    NORMAL,
    QWEN2_PATTERN,
    UNKNOWN,
    UNUSED,
    USER_DEFINED,
    TokenizerError,
    pre_tokenizer,
)

# `tokenizer.ggml.pre` values -> (pre-tokenizer kind, BPE ignore_merges). "gpt2": GPT-2's regex inside
# ByteLevel; "digits": every digit split off, then GPT-2's regex (StarCoder, SmolLM); the others a
# Split on the named regex followed by a regex-less ByteLevel.
GGUF_PRE: dict[str, tuple[str, bool]] = {
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


def gguf_bpe(tokens: list[str], types: list[int], merges: list[str], pre: str, source: str):
    """A `tokenizers` byte-level BPE from a GGUF "gpt2" vocabulary."""
    from tokenizers import AddedToken, decoders, models, normalizers
    from tokenizers import Tokenizer as HFTokenizer

    if pre not in GGUF_PRE:
        warnings.warn(
            f"{source}: tokenizer.ggml.pre {pre!r} is not known to lmforge; using GPT-2's pre-tokenizer "
            f"(known: {', '.join(sorted(GGUF_PRE))})",
            stacklevel=4,  # the caller of Tokenizer.from_gguf_metadata
        )
    kind, ignore_merges = GGUF_PRE.get(pre, ("gpt2", False))
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges))
    if kind == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizer(kind)
    tok.decoder = decoders.ByteLevel()
    added = [
        AddedToken(t, special=ty == CONTROL, normalized=False)
        for t, ty in zip(tokens, types)
        if ty in (CONTROL, USER_DEFINED)
    ]
    tok.add_tokens(added)
    return tok


def gguf_pre_name(backend: HFBackend | TiktokenBackend, spec: dict) -> str:
    """llama.cpp's `tokenizer.ggml.pre` name for a byte-level BPE's pre-tokenizer."""
    if isinstance(backend, HFBackend) and backend.gguf_pre:
        return backend.gguf_pre
    if isinstance(backend, TiktokenBackend):
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


def spm_proto(
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


# ---------------------------------------------------------------------------------------------
# GGUF metadata <-> backend


def token_id(meta: dict[str, Any], key: str) -> int | None:
    """The id in `tokenizer.ggml.<key>_token_id`, or None when absent or outside the vocabulary."""
    v = meta.get(f"tokenizer.ggml.{key}_token_id")
    n = len(meta.get("tokenizer.ggml.tokens") or ())
    return int(v) if v is not None and 0 <= int(v) < n else None


def backend_from_metadata(meta: dict[str, Any], source: str) -> tuple[HFBackend | SPMBackend, bool]:
    """The backend for GGUF `tokenizer.*` metadata, and whether that vocabulary adds BOS by default."""
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if model is None or not tokens:
        raise TokenizerError(f"{source}: no tokenizer in this GGUF (tokenizer.ggml.model/tokens missing)")
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    pre = meta.get("tokenizer.ggml.pre", "default")
    if model == "gpt2":
        backend = HFBackend(gguf_bpe(tokens, types, meta.get("tokenizer.ggml.merges") or [], pre, source), pre)
        default_add_bos = GGUF_PRE.get(pre, ("", False))[0] == "llama3"
    elif model == "llama":
        scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        add_prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
        unk, bos, eos = (token_id(meta, key) for key in ("unknown", "bos", "eos"))
        backend = SPMBackend(spm_proto(tokens, scores, types, unk, bos, eos, add_prefix))
        default_add_bos = True
    else:
        raise TokenizerError(
            f"{source}: unsupported GGUF tokenizer model {model!r} (supported: 'gpt2' BPE, 'llama' SentencePiece)"
        )
    return backend, default_add_bos


def vocab_metadata(backend: HFBackend | SPMBackend | TiktokenBackend) -> dict[str, Any]:
    """A backend's vocabulary as GGUF `tokenizer.ggml.*` metadata (model, pre, tokens, types, ...)."""
    meta: dict[str, Any] = {}
    if isinstance(backend, SPMBackend):
        pieces = backend.proto.pieces
        meta["tokenizer.ggml.model"] = "llama"
        meta["tokenizer.ggml.pre"] = "default"
        meta["tokenizer.ggml.tokens"] = [p.piece for p in pieces]
        meta["tokenizer.ggml.scores"] = [float(p.score) for p in pieces]
        meta["tokenizer.ggml.token_type"] = [int(p.type) for p in pieces]
        meta["tokenizer.ggml.add_space_prefix"] = bool(backend.proto.normalizer_spec.add_dummy_prefix)
    else:
        hf = backend.to_hf() if isinstance(backend, TiktokenBackend) else backend.tok
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
        meta["tokenizer.ggml.pre"] = gguf_pre_name(backend, spec)
        meta["tokenizer.ggml.tokens"] = tokens
        meta["tokenizer.ggml.token_type"] = types
        meta["tokenizer.ggml.merges"] = merges
    return meta
