"""lmforge.tokenizer against llama.cpp's reference tokenizations, tiktoken, GPT-2's files and HF."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from helpers import asset

from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer, bytes_to_unicode, read_gguf_metadata, train_bpe

VARIED = [
    "Hello world",
    " Hello world",
    "Hello World!  How are you?\n\nFine, thanks.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune...",
    "   leading and trailing spaces   ",
    "\t\ttabs\nnew\r\nlines\n\n\n",
    "3.14159 and 1234567890 and 1,000,000",
    "don't won't I'll we've they're she's I'd",
    "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅ 🦙🦙",
    "你好，世界！ こんにちは 안녕하세요 Привет мир Γειά σου",
    "def f(x):\n    return x ** 2  # comment\n",
    "<html><body>&amp; &lt;tag&gt;</body></html>",
    "ÀÉÎÕÜ àéîõü ñ ß ø æ œ",
    "",
]


@pytest.fixture(scope="session")
def vocabs() -> Path:
    return asset("llama-cpp-vocabs")


@pytest.fixture(scope="session")
def ranks() -> Path:
    return asset("tiktoken-ranks")


def reference_cases(vocabs: Path, name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's test vectors: .inp holds texts separated by a marker line, .out one line of ids each."""
    texts = (vocabs / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = (vocabs / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    ids = ids[:-1]  # .out ends with a newline
    if texts[-1] == "":  # .inp mostly ends with a separator too (gemma-4's does not)
        texts.pop()
    assert len(texts) == len(ids)
    return [(t, [int(i) for i in line.split()]) for t, line in zip(texts, ids)]


_loaded: dict[str, Tokenizer] = {}


def tiktoken_tok(ranks: Path, name: str) -> Tokenizer:
    if name not in _loaded:
        _loaded[name] = Tokenizer.from_tiktoken(ranks / f"{name}.tiktoken")
    return _loaded[name]


def gguf_vocab(vocabs: Path, name: str) -> Tokenizer:
    if name not in _loaded:
        _loaded[name] = Tokenizer.from_gguf(vocabs / f"ggml-vocab-{name}.gguf")
    return _loaded[name]


def assert_all_cases(tok: Tokenizer, cases: list[tuple[str, list[int]]]) -> None:
    bad = [(text, tok.encode(text, bos=False), want) for text, want in cases if tok.encode(text, bos=False) != want]
    assert not bad, f"{len(bad)}/{len(cases)} cases differ, first: {bad[0]}"


# ---------------------------------------------------------------------------------------------
# GGUF vocabularies vs llama.cpp's reference tokenizations


def _reference_vocabs() -> list[str]:
    """Every vocabulary with llama.cpp's reference vectors in the asset (by glob: one llama.cpp adds
    later is tested, and fails until lmforge tokenizes it exactly)."""
    from lmforge.assets import assets_dir

    folder = assets_dir() / "llama-cpp-vocabs"
    names = sorted(p.name[len("ggml-vocab-") : -len(".gguf.out")] for p in folder.glob("ggml-vocab-*.gguf.out"))
    return [n for n in names if (folder / f"ggml-vocab-{n}.gguf.inp").is_file()] or ["(asset not fetched)"]


@pytest.mark.parametrize("name", _reference_vocabs())
def test_gguf_vocab_matches_llama_cpp_vectors(vocabs, tmp_path, name):
    """encode, and the tokenizer.json that save() writes (in `tokenizers` and in transformers), give
    llama.cpp's ids on all its reference cases."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer as HFTokenizer

    cases = reference_cases(vocabs, name)
    assert len(cases) >= 40
    tok = gguf_vocab(vocabs, name)
    assert_all_cases(tok, cases)
    out = tok.save(tmp_path / "tok")
    hf = HFTokenizer.from_file(str(out / "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(out)
    for text, want in cases:
        assert hf.encode(text, add_special_tokens=False).ids == want, ("tokenizer.json", text)
        assert auto.encode(text, add_special_tokens=False) == want, ("AutoTokenizer", text)


@pytest.mark.parametrize("name", _reference_vocabs())
def test_gguf_vocab_decodes_reference_texts_back(vocabs, name):
    """decode(encode(text)) == text on llama.cpp's reference texts: byte-level BPE keeps every byte,
    SentencePiece (llama-spm, phi-3) and gemma4 pieces keep the text as written. WordPiece's normalizer
    lower-cases and drops whitespace, so only the rest is checked there: the same text again, tokenized."""
    tok = gguf_vocab(vocabs, name)
    meta = read_gguf_metadata(vocabs / f"ggml-vocab-{name}.gguf", prefix="tokenizer.ggml.model")
    for text, ids in reference_cases(vocabs, name):
        back = tok.decode(ids)
        if meta["tokenizer.ggml.model"] == "bert":
            assert tok.encode(back, bos=False) == ids, text
        else:
            assert back == text


def test_gguf_special_ids_and_flags(vocabs):
    spm = gguf_vocab(vocabs, "llama-spm")
    assert (spm.backend, spm.bos_id, spm.eos_ids, spm.add_bos, spm.vocab_size) == ("sentencepiece", 1, [2], True, 32000)
    assert spm.encode("Hello") == [1, 15043]
    assert spm.encode("Hello", bos=False, eos=True) == [15043, 2]
    assert spm.encode("<s>Hi</s>", bos=False) == [1, 6324, 2]  # control tokens written in text
    assert spm.decode([1, 15043, 2]) == "<s> Hello</s>"
    assert spm.decode([1, 15043, 2], skip_special_tokens=True) == "Hello"
    assert spm.token_to_id("▁Hello") == 15043 and spm.id_to_token(15043) == "▁Hello"
    assert spm.token_to_id("no such piece") is None
    bpe = gguf_vocab(vocabs, "llama-bpe")
    assert (bpe.bos_id, bpe.eos_id, bpe.add_bos) == (128000, 128001, True)
    assert bpe.encode("<|start_header_id|>user<|end_header_id|>", bos=False) == [128006, 882, 128007]
    phi3 = gguf_vocab(vocabs, "phi-3")
    assert phi3.chat_template and "<|assistant|>" in phi3.chat_template
    assert phi3.encode("<|user|>", bos=False) == [32010]


@pytest.fixture(scope="session")
def smollm2() -> Tokenizer:
    return Tokenizer.from_gguf(asset("smollm2-135m-instruct"))


def test_smollm2_gguf_tokenizer(smollm2):
    tok = smollm2
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos, tok.vocab_size) == (1, 2, 2, False, 49152)
    assert tok.chat_template.startswith("{% for message in messages %}")
    ids = tok.encode("<|im_start|>user\nWhat is 12345?<|im_end|>\n")
    assert ids[0] == tok.token_to_id("<|im_start|>") == 1
    assert tok.token_to_id("<|im_end|>") == 2 and 2 in ids
    # SmolLM's pre-tokenizer splits every digit
    digits = tok.encode("12345", bos=False)
    assert len(digits) == 5 and tok.decode(digits) == "12345"
    assert tok.decode(ids) == "<|im_start|>user\nWhat is 12345?<|im_end|>\n"
    assert tok.decode(ids, skip_special_tokens=True) == "user\nWhat is 12345?\n"


@pytest.mark.slow  # transformers parses the whole GGUF header element by element (~40 s)
def test_smollm2_matches_transformers_gguf_loader(smollm2):
    transformers = pytest.importorskip("transformers")
    path = asset("smollm2-135m-instruct")
    hf = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in VARIED[:-1] + ["<|im_start|>assistant\nHi!<|im_end|>"]:
        assert smollm2.encode(text, bos=False) == hf.encode(text, add_special_tokens=False), text


@pytest.mark.slow  # GGUFReader takes ~10 s on this file
def test_read_gguf_metadata_agrees_with_gguf_package(vocabs):
    gguf = pytest.importorskip("gguf")
    path = vocabs / "ggml-vocab-phi-3.gguf"
    ours = read_gguf_metadata(path)
    reader = gguf.GGUFReader(path)
    assert set(ours) == set(reader.fields) - {k for k in reader.fields if k.startswith("GGUF.")}
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.chat_template"):
        theirs = reader.fields[key].contents()
        assert ours[key] == pytest.approx(theirs) if key.endswith("scores") else ours[key] == theirs, key


def test_unknown_pre_tokenizer_is_an_error_unless_overridden(vocabs):
    """An unknown `tokenizer.ggml.pre` raises, naming it and the known names; `pre=` chooses one."""
    from lmforge.tokenizer.gguf import GGUF_PRE

    meta = read_gguf_metadata(vocabs / "ggml-vocab-gpt-2.gguf", prefix="tokenizer.")
    meta["tokenizer.ggml.pre"] = "no-such-pre"
    with pytest.raises(LmforgeError, match=r"unknown tokenizer.ggml.pre 'no-such-pre'; known: .*\bqwen2\b.*--tokenizer_pre"):
        Tokenizer.from_gguf_metadata(meta, source="x.gguf")
    cases = reference_cases(vocabs, "gpt-2")
    assert_all_cases(Tokenizer.from_gguf_metadata(meta, pre="gpt2"), cases)
    # the override wins over a known name too (llama-bpe's vocabulary under GPT-2's rules differs)
    llama = Tokenizer.from_gguf(vocabs / "ggml-vocab-llama-bpe.gguf", pre="gpt-2")
    assert llama.encode("1234567", bos=False) != gguf_vocab(vocabs, "llama-bpe").encode("1234567", bos=False)
    with pytest.raises(LmforgeError, match=r"--tokenizer_pre: unknown tokenizer.ggml.pre 'bogus'"):
        Tokenizer.from_gguf(vocabs / "ggml-vocab-gpt-2.gguf", pre="bogus")


def test_every_llama_cpp_pre_tokenizer_is_in_the_table(vocabs):
    """Each `tokenizer.ggml.pre` name llama.cpp's llama-vocab.cpp accepts has an entry (a name it adds
    later fails here), and every entry's regexes compile in `tokenizers`."""
    import re

    from lmforge.tokenizer.gguf import GGUF_PRE, gguf_pre_tokenizer

    source = (vocabs / "llama-vocab.cpp").read_text(encoding="utf-8")
    names = set(re.findall(r'tokenizer_pre == "([^"]+)"', source))
    assert len(names) > 80 and {"falcon", "deepseek-coder", "tekken", "kimi-k2", "gpt-4o", "llama4"} <= names
    assert sorted(names - set(GGUF_PRE)) == []
    for name, spec in GGUF_PRE.items():
        assert gguf_pre_tokenizer(spec).pre_tokenize_str("Hello, world 123 ½ 你好\n"), name


def test_tokenizer_pre_flag(tmp_path):
    """`--tokenizer_pre` reaches the GGUF loader: a bad name is one `error:` line."""
    import subprocess
    import sys

    model = asset("smollm2-135m-instruct")
    argv = [sys.executable, "-m", "lmforge", "generate", str(model), "--prompt", "12345", "--max_new_tokens", "1",
            "--temperature", "0"]
    bad = subprocess.run([*argv, "--tokenizer_pre", "bogus"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.startswith("error: --tokenizer_pre: unknown tokenizer.ggml.pre 'bogus'")
    assert bad.stderr.count("\n") == 1
    from lmforge.api import LLM

    text = "Hello!!\n\n  (world) 'tis"
    llm = LLM.load(model, tokenizer_pre="llama3")  # Llama-3's rules cut this text differently
    assert llm.tokenizer.encode(text) != Tokenizer.from_gguf(model).encode(text)
    assert llm.tokenizer.encode(text) == Tokenizer.from_gguf(model, pre="llama-bpe").encode(text)


# ---------------------------------------------------------------------------------------------
# tiktoken ranks


def test_r50k_equals_gpt2_encoder_json(ranks, vocabs):
    r50k = tiktoken_tok(ranks, "r50k_base")
    gpt2 = Tokenizer.from_dir(asset("gpt2-bpe"))  # an HF tokenizers BPE from encoder.json + vocab.bpe
    assert gpt2.backend == "tokenizers" and r50k.backend == "tiktoken"
    assert r50k.vocab_size == gpt2.vocab_size == 50257
    austen = (asset("austen") / "emma.txt").read_text(encoding="utf-8")[:20000]
    texts = VARIED + [text for text, _ in reference_cases(vocabs, "gpt-2")] + [austen]
    for text in texts:
        ids = r50k.encode(text)
        assert ids == gpt2.encode(text), text
        assert r50k.decode(ids) == text
    # and both agree with llama.cpp's GPT-2 vectors
    assert_all_cases(r50k, reference_cases(vocabs, "gpt-2"))
    assert r50k.encode("<|endoftext|>") == [50256]
    assert r50k.id_to_token(464) == gpt2.id_to_token(464) == "The"
    assert r50k.token_to_id("Ġthe") == gpt2.token_to_id("Ġthe") == 262


@pytest.mark.parametrize(
    "name,text,ids",
    [
        ("cl100k_base", "hello world", [15339, 1917]),
        ("cl100k_base", "<|endoftext|>", [100257]),
        ("o200k_base", "hello world", [24912, 2375]),
        ("o200k_base", "<|endoftext|>", [199999]),
        ("p50k_base", "hello world", [31373, 995]),
    ],
)
def test_tiktoken_known_ids(ranks, name, text, ids):
    tok = tiktoken_tok(ranks, name)
    assert tok.encode(text) == ids
    assert tok.decode(ids) == text


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_tiktoken_round_trips(ranks, name):
    import tiktoken

    tok = tiktoken_tok(ranks, name)
    assert tok.add_bos is False and tok.eos_id == tok.token_to_id("<|endoftext|>")
    for text in VARIED:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.vocab_size for i in ids)
    # the same ids as tiktoken's own definition of the encoding, loaded offline from our file
    ref = tiktoken.Encoding(name, **_tiktoken_spec(name, ranks))
    for text in VARIED:
        assert tok.encode(text) == ref.encode(text, allowed_special="all"), text


def _tiktoken_spec(name: str, ranks: Path) -> dict:
    from unittest import mock

    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext import openai_public

    local = load_tiktoken_bpe(str(ranks / f"{name}.tiktoken"))
    with mock.patch.object(openai_public, "load_tiktoken_bpe", lambda *a, **k: local):
        spec = openai_public.ENCODING_CONSTRUCTORS[name]()
    spec.pop("name")
    return spec


def llama3_tiktoken_model(vocabs: Path, out_dir: Path) -> Path:
    """Meta's Llama-3 `tokenizer.model` (tiktoken format) rebuilt from ggml-vocab-llama-bpe.gguf."""
    meta = read_gguf_metadata(vocabs / "ggml-vocab-llama-bpe.gguf", prefix="tokenizer.ggml.tokens")
    back = {c: b for b, c in bytes_to_unicode().items()}
    lines = []
    for rank, token in enumerate(meta["tokenizer.ggml.tokens"][:128000]):
        raw = bytes(back[c] for c in token)
        lines.append(f"{base64.b64encode(raw).decode()} {rank}\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_text("".join(lines))
    return out_dir


def test_llama3_tiktoken_model_equals_llama_bpe_vectors(vocabs, tmp_path):
    tok = Tokenizer.from_dir(llama3_tiktoken_model(vocabs, tmp_path / "llama3"))
    assert tok.backend == "tiktoken"
    assert (tok.bos_id, tok.eos_ids, tok.add_bos, tok.vocab_size) == (128000, [128001, 128009], True, 128256)
    assert_all_cases(tok, reference_cases(vocabs, "llama-bpe"))
    gguf = gguf_vocab(vocabs, "llama-bpe")
    for text in VARIED:
        assert tok.encode(text) == gguf.encode(text), text
    # Llama 3.1's special tokens, written in text
    chat = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    assert tok.encode(chat, bos=False) == [128006, 882, 128007, 271, 13347, 128009]


# ---------------------------------------------------------------------------------------------
# save -> transformers.AutoTokenizer, and back


def _roundtrip(tok: Tokenizer, tmp_path: Path, texts: list[str]) -> None:
    transformers = pytest.importorskip("transformers")
    out = tok.save(tmp_path / "tok")
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    hf = transformers.AutoTokenizer.from_pretrained(out)
    again = Tokenizer.from_dir(out)
    for text in texts:
        ids = tok.encode(text)
        assert hf.encode(text) == ids, text  # HF adds BOS exactly when we do
        assert again.encode(text) == ids, text
        assert hf.decode(ids) == tok.decode(ids) == again.decode(ids), text
    assert hf.chat_template == tok.chat_template == again.chat_template
    assert (again.bos_id, again.eos_id, again.pad_id, again.add_bos) == (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos)
    if tok.bos_id is not None:
        assert hf.bos_token_id == tok.bos_id
    assert hf.eos_token_id == tok.eos_id


SPECIAL_TEXTS = ["<s>hi</s> there", "<|endoftext|>x", "<|im_start|>user\nhi<|im_end|>\n"]


@pytest.mark.parametrize("name", ["gpt-2", "llama-spm", "phi-3"])
def test_save_gguf_vocab_loads_in_transformers(vocabs, tmp_path, name):
    _roundtrip(gguf_vocab(vocabs, name), tmp_path, VARIED + SPECIAL_TEXTS)


def test_save_smollm2_loads_in_transformers(smollm2, tmp_path):
    _roundtrip(smollm2, tmp_path, VARIED + SPECIAL_TEXTS)
    assert "<|im_start|>" in json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())["chat_template"]


def test_save_tiktoken_loads_in_transformers(ranks, tmp_path):
    _roundtrip(tiktoken_tok(ranks, "r50k_base"), tmp_path, VARIED + SPECIAL_TEXTS)


def test_save_trained_bpe_loads_in_transformers(tmp_path):
    text = (asset("austen") / "persuasion.txt").read_text(encoding="utf-8")
    tok = train_bpe([text], vocab_size=600)
    assert tok.vocab_size == 600 and tok.bos_id == tok.eos_id == tok.pad_id == 0
    _roundtrip(tok, tmp_path, VARIED + SPECIAL_TEXTS)


def test_gguf_metadata_round_trip(vocabs, ranks):
    for tok in (gguf_vocab(vocabs, "gpt-2"), gguf_vocab(vocabs, "llama-spm"), tiktoken_tok(ranks, "r50k_base")):
        meta = tok.gguf_metadata()
        again = Tokenizer.from_gguf_metadata(meta)
        for text in VARIED + SPECIAL_TEXTS:
            assert again.encode(text) == tok.encode(text), (tok, text)
        assert (again.bos_id, again.eos_id, again.add_bos) == (tok.bos_id, tok.eos_id, tok.add_bos)
    assert tiktoken_tok(ranks, "r50k_base").gguf_metadata()["tokenizer.ggml.pre"] == "gpt-2"


def test_from_dir_reads_hf_configs(tmp_path, smollm2):
    out = smollm2.save(tmp_path / "tok")
    config = json.loads((out / "tokenizer_config.json").read_text())
    chat = config.pop("chat_template")
    config["add_bos_token"] = True
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    (out / "chat_template.jinja").write_text(chat)  # where transformers >= 4.43 saves it
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    tok = Tokenizer.from_dir(out)
    assert tok.chat_template == chat
    assert tok.eos_ids == [2, 0] and tok.add_bos and tok.encode("hi")[0] == 1


# ---------------------------------------------------------------------------------------------
# decoding: partial bytes and streaming

STREAM_TEXT = "Emoji 🦙🚀😶‍🌫️ and CJK 你好世界，こんにちは, Ünïcödé — done."


@pytest.fixture(scope="session")
def stream_tokenizers(vocabs, ranks, smollm2) -> dict[str, Tokenizer]:
    return {
        "byte-level BPE": smollm2,
        "sentencepiece byte-fallback": gguf_vocab(vocabs, "llama-spm"),
        "tiktoken": tiktoken_tok(ranks, "cl100k_base"),
    }


def test_decode_partial_bytes(stream_tokenizers):
    for name, tok in stream_tokenizers.items():
        ids = tok.encode("🦙", bos=False)
        assert len(ids) > 1, name  # a 4-byte character split over byte tokens
        assert tok.decode(ids) == "🦙", name
        assert tok.decode(ids[:-1]).endswith("\ufffd"), name  # the character without its last byte(s)


def test_stream_decoder_never_splits_characters(stream_tokenizers):
    for name, tok in stream_tokenizers.items():
        ids = tok.encode(STREAM_TEXT, bos=False)
        stream = tok.stream_decoder()
        pieces = [stream.push(i) for i in ids]
        pieces.append(stream.flush())
        assert not any("\ufffd" in p for p in pieces), (name, pieces)
        assert "".join(pieces) == tok.decode(ids) == STREAM_TEXT, name
        assert sum(1 for p in pieces if p) > 10, name  # it does stream, not everything at the end


def test_stream_decoder_with_special_tokens(smollm2):
    ids = smollm2.encode("<|im_start|>assistant\nHi 🦙!<|im_end|>")
    for skip in (False, True):
        stream = smollm2.stream_decoder(skip_special_tokens=skip)
        text = "".join(stream.push(i) for i in ids) + stream.flush()
        assert text == smollm2.decode(ids, skip_special_tokens=skip)


# ---------------------------------------------------------------------------------------------
# errors


def test_missing_files_name_the_dir(tmp_path):
    with pytest.raises(LmforgeError, match=rf"{tmp_path}: no tokenizer files \(expected tokenizer.json, tokenizer.model"):
        Tokenizer.from_dir(tmp_path)
    with pytest.raises(LmforgeError, match="no such tokenizer directory"):
        Tokenizer.from_dir(tmp_path / "nope")
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(LmforgeError, match=r"x.gguf: not a GGUF file"):
        Tokenizer.from_gguf(bad)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(LmforgeError, match=r"tokenizer.json: cannot load"):
        Tokenizer.from_dir(tmp_path)


# ---------------------------------------------------------------------------------------------
# lmforge tokenizer train


def test_train_verb(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from lmforge.verbs.tokenizer import train

    src = asset("austen")
    txt = tmp_path / "a.txt"
    txt.write_text((src / "northanger_abbey.txt").read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"Line {i}: Emma Woodhouse, handsome."}) for i in range(50)))
    train([str(txt), str(jsonl)], str(tmp_path / "tok"), vocab_size=1000)
    out = capsys.readouterr().out
    assert "vocab size 1,000" in out and "characters/token" in out
    tok = Tokenizer.from_dir(tmp_path / "tok")
    assert tok.vocab_size == 1000 and tok.eos_id == tok.token_to_id("<|endoftext|>") == 0
    sample = "Catherine Morland 🦙 visited Bath.<|endoftext|>"
    assert tok.decode(tok.encode(sample)) == sample
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert hf.encode(sample) == tok.encode(sample)
    ratio = float(out.split(" characters/token")[0].split()[-1])
    assert ratio > 2.5  # a 1000-token BPE compresses English well beyond bytes
    # a single path, a directory and a glob work too (the CLI passes one string)
    train(str(tmp_path / "*.txt"), str(tmp_path / "tok2"), vocab_size=500)
    train(str(tmp_path), str(tmp_path / "tok3"), vocab_size=500)
    assert "2 file(s)" in capsys.readouterr().out
    assert Tokenizer.from_dir(tmp_path / "tok3").vocab_size == 500


