"""`Tokenizer.encode_batch` on 4 MB of Austen vs the `tokenizers` library used directly on the same vocabulary.

Run: .venv/bin/python benchmarks/tokenize_speed.py [--vocabs llama-bpe,gpt-2,llama-spm] [--rounds 5] [--mb 4]

Each vocabulary is a llama.cpp reference GGUF (`fetch_asset("llama-cpp-vocabs")`) loaded with
`Tokenizer.from_gguf`; "direct" is `tokenizers.Tokenizer.from_file` on the tokenizer.json that
`Tokenizer.save` writes for it, called as `encode_batch(paragraphs, add_special_tokens=False)`. The text
is the Austen novels' paragraphs (blank-line separated), cut to the first `--mb` MB. Rounds alternate
direct, lmforge, direct, lmforge, ...; reported: median seconds of each and the median per-round ratio
lmforge / direct (the machine's speed swings; only the ratio within a round means much).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from lmforge.assets import fetch_asset
from lmforge.tokenizer import Tokenizer


def austen_paragraphs(megabytes: float) -> list[str]:
    folder = fetch_asset("austen")
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt")))
    text = text[: int(megabytes * 1_000_000)]
    return [p for p in text.split("\n\n") if p]


def timed(fn) -> tuple[float, list[list[int]]]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocabs", default="llama-bpe,gpt-2,llama-spm")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mb", type=float, default=4.0)
    args = ap.parse_args()
    from tokenizers import Tokenizer as HFTokenizer

    texts = austen_paragraphs(args.mb)
    chars = sum(map(len, texts))
    print(f"{len(texts):,} paragraphs, {chars / 1e6:.2f} M characters")
    vocabs = fetch_asset("llama-cpp-vocabs")
    print(f"{'vocabulary':<12} {'backend':<14} {'tokens':>10} {'direct s':>9} {'lmforge s':>10} {'ratio':>6}")
    for name in args.vocabs.split(","):
        tok = Tokenizer.from_gguf(vocabs / f"ggml-vocab-{name}.gguf")
        with tempfile.TemporaryDirectory() as d:
            direct = HFTokenizer.from_file(str(tok.save(d) / "tokenizer.json"))
        runs = {
            "direct": lambda: [e.ids for e in direct.encode_batch(texts, add_special_tokens=False)],
            "lmforge": lambda: tok.encode_batch(texts, bos=False),
        }
        secs: dict[str, list[float]] = {k: [] for k in runs}
        ratios = []
        for _ in range(args.rounds):
            (t_direct, ids_direct), (t_ours, ids_ours) = timed(runs["direct"]), timed(runs["lmforge"])
            assert ids_ours == ids_direct, f"{name}: lmforge and tokenizers disagree"
            secs["direct"].append(t_direct)
            secs["lmforge"].append(t_ours)
            ratios.append(t_ours / t_direct)
        n_tokens = sum(map(len, ids_ours))
        print(
            f"{name:<12} {tok.backend:<14} {n_tokens:>10,} {statistics.median(secs['direct']):>9.2f} "
            f"{statistics.median(secs['lmforge']):>10.2f} {statistics.median(ratios):>6.2f}"
        )


if __name__ == "__main__":
    main()
