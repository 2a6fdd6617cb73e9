"""`lmforge tokenizer train`: train a byte-level BPE tokenizer on text files."""

from __future__ import annotations

import time

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
            directory (its .txt/.jsonl files, recursively), a glob ("data/*.txt"), or a list of those.
            Every file must be UTF-8 text.
        out: output directory.
        vocab_size: vocabulary size, special tokens and the 256 byte tokens included.
        min_frequency: a pair must occur this often to be merged.
        special_tokens: special tokens; the first is BOS, EOS and PAD (default: <|endoftext|>).
    """
    from lmforge.data.corpus import collect_files, iter_texts
    from lmforge.tokenizer import train_bpe

    if not files:
        raise LmforgeError("no training files given (pass .txt or .jsonl files)")
    paths = collect_files(files)
    start = time.perf_counter()
    texts = list(iter_texts(paths))  # every file is read and checked before anything is trained or written
    n_chars = sum(map(len, texts))
    if n_chars == 0:
        raise LmforgeError(f"the training files are empty: {', '.join(map(str, paths))}")
    tok = train_bpe(texts, vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_tokens)
    out_dir = tok.save(out)
    n_tokens = sum(map(len, tok.encode_batch(texts, bos=False)))
    print(
        f"trained a byte-level BPE on {len(paths)} file(s), {n_chars:,} characters in {time.perf_counter() - start:.1f} s: "
        f"vocab size {tok.vocab_size:,}, {n_chars / max(n_tokens, 1):.2f} characters/token on the training text; "
        f"saved to {out_dir}"
    )
