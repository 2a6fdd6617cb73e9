"""Perplexity and bits per byte of text: .txt files, JSONL (a text field), or a prepared dir's shards.

Each document (a file, a JSONL line, a prepared split's whole token stream) is scored on its own,
after one EOS token (what a document follows in training data), with a sliding window: a window of
`window` tokens advances `stride` tokens at a time and scores only the tokens no earlier window
scored, each with up to `window - 1` tokens of context (`stride == window`: disjoint windows, lm-eval's
`loglikelihood_rolling`).

    perplexity      = exp(total negative log-likelihood / tokens)
    bits_per_byte   = total NLL / ln 2 / UTF-8 bytes of the text   (comparable across tokenizers)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.api import LLM
    from lmforge.evaluate.config import EvalConfig


def windows(tokens: Sequence[int], prefix: int, window: int, stride: int) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) requests that score every token of `tokens` once: `prefix` stands
    before the first token; each request's context + continuation is at most `window` + 1 tokens
    (the model sees `window` of them)."""
    seq = [prefix, *tokens]  # seq[i] predicts tokens[i]
    out, done, n = [], 0, len(tokens)
    while done < n:
        end = min(done + stride, n) if done else min(window, n)
        start = max(0, end - window)
        out.append((seq[start:done + 1], list(tokens[done:end])))
        done = end
    return out


def read_documents(path: str | Path, text_key: str = "text") -> list[str] | list[int]:
    """Texts of a .txt file, a directory of them, or a JSONL file; for a prepared dir (with
    manifest.json), its val split's token stream (train when there is no val)."""
    from lmforge._io import jsonl_objects, read_text

    path = Path(path)
    if (path / "manifest.json").is_file():
        from lmforge.data.loader import TokenData, read_manifest

        splits = read_manifest(path)["splits"]
        split = "val" if splits.get("val", {}).get("tokens") else "train"
        data = TokenData(path, split)
        return [int(t) for t in data.slice(0, len(data))]
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl")) if path.is_dir() else [path]
    if not files:
        raise LmforgeError(f"{path}: no .txt or .jsonl files here")
    docs: list[str] = []
    for f in files:
        text = read_text(f, LmforgeError)
        if f.suffix != ".jsonl":
            docs.append(text)
            continue
        for n, record in jsonl_objects(text.splitlines(), f, LmforgeError):
            if not isinstance(record.get(text_key), str):
                raise LmforgeError(f"{f}:{n}: no string field {text_key!r} (set --text_key)")
            docs.append(record[text_key])
    docs = [d for d in docs if d]
    if not docs:
        raise LmforgeError(f"{path}: no text to score")
    return docs


def perplexity(llm: LLM, cfg: EvalConfig) -> dict[str, Any]:
    """The perplexity task (see the module docstring) over `cfg.data`."""
    import time

    from lmforge.evaluate.scoring import loglikelihoods

    if not cfg.data:
        raise LmforgeError("task perplexity needs --data (text files, a JSONL file or a prepared dir)")
    docs = read_documents(cfg.data, cfg.text_key)
    tok = llm._require_tokenizer()
    window = min(cfg.window or llm.config.block_size, llm.config.block_size)
    stride = cfg.stride or max(1, window // 2)
    if stride > window:
        raise LmforgeError(f"--stride {stride} is larger than the window {window}")
    prefix = tok.eos_id if tok.eos_id is not None else tok.bos_id
    if prefix is None:
        raise LmforgeError(f"{llm.source}: its tokenizer has neither EOS nor BOS to start a document with")
    if isinstance(docs[0], int):  # a prepared token stream: one document
        streams, n_bytes = [docs], len(tok.decode(docs).encode("utf-8"))
    else:
        streams, n_bytes = [tok.encode(d, bos=False) for d in docs], sum(len(d.encode("utf-8")) for d in docs)
    requests = [r for s in streams for r in windows(s, prefix, window, stride)]
    t0 = time.perf_counter()
    nll = -sum(ll for ll, _ in loglikelihoods(llm.model, requests, cfg.batch_size))
    seconds = time.perf_counter() - t0
    tokens = sum(len(s) for s in streams)
    return {"task": "perplexity",
            "metrics": {"perplexity": {"value": math.exp(nll / tokens), "stderr": None},
                        "bits_per_byte": {"value": nll / math.log(2) / n_bytes, "stderr": None}},
            "breakdown": {}, "n": len(streams), "tokens": tokens, "bytes": n_bytes, "window": window,
            "stride": stride, "seconds": seconds}