def test_train_verb_errors(tmp_path):
    from lmforge.verbs.tokenizer import train

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(LmforgeError, match="empty"):
        train([str(empty)], str(tmp_path / "o"))
    with pytest.raises(LmforgeError, match=r"missing.txt: no such file"):
        train([str(tmp_path / "missing.txt")], str(tmp_path / "o"))
    with pytest.raises(LmforgeError, match="no training files"):
        train([], str(tmp_path / "o"))


def _train_cli(path: Path, out: Path) -> str | None:
    """`lmforge tokenizer train PATH OUT` through the CLI: None on success, else its exit message."""
    from lmforge.cli import main

    try:
        main(["tokenizer", "train", str(path), str(out), "--vocab_size", "300"])
    except SystemExit as e:
        return str(e.code)
    return None


BAD_TEXT = {
    "image.txt": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",  # binary: NUL bytes
    "latin1.txt": "café au lait".encode("latin-1"),  # text, but not UTF-8
    "latin1.jsonl": b'{"text": "caf\xe9"}\n',
}


@pytest.mark.parametrize("name", sorted(BAD_TEXT))
def test_train_verb_rejects_text_that_is_not_utf8(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD_TEXT[name])
    msg = _train_cli(path, tmp_path / "tok")
    assert msg is not None and msg.startswith(f"error: {path}: ") and "(not UTF-8 text" in msg, msg
    assert "\n" not in msg and "LMFORGE_DEBUG" not in msg  # one line, not a bug report
    assert not (tmp_path / "tok").exists()  # no tokenizer written


