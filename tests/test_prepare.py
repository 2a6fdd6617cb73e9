"""`lmforge prepare`: token counts, round trip, determinism, idempotence, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmforge.data.prepare import DataError, prepare

EOS = "<|endoftext|>"


def make_tokenizer(out: Path, texts: list[str], vocab_size: int = 300) -> Path:
    """A tiny byte-level BPE trained with the `tokenizers` library, saved as an HF tokenizer dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": EOS, "model_max_length": 1024}))
    return out


DOCS = [
    f"Chapter {i}\n\nIt is a truth universally acknowledged, that a single man in possession of {i} fortunes "
    f"must be in want of a wife.\n  An indented line, é ü — “quotes” {i * 37}.\n\n" * (1 + i % 3)
    for i in range(10)
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok"), DOCS)


@pytest.fixture
def corpus(tmp_path) -> Path:
    """7 .txt documents and a .jsonl with 3 more (plus a blank line)."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    for i, doc in enumerate(DOCS[:7]):
        (root / ("sub" if i % 2 else "") / f"doc{i}.txt").write_text(doc, encoding="utf-8")
    lines = [json.dumps({"text": d, "id": k}) for k, d in enumerate(DOCS[7:])]
    (root / "more.jsonl").write_text("\n".join(lines[:2]) + "\n\n" + lines[2] + "\n", encoding="utf-8")
    return root


def read_split(out: Path, split: str) -> np.ndarray:
    m = json.loads((out / "manifest.json").read_text())
    parts = [np.fromfile(out / s["file"], dtype=m["dtype"]) for s in m["splits"][split]["shards"]]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=m["dtype"])


def load_tok(path: Path):
    from lmforge.tokenizer import Tokenizer

    return Tokenizer.from_dir(path)


def test_round_trip_counts_and_manifest(corpus, tok_dir, tmp_path):
    out = tmp_path / "out"
    m = prepare(str(corpus), tokenizer=str(tok_dir), out_dir=str(out), val_fraction=0.3, workers=1, progress=False)
    tok = load_tok(tok_dir)
    assert m["dtype"] == "uint16"
    docs = []
    for split in ("train", "val"):
        ids = read_split(out, split)
        assert len(ids) == m["splits"][split]["tokens"]
        assert ids.size == 0 or ids[-1] == tok.eos_id  # every document ends with EOS
        docs += tok.decode(ids.tolist()).split(EOS)[:-1]
    # decode(shards) == the input documents, each exactly once
    assert sorted(docs) == sorted(DOCS)
    assert m["splits"]["val"]["tokens"] > 0 and m["splits"]["train"]["tokens"] > 0
    # token counts: each document's own encoding + one EOS
    expected = sum(len(tok.encode(d, bos=False)) + 1 for d in DOCS)
    assert m["total_tokens"] == expected
    assert sum(i["train_tokens"] + i["val_tokens"] for i in m["inputs"]) == expected
    assert all(len(i["sha256"]) == 64 for i in m["inputs"]) and len(m["inputs"]) == 8
    assert m["tokenizer"]["eos_id"] == tok.eos_id and len(m["tokenizer"]["sha256"]) == 64
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    assert not list(out.glob(".partial-*"))


def test_chunking_sharding_and_workers_do_not_change_tokens(corpus, tok_dir, tmp_path):
    a = prepare(str(corpus), tokenizer=str(tok_dir), out_dir=str(tmp_path / "a"), val_fraction=0.3, workers=1,
                progress=False)
    # tiny text chunks (streaming a file piece by piece), tiny shards, two worker processes
    b = prepare(str(corpus), tokenizer=str(tok_dir), out_dir=str(tmp_path / "b"), val_fraction=0.3, workers=2,
                shard_tokens=100, chunk_chars=40, progress=False)
    assert len(b["splits"]["train"]["shards"]) > 1 and all(s["tokens"] <= 100 for s in b["splits"]["train"]["shards"])
    for split in ("train", "val"):
        np.testing.assert_array_equal(read_split(tmp_path / "a", split), read_split(tmp_path / "b", split))


def test_split_is_deterministic_per_seed(corpus, tok_dir, tmp_path):
    runs = {}
    for name, seed in (("s0", 0), ("s0b", 0), ("s1", 1)):
        prepare(str(corpus), tokenizer=str(tok_dir), out_dir=str(tmp_path / name), val_fraction=0.3, seed=seed,
                progress=False)
        runs[name] = read_split(tmp_path / name, "val")
    np.testing.assert_array_equal(runs["s0"], runs["s0b"])
    assert not np.array_equal(runs["s0"], runs["s1"])
    m = prepare(str(corpus), tokenizer=str(tok_dir), out_dir=str(tmp_path / "noval"), val_fraction=0.0, progress=False)
    assert m["splits"]["val"]["tokens"] == 0 and m["splits"]["val"]["shards"] == []


def test_second_run_is_a_no_op(corpus, tok_dir, tmp_path, capsys):
    out = tmp_path / "out"
    prepare(str(corpus), tokenizer=str(tok_dir), out_dir=str(out), progress=True)
    shard = out / "train_0000.bin"
    before = shard.stat().st_mtime_ns
    capsys.readouterr()
    prepare(str(corpus), tokenizer=str(tok_dir), out_dir=str(out), progress=True)
    assert "nothing to do" in capsys.readouterr().out
    assert shard.stat().st_mtime_ns == before
    # a changed input is prepared again, and old shards are replaced
    (corpus / "doc0.txt").write_text("A new first document.\n", encoding="utf-8")
    m = prepare(str(corpus), tokenizer=str(tok_dir), out_dir=str(out), progress=True)
    assert "nothing to do" not in capsys.readouterr().out
    assert m["total_tokens"] == len(read_split(out, "train")) + len(read_split(out, "val"))


def test_list_of_files_input(corpus, tok_dir, tmp_path):
    files = [str(corpus / "doc0.txt"), str(corpus / "doc2.txt")]
    m = prepare(files, tokenizer=str(tok_dir), out_dir=str(tmp_path / "o"), val_fraction=0.0, progress=False)
    assert [Path(i["path"]).name for i in m["inputs"]] == ["doc0.txt", "doc2.txt"]


# ---- bad input: one-line errors that name the culprit, before anything is written ----
def _err(tmp_path, tok_dir, inputs, **kw) -> str:
    with pytest.raises(DataError) as e:
        prepare(inputs, tokenizer=str(tok_dir), out_dir=str(tmp_path / "out"), progress=False, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    assert not (tmp_path / "out").exists()  # nothing written
    return msg


def test_empty_corpus(tmp_path, tok_dir):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("")
    (tmp_path / "c" / "b.txt").write_text("  \n\n")
    assert "empty" in _err(tmp_path, tok_dir, str(tmp_path / "c"))


def test_binary_file_is_named(corpus, tmp_path, tok_dir):
    (corpus / "zz_image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    msg = _err(tmp_path, tok_dir, str(corpus))
    assert "zz_image.txt" in msg and "NUL" in msg


def test_invalid_utf8_is_named(corpus, tmp_path, tok_dir):
    (corpus / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    msg = _err(tmp_path, tok_dir, str(corpus))
    assert "latin1.txt" in msg and "UTF-8" in msg


def test_malformed_json_line_names_file_and_line(corpus, tmp_path, tok_dir):
    (corpus / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "broken\n', encoding="utf-8")
    msg = _err(tmp_path, tok_dir, str(corpus))
    assert "bad.jsonl:2" in msg and "malformed JSON" in msg
    (corpus / "bad.jsonl").write_text('{"body": "no text key"}\n', encoding="utf-8")
    assert "bad.jsonl:1" in _err(tmp_path, tok_dir, str(corpus))


def test_missing_path_and_tokenizer(tmp_path, tok_dir, corpus):
    assert "no such file" in _err(tmp_path, tok_dir, str(tmp_path / "nope"))
    with pytest.raises(DataError, match="tokenizer not found"):
        prepare(str(corpus), tokenizer=str(tmp_path / "no-tok"), out_dir=str(tmp_path / "o"), progress=False)


def test_cli_error_is_one_line(tmp_path, tok_dir):
    from lmforge.cli import main

    with pytest.raises(SystemExit) as e:
        main(["prepare", str(tmp_path / "missing"), "--tokenizer", str(tok_dir), "--out_dir", str(tmp_path / "o")])
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "missing" in msg and "\n" not in msg
