"""The `Tokenizer` facade: one class over every tokenizer format, with the model's conventions.

It adds what every caller needs on top of a backend: BOS/EOS handling, special tokens written in
text (`"<|im_end|>"` encodes to its id), decoding that keeps partial UTF-8 bytes honest, an
incremental `stream_decoder()`, the chat template, loading from a directory / tiktoken file / GGUF,
and `save()` to files `transformers.AutoTokenizer` loads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lmforge._io import atomic_write_bytes, atomic_write_text
from lmforge.gguf_header import read_gguf_metadata
from lmforge.tokenizer import gguf as gguf_vocab
from lmforge.tokenizer.backends import (
    HFBackend,
    SPMBackend,
    TiktokenBackend,
    gpt2_bpe,
    is_tiktoken_text,
    openai_encoding,
    read_tiktoken_ranks,
)
from lmforge.tokenizer.base import LLAMA3_PATTERN, TokenizerError
from lmforge.tokenizer.stream import StreamDecoder

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
        backend: HFBackend | SPMBackend | TiktokenBackend,
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
                backend = HFBackend(HFTokenizer.from_file(str(d / "tokenizer.json")))
            except Exception as e:  # the Rust error text is the useful part
                raise TokenizerError(f"{d / 'tokenizer.json'}: cannot load ({e})") from None
        elif (d / "tokenizer.model").is_file():
            model = d / "tokenizer.model"
            if is_tiktoken_text(model):
                specials = {c: i for i, (c, _) in added.items() if c}
                tok = cls.from_tiktoken(model, special_tokens=specials or None)
                backend = tok._backend
                if not config:
                    return tok  # a bare Meta directory: the Llama-3 defaults from_tiktoken chose
            else:
                backend = SPMBackend(model.read_bytes())
        elif (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            backend = HFBackend(gpt2_bpe(d / "vocab.json", d / "merges.txt", added))
        elif (d / "encoder.json").is_file() and (d / "vocab.bpe").is_file():
            backend = HFBackend(gpt2_bpe(d / "encoder.json", d / "vocab.bpe", added))
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
        if isinstance(backend, SPMBackend):  # the model itself knows its ids
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
        ranks = read_tiktoken_ranks(path)
        name = path.stem
        known = openai_encoding(name, ranks)
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
        backend = TiktokenBackend(name, ranks, pat_str, special_tokens)
        if llama3:
            bos, eos_ids, add_bos = special_tokens.get("<|begin_of_text|>"), ["<|end_of_text|>", "<|eot_id|>"], True
            eos_ids = [special_tokens[s] for s in eos_ids if s in special_tokens]
        else:
            bos = special_tokens.get("<|endoftext|>")
            eos_ids, add_bos = ([bos] if bos is not None else []), False
        return cls(backend, bos_id=bos, eos_ids=eos_ids, add_bos=add_bos, source=str(path))

    @classmethod
    def from_gguf(cls, path: str | os.PathLike, pre: str | None = None) -> Tokenizer:
        """The tokenizer embedded in a GGUF file (model or vocab-only).

        Args:
            path: the .gguf file.
            pre: a llama.cpp pre-tokenizer name (`tokenizer.ggml.pre`) to use instead of the file's;
                needed for a file whose name lmforge does not know (that is an error otherwise).
        """
        meta = read_gguf_metadata(path, prefix="tokenizer.")
        return cls.from_gguf_metadata(meta, source=str(path), pre=pre)

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any], source: str = "gguf", pre: str | None = None) -> Tokenizer:
        """Build from GGUF `tokenizer.*` metadata ({key: value}, e.g. from `read_gguf_metadata`); `pre`
        as in `from_gguf`."""
        backend, default_add_bos = gguf_vocab.backend_from_metadata(meta, source, pre)

        def opt_id(key: str) -> int | None:
            return gguf_vocab.token_id(meta, key)

        eos_ids = [i for i in (opt_id("eos"), opt_id("eot"), opt_id("eom")) if i is not None]
        template = meta.get("tokenizer.chat_template")
        return cls(
            backend,
            bos_id=opt_id("bos") if opt_id("bos") is not None else opt_id("cls"),  # BERT's [CLS] opens a text
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
        if isinstance(backend, SPMBackend):
            # the .model for SentencePiece users, the equivalent tokenizer.json for AutoTokenizer (whose
            # own conversion of a .model treats runs of spaces differently from SentencePiece)
            atomic_write_bytes(out / "tokenizer.model", backend.proto_bytes)
            hf = backend.to_hf()
        elif isinstance(backend, TiktokenBackend):
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
        meta = gguf_vocab.vocab_metadata(self._backend)
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
    if isinstance(backend, HFBackend):
        ids = backend.tok.encode("a", add_special_tokens=True).ids
        return bool(ids) and ids[0] == bos_id
    return isinstance(backend, SPMBackend)  # Llama-style SentencePiece models add BOS


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
