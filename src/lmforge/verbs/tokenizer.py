"""`lmforge tokenizer train`: train a byte-level BPE tokenizer on text files."""

from __future__ import annotations

import time
from pathlib import Path

from lmforge.errors import LmforgeError


def train(
    files: str | list[str],
    out: str,
    vocab_size: int = 8000,
    min_frequency: int = 2,
    special_tokens: list[str] | None = None,
) -> None:
    """Train a GPT-2 style byte-level BPE tokenizer and save it (tokenizer.json + tokenizer_config.json).

    Args:
        files: training text: a .txt file (whole text), a .jsonl file (each line's "text"), a
            directory (its .txt/.jsonl files), a glob ("data/*.txt"), or a list of those.
        out: output directory.
        vocab_size: vocabulary size, special tokens and the 256 byte tokens included.
        min_frequency: a pair must occur this often to be merged.
        special_tokens: special tokens; the first is BOS, EOS and PAD (default: <|endoftext|>).
    """
    from lmforge.tokenizer import iter_text_files, train_bpe

    files = _expand([files] if isinstance(files, str) else list(files))
    if not files:
        raise LmforgeError("no training files given (pass .txt or .jsonl files)")
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise LmforgeError(f"{path}: no such file")
        if path.suffix not in (".txt", ".jsonl"):
            raise LmforgeError(f"{path}: unsupported file type {path.suffix!r} (use .txt or .jsonl)")
    start = time.perf_counter()
    texts = list(iter_text_files(files))
    n_chars = sum(map(len, texts))
    if n_chars == 0:
        raise LmforgeError(f"the training files are empty: {', '.join(files)}")
    tok = train_bpe(texts, vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_tokens)
    out_dir = tok.save(out)
    n_tokens = sum(map(len, tok.encode_batch(texts, bos=False)))
    print(
        f"trained a byte-level BPE on {len(files)} file(s), {n_chars:,} characters in {time.perf_counter() - start:.1f} s: "
        f"vocab size {tok.vocab_size:,}, {n_chars / max(n_tokens, 1):.2f} characters/token on the training text; "
        f"saved to {out_dir}"
    )


def _expand(items: list[str]) -> list[str]:
    """Files named directly, the .txt/.jsonl files of directories, and glob matches, in order."""
    import glob

    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out += sorted(str(p) for p in path.iterdir() if p.suffix in (".txt", ".jsonl") and p.is_file())
        elif any(c in item for c in "*?[") and not path.exists():
            matches = sorted(glob.glob(item))
            if not matches:
                raise LmforgeError(f"{item}: no file matches this pattern")
            out += matches
        else:
            out.append(item)
    return out