def test_train_verb_on_random_bytes(tmp_path_factory):
    """Any bytes as a .txt/.jsonl corpus: valid UTF-8 trains or fails with one line; invalid UTF-8 always
    fails naming the file; never a traceback."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    corpus = st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode))
    outcomes = {"trained": 0, "not UTF-8": 0}

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=corpus, suffix=st.sampled_from([".txt", ".jsonl"]))
    def check(data: bytes, suffix: str) -> None:
        d = tmp_path_factory.mktemp("fuzz")
        path, out = d / f"corpus{suffix}", d / "tok"
        path.write_bytes(data)
        msg = _train_cli(path, out)
        try:
            data.decode("utf-8")
            utf8 = b"\0" not in data
        except UnicodeDecodeError:
            utf8 = False
        if msg is None:
            assert utf8 and Tokenizer.from_dir(out).vocab_size <= 300
            outcomes["trained"] += 1
            return
        assert msg.startswith("error: ") and "\n" not in msg and "LMFORGE_DEBUG" not in msg, msg
        assert not out.exists()
        if not utf8:
            assert msg.startswith(f"error: {path}: ") and "(not UTF-8 text" in msg, msg
            outcomes["not UTF-8"] += 1

    check()
    assert min(outcomes.values()) >= 5, outcomes  # both ways were taken


# ---------------------------------------------------------------------------------------------
# the GGUF header reader (lmforge.gguf_header), shared with lmforge.convert.gguf


@pytest.fixture(scope="session")
def small_gguf(tmp_path_factory) -> Path:
    """A small GGUF file holding every kind of value and two tensors, written by the gguf package."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "ab", "<|end|>", "é"])
    w.add_array("tokenizer.ggml.token_type", [1, 1, 1, 3, 1])
    w.add_array("tokenizer.ggml.scores", [0.5, -1.0, 2.0, 0.0, 1.5])
    w.add_array("tokenizer.ggml.merges", ["a b"])
    w.add_bool("tokenizer.ggml.add_bos_token", False)
    w.add_uint32("tokenizer.ggml.eos_token_id", 3)
    w.add_int64("general.some_int", -7)
    w.add_float64("general.some_float", 0.25)
    w.add_array("general.nested", [[1, 2], [3]])
    w.add_tensor("token_embd.weight", np.arange(40, dtype=np.float32).reshape(5, 8))
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_header_agrees_with_gguf_package(small_gguf):
    gguf = pytest.importorskip("gguf")
    from lmforge.gguf_header import read_gguf_header

    header = read_gguf_header(small_gguf)
    reader = gguf.GGUFReader(small_gguf)
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert header.metadata.keys() == theirs.keys()
    # GGUFReader flattens an array of arrays ([1, 2, 3]); the file holds [[1, 2], [3]]
    assert header.metadata.pop("general.nested") == [[1, 2], [3]] and theirs.pop("general.nested") == [1, 2, 3]
    for key, value in theirs.items():
        assert header.metadata[key] == pytest.approx(value) if isinstance(value, float) else header.metadata[key] == value
    assert [(t.name, t.shape, t.ggml_type, t.offset) for t in header.tensors] == [
        (t.name, tuple(int(n) for n in t.shape), int(t.tensor_type), t.data_offset) for t in reader.tensors
    ]
    assert read_gguf_metadata(small_gguf, prefix="tokenizer.ggml.t") == {
        k: v for k, v in theirs.items() if k.startswith("tokenizer.ggml.t")
    }


