"""`lmforge prepare INPUTS --tokenizer SOURCE --out_dir DIR`: tokenize a corpus into training shards."""

from __future__ import annotations


def prepare(
    inputs: str | list[str],
    tokenizer: str | None = None,
    out_dir: str | None = None,
    text_key: str = "text",
    val_fraction: float = 0.05,
    seed: int = 0,
    workers: int = 0,
    shard_tokens: int = 100_000_000,
    chunk_chars: int = 1 << 20,
    progress: bool = True,
) -> None:
    """Tokenize `.txt` / `.jsonl` files into memory-mapped shards with a train/val split.

    Re-running with the same inputs (by sha256), tokenizer and options does nothing.

    Args:
        inputs: A folder (searched recursively for *.txt and *.jsonl), a file, or a list of them.
        tokenizer: Tokenizer SOURCE: a directory with tokenizer.json / tokenizer.model (a checkpoint
            dir works) or a .gguf file.
        out_dir: Directory for the shards and manifest.json.
        text_key: Field holding the text in each .jsonl line.
        val_fraction: Fraction of documents held out for validation (by document, seeded).
        seed: Seed of the train/val assignment.
        workers: Processes tokenizing files in parallel (0: one per CPU, at most one per file).
        shard_tokens: Largest number of tokens in one shard file.
        chunk_chars: Characters read and tokenized at a time (bounds memory on huge files).
        progress: Show a progress bar.
    """
    from lmforge.data.prepare import prepare as run_prepare

    run_prepare(inputs, tokenizer=tokenizer, out_dir=out_dir, text_key=text_key, val_fraction=val_fraction,
                seed=seed, workers=workers, shard_tokens=shard_tokens, chunk_chars=chunk_chars, progress=progress)
