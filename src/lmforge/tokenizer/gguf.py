"""Tokenizer vocabularies embedded in GGUF files, both ways.

A BPE ("gpt2") vocab is rebuilt as a `tokenizers` BPE from `tokenizer.ggml.tokens` + `.merges` with
the pre-tokenizer that `tokenizer.ggml.pre` names; a SentencePiece ("llama") vocab becomes a
SentencePiece model built from pieces, scores and types. Reading the file is `lmforge.gguf_header`'s
job; this module turns its `tokenizer.*` metadata into a backend and a backend back into metadata.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Any

from lmforge.tokenizer.backends import HFBackend, SPMBackend, TiktokenBackend
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
)

@dataclass(frozen=True)
class PreTokenizer:
    """One llama.cpp BPE pre-tokenizer: its regexes and flags (llama-vocab.cpp's `llm_tokenizer_bpe`).

    The regexes apply in turn, each cutting every piece the one before left (matches and the text
    between them both stay pieces), as llama.cpp's `unicode_regex_split` and a `tokenizers` Sequence of
    isolating Splits do. Where llama.cpp rewrote a regex for its engine, the tokenizer.json original
    stands here (`tokenizers` runs Oniguruma, which takes it as written).
    """

    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a pre-token that is itself in the vocabulary is taken whole
    add_bos: bool = False  # BOS by default when the GGUF has no tokenizer.ggml.add_bos_token
    byte_level: bool = True  # GPT-2's byte-to-character map (False: raw UTF-8 pieces, SentencePiece-like)


_GPT2 = (GPT2_PATTERN,)
_DIGITS_GPT2 = (r"\p{N}", GPT2_PATTERN)
_LLAMA3 = (LLAMA3_PATTERN,)
_QWEN2 = (QWEN2_PATTERN,)
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_CASED_WORDS = (  # GPT-4o's: an upper-case run then lower-case letters, contractions attached
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTIONS + "?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS + "?"
)
_GPT4O = (_CASED_WORDS + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",)
_DEEPSEEK3 = (  # DeepSeek-V3's: digits in threes, CJK runs, then words
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
)
_BLOOM = (r" ?[^(\s|.,!?…。，、।۔،)]+",)
_LINES = r"[^\n]+|[\n]+"

# (names, pre-tokenizer): every `tokenizer.ggml.pre` value llama.cpp's llama-vocab.cpp knows
_PRE_TABLE: list[tuple[tuple[str, ...], PreTokenizer]] = [
    (("default",), PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"\p{N}+", "[0-9][0-9][0-9]"))),
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"),
     PreTokenizer(_LLAMA3, ignore_merges=True, add_bos=True)),
    (("dbrx", "smaug-bpe"), PreTokenizer(_LLAMA3)),
    (("chatglm-bpe",), PreTokenizer(_LLAMA3)),
    (("glm4", "glm5"), PreTokenizer(_LLAMA3, ignore_merges=True)),
    (("jais-2",), PreTokenizer((
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
        r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)"
        r"|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",
    ))),
    (("deepseek-llm",), PreTokenizer((
        r"[\r\n]",
        r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
        r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
        r"\s+$",
        r"[一-龥ࠀ-一가-퟿]+",
        r"\p{N}+",
    ))),
    (("deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"), PreTokenizer(_DEEPSEEK3)),
    (("spark2_5",), PreTokenizer((
        r"\p{N}{1,3}",
        r"[一-龥぀-ゟ゠-ヿ]+",
        r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+""",
        r"\p{N}",
    ))),
    (("youtu",), PreTokenizer((
        r"[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥぀-ゟ゠-ヿ]+",
        _CASED_WORDS + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ), ignore_merges=True)),
    (("deepseek-coder",), PreTokenizer((r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"))),
    (("falcon",), PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", GPT2_PATTERN, "[0-9][0-9][0-9]"))),
    (("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"),
     PreTokenizer(_DIGITS_GPT2)),
    (("gpt-2", "gpt2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
      "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais", "exaone4", "trillion",
      "granite-docling"), PreTokenizer(_GPT2)),
    (("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan", "solar-open"),
     PreTokenizer(_QWEN2)),
    (("qwen35",), PreTokenizer((
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ))),
    (("poro-chat", "bloom", "gpt3-finnish"), PreTokenizer(_BLOOM)),
    (("viking",), PreTokenizer((*_BLOOM, r"\p{N}"))),
    (("tekken",), PreTokenizer((
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
        r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ), ignore_merges=True, add_bos=True)),
    (("chameleon",), PreTokenizer((
        r"<sentinel:[0-9]+>",
        r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
        r"([\t\n]|    |  )",
        r"\p{N}",
        r"[\p{P}!-/:-@\[-`{-~]",
        GPT2_PATTERN,
    ), add_bos=True)),
    (("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), PreTokenizer(_GPT4O)),
    (("granite-embed-multi-97m",), PreTokenizer((
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTIONS + "?"
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS + "?"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ), ignore_merges=True)),
    (("tiny_aya", "cohere2moe"), PreTokenizer((r"\d{1,3}(?=(?:\d{3})*\b)", *_GPT4O))),
    (("kimi-k2",), PreTokenizer((  # llama.cpp runs this one (tokenization_kimi.py's) as custom code
        r"[\p{Han}]+"
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+"
        + _CONTRACTIONS + "?"
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*"
        + _CONTRACTIONS + "?"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ))),
    (("superbpe",), PreTokenizer((r"\p{N}+", r"(?=(\d{3})+(?!\d))"))),
    (("bailingmoe", "bailingmoe2", "llada-moe"), PreTokenizer((
        r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
    ))),
    (("seed-coder",), PreTokenizer((
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
    ))),
    (("ufakzeka",), PreTokenizer((
        r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ))),
    (("grok-2",), PreTokenizer(_QWEN2)),
    (("afmoe",), PreTokenizer((  # llama.cpp's custom digit rule: 1-2 leading digits, then threes
        r"\p{N}{1,3}(?=(?:\p{N}{3})*(?!\p{N}))",
        r"[一-鿿㐀-䶿豈-﫿぀-ゟ゠-ヿ･-ﾟ⼀-⿟เ-๿຀-໿ក-៿က-႟ꩠ-ꩿꧠ-꧿가-힯ᄀ-ᇿ]+",
        _DEEPSEEK3[2],
    ))),
    (("laguna",), PreTokenizer((_LINES, *_QWEN2))),
    (("exaone-moe",), PreTokenizer((
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?"
        r"|\s*[\r\n]|\s+(?!\S)|\s+",
    ))),
    (("gemma4", "granite-embed-multi-311m", "sarvam-moe"), PreTokenizer((_LINES,), byte_level=False)),
    (("minicpm5",), PreTokenizer((
        r"\p{N}{1,3}",
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ), ignore_merges=True)),
    (("whitespace",), PreTokenizer((r"\S+",), byte_level=False)),
]
GGUF_PRE: dict[str, PreTokenizer] = {name: spec for names, spec in _PRE_TABLE for name in names}


def known_pre(pre: str, source: str) -> PreTokenizer:
    """The table entry for a `tokenizer.ggml.pre` value; an unknown one is an error, never a guess."""
    if pre not in GGUF_PRE:
        raise TokenizerError(
            f"{source}: unknown tokenizer.ggml.pre {pre!r}; known: {', '.join(sorted(GGUF_PRE))}; "
            f"pass pre=... (--tokenizer_pre) to choose one of them"
        )
    return GGUF_PRE[pre]


def gguf_pre_tokenizer(spec: PreTokenizer):
    """The `tokenizers` pre-tokenizer for a table entry: its regexes in turn, then the byte-level map."""
    from tokenizers import Regex, pre_tokenizers

    steps = [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in spec.regexes]
    if spec.byte_level:
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return pre_tokenizers.Sequence(steps)


def gguf_bpe(tokens: list[str], types: list[int], merges: list[str], spec: PreTokenizer):
    """A `tokenizers` BPE from a GGUF "gpt2" (or "gemma4") vocabulary with the pre-tokenizer `spec`."""
    from tokenizers import decoders, models, normalizers
    from tokenizers import Tokenizer as HFTokenizer

    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = HFTokenizer(
        models.BPE(vocab=vocab, merges=pairs, ignore_merges=spec.ignore_merges, byte_fallback=not spec.byte_level)
    )
    tok.pre_tokenizer = gguf_pre_tokenizer(spec)
    if spec.byte_level:
        tok.decoder = decoders.ByteLevel()
    else:  # SentencePiece-style pieces: "▁" for a space, <0xNN> for a byte outside the vocabulary
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return _with_added_tokens(tok, tokens, types)


def _with_added_tokens(tok, tokens: list[str], types: list[int]):
    """`tok` with the vocabulary's control (special) and user-defined tokens matched whole in text."""
    from tokenizers import AddedToken

    tok.add_tokens(
        [
            AddedToken(t, special=ty == CONTROL, normalized=False)
            for t, ty in zip(tokens, types)
            if ty in (CONTROL, USER_DEFINED) and t
        ]
    )
    return tok


def gguf_wpm(tokens: list[str], types: list[int], unk_id: int | None, lowercase: bool, strip_accents: bool):
    """A `tokenizers` WordPiece from a GGUF "bert" vocabulary (llama.cpp's WPM).

    GGUF writes a word-initial piece as "▁piece" and a continuation as "piece"; WordPiece writes them
    "piece" and "##piece". llama.cpp's text preparation (drop controls, split on whitespace, on
    punctuation and CJK characters, lower-case, strip accents) is BERT's normalizer + pre-tokenizer.
    """
    from tokenizers import decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    vocab: dict[str, int] = {}
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if ty == CONTROL:
            piece = t
        else:
            piece = t[1:] if t.startswith("▁") else "##" + t
        vocab.setdefault(piece, i)
    unk = tokens[unk_id] if unk_id is not None else "[UNK]"
    tok = HFTokenizer(models.WordPiece(vocab=vocab, unk_token=unk, max_input_chars_per_word=1_000_000))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return _with_added_tokens(tok, tokens, types)


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
    # a tokenizer lmforge built from a GGUF vocabulary (then saved as tokenizer.json): its table entry
    name = table_pre_name(spec.get("pre_tokenizer"), bool((spec.get("model") or {}).get("ignore_merges")))
    if name is not None:
        return name
    raise TokenizerError("this tokenizer's pre-tokenizer has no llama.cpp equivalent known to lmforge")


def table_pre_name(pre_tokenizer: Any, ignore_merges: bool) -> str | None:
    """The first llama.cpp name whose table entry builds exactly this tokenizer.json `pre_tokenizer`."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    for names, entry in _PRE_TABLE:
        if entry.ignore_merges != ignore_merges:
            continue
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = gguf_pre_tokenizer(entry)
        if json.loads(tok.to_str())["pre_tokenizer"] == pre_tokenizer:
            return names[0]
    return None


def spm_proto(
    tokens: list[str],
    scores: list[float],
    types: list[int],
    unk_id: int | None,
    bos_id: int | None,
    eos_id: int | None,
    add_dummy_prefix: bool,
    unigram: bool = False,
    charsmap: bytes | None = None,
    remove_extra_whitespaces: bool = False,
) -> bytes:
    """A SentencePiece model (serialized ModelProto) from a GGUF vocabulary: BPE for "llama" (SPM),
    unigram with its normalization's precompiled charsmap for "t5" (llama.cpp's UGM, a port of
    SentencePiece's unigram)."""
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
    spec.model_type = pb.TrainerSpec.UNIGRAM if unigram else pb.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = BYTE in types
    spec.unk_id, spec.unk_piece = unk_id, tokens[unk_id]
    spec.bos_id, spec.eos_id, spec.pad_id = -1, -1, -1
    if bos_id is not None and m.pieces[bos_id].type == pb.ModelProto.SentencePiece.CONTROL:
        spec.bos_id, spec.bos_piece = bos_id, tokens[bos_id]
    if eos_id is not None and m.pieces[eos_id].type == pb.ModelProto.SentencePiece.CONTROL:
        spec.eos_id, spec.eos_piece = eos_id, tokens[eos_id]
    spec.split_digits = not unigram
    spec.allow_whitespace_only_pieces = True
    norm = m.normalizer_spec
    norm.name = "identity"
    if charsmap:
        norm.name, norm.precompiled_charsmap = "precompiled", bytes(charsmap)
    norm.add_dummy_prefix = bool(add_dummy_prefix)
    norm.remove_extra_whitespaces = bool(remove_extra_whitespaces)
    norm.escape_whitespaces = True
    return m.SerializeToString()


# ---------------------------------------------------------------------------------------------
# GGUF metadata <-> backend


def token_id(meta: dict[str, Any], key: str) -> int | None:
    """The id in `tokenizer.ggml.<key>_token_id`, or None when absent or outside the vocabulary."""
    v = meta.get(f"tokenizer.ggml.{key}_token_id")
    n = len(meta.get("tokenizer.ggml.tokens") or ())
    return int(v) if v is not None and 0 <= int(v) < n else None


def backend_from_metadata(
    meta: dict[str, Any], source: str, pre: str | None = None
) -> tuple[HFBackend | SPMBackend, bool]:
    """The backend for GGUF `tokenizer.*` metadata, and whether that vocabulary adds BOS by default.

    `pre` overrides the file's `tokenizer.ggml.pre` (a BPE vocabulary's pre-tokenizer). A file without
    one gets llama.cpp's "default", with the warning llama.cpp gives; an unknown one is an error.
    """
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if model is None or not tokens:
        raise TokenizerError(f"{source}: no tokenizer in this GGUF (tokenizer.ggml.model/tokens missing)")
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    if pre is not None:
        known_pre(pre, "--tokenizer_pre")
    if model in ("gpt2", "gemma4"):
        if model == "gemma4":  # llama.cpp: gemma4's own pre-tokenizer, whatever the file says
            pre = pre or "gemma4"
        if pre is None and "tokenizer.ggml.pre" not in meta:
            warnings.warn(
                f"{source}: no tokenizer.ggml.pre; using llama.cpp's 'default' pre-tokenizer, as llama.cpp does "
                f"(pass pre=... / --tokenizer_pre to choose one)",
                stacklevel=4,  # the caller of Tokenizer.from_gguf_metadata
            )
        pre = pre or meta.get("tokenizer.ggml.pre") or "default"
        spec = known_pre(pre, source)
        backend = HFBackend(gguf_bpe(tokens, types, meta.get("tokenizer.ggml.merges") or [], spec), pre)
        default_add_bos = spec.add_bos
    elif model == "llama":
        scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        add_prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
        unk, bos, eos = (token_id(meta, key) for key in ("unknown", "bos", "eos"))
        backend = SPMBackend(spm_proto(tokens, scores, types, unk, bos, eos, add_prefix))
        default_add_bos = True
    elif model == "t5":  # llama.cpp's UGM: SentencePiece unigram with T5's normalization
        scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        unk, bos, eos = (token_id(meta, key) for key in ("unknown", "bos", "eos"))
        charsmap = meta.get("tokenizer.ggml.precompiled_charsmap")
        backend = SPMBackend(spm_proto(
            tokens, scores, types, unk, bos, eos, meta.get("tokenizer.ggml.add_space_prefix", True), unigram=True,
            charsmap=bytes(charsmap) if charsmap is not None else None,
            remove_extra_whitespaces=meta.get("tokenizer.ggml.remove_extra_whitespaces", True)))
        default_add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    elif model == "bert":
        # llama.cpp's defaults: lower-case, and strip accents when lower-casing
        lowercase = bool(meta.get("tokenizer.ggml.normalizer.lowercase", True))
        strip = bool(meta.get("tokenizer.ggml.normalizer.strip_accents", lowercase))
        backend = HFBackend(gguf_wpm(tokens, types, token_id(meta, "unknown"), lowercase, strip))
        default_add_bos = True
    else:
        raise TokenizerError(
            f"{source}: unsupported GGUF tokenizer model {model!r} (supported: 'gpt2' and 'gemma4' BPE, "
            f"'llama' SentencePiece, 't5' unigram, 'bert' WordPiece)"
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