def test_gguf_header_on_damaged_files(small_gguf, tmp_path_factory):
    """Truncated or byte-flipped GGUF files: the header reader returns or raises one line naming the file."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from lmforge.gguf_header import read_gguf_header

    good = small_gguf.read_bytes()
    flips = st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)), max_size=4)

    @settings(max_examples=200, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(cut=st.integers(0, len(good)), flips=flips)
    def check(cut: int, flips: list[tuple[int, int]]) -> None:
        data = bytearray(good)
        for i, b in flips:
            data[i] = b
        path = tmp_path_factory.mktemp("bad") / "damaged.gguf"
        path.write_bytes(bytes(data[:cut]))
        for read in (read_gguf_header, read_gguf_metadata):
            try:
                read(path)
            except LmforgeError as e:
                assert str(e).startswith(f"{path}: ") and "\n" not in str(e), str(e)

    check()
    cut = small_gguf.parent / "cut.gguf"
    cut.write_bytes(good[: len(good) // 3])
    with pytest.raises(LmforgeError, match=r"cut\.gguf: truncated or corrupt GGUF file \("):
        Tokenizer.from_gguf(cut)


# ---------------------------------------------------------------------------------------------
# lmforge.data.corpus: texts cut into pieces tokenize as the whole text


def test_text_pieces_pre_tokenize_like_the_whole_text():
    """Piece-wise pre-tokenization (how prepare tokenizes and the trainer counts) equals the whole
    text's, for GPT-2's, SmolLM's, Llama-3's and Qwen2's pre-tokenizers."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from lmforge.data.corpus import text_pieces
    from lmforge.tokenizer.base import pre_tokenizer

    kinds = {k: pre_tokenizer(k) for k in ("gpt2", "digits", "llama3", "qwen2")}
    atoms = st.sampled_from(["word", "Émile", "12345", ".", "!?", "'s", " ", "  ", "\t", "\n", "\r\n", "🦙"])

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(parts=st.lists(atoms, max_size=60), chunk_chars=st.integers(1, 12), split=st.integers(0, 200))
    def check(parts: list[str], chunk_chars: int, split: int) -> None:
        text = "".join(parts)
        stream = iter([text[:split], text[split:]])  # the reader's chunks end anywhere
        pieces = list(text_pieces(stream, chunk_chars))
        assert "".join(pieces) == text
        for kind, pt in kinds.items():
            whole = [w for w, _ in pt.pre_tokenize_str(text)]
            assert [w for p in pieces for w, _ in pt.pre_tokenize_str(p)] == whole, (kind, pieces)

    check()


def test_t5_unigram_vocabulary(vocabs, tmp_path):
    """llama.cpp's UGM ("t5" vocabularies, here XLM-R's in nomic-bert-moe): a SentencePiece unigram with
    the file's normalization. No llama.cpp reference vectors exist for it, so two other engines check
    it: the saved tokenizer.json (a `tokenizers` Unigram) in `tokenizers` and `transformers` gives the
    same ids on all of llama.cpp's reference texts, and "Hello world" is XLM-R's [0, 35378, 8999]."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(vocabs / "ggml-vocab-nomic-bert-moe.gguf")
    assert tok.encode("Hello world") == [0, 35378, 8999]
    tok.save(tmp_path)
    fast = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    texts = (vocabs / "ggml-vocab-llama-bpe.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    assert len(texts) > 40
    for text in texts:
        ids = tok.encode(text, bos=False)
        assert ids == fast.encode(text, add_special_tokens=False).ids == hf(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("name", ["smollm2", "qwen2", "deepseek-llm", "falcon", "command-r", "mpt", "llama-bpe"])
def test_gguf_vocab_saved_as_tokenizer_json_writes_back_its_pre(vocabs, smollm2, tmp_path, name):
    """GGUF -> lmforge dir (tokenizer.json) -> GGUF keeps llama.cpp's pre-tokenizer (its name, or a name of
    the same table entry: smollm and starcoder split alike), and the tokenizer rebuilt from the written
    metadata encodes as the original (the demo's export stage)."""
    from lmforge.tokenizer.gguf import GGUF_PRE

    tok = smollm2 if name == "smollm2" else gguf_vocab(vocabs, name)
    pre = tok.gguf_metadata()["tokenizer.ggml.pre"]
    saved = Tokenizer.from_dir(tok.save(tmp_path / "tok"))
    meta = saved.gguf_metadata()
    assert GGUF_PRE[meta["tokenizer.ggml.pre"]] == GGUF_PRE[pre]
    again = Tokenizer.from_gguf_metadata(meta)
    for text in VARIED:
        assert again.encode(text) == tok.encode(text), text
