"""`lmforge prepare`: tokenize a text corpus into memory-mapped training shards.

Output directory layout::

    manifest.json           what was tokenized, how, and where the tokens are (written last)
    train_0000.bin …        token ids, raw little-endian uint16 (uint32 for vocabularies > 65536)
    val_0000.bin …          the validation split, same format
    tokenizer/              a copy of the tokenizer, so `pretrain` can find it from the data alone

A document is one `.txt` file or one line of a `.jsonl` file (its `--text_key` field). Each
document is followed by the tokenizer's EOS token. Documents go to the validation split by a
seeded hash of (input sha256, document index), so the split is deterministic, needs no
global shuffle and does not depend on `--workers`.

Work happens in two passes over the inputs, both parallel over files:
1. *scan*: sha256, NUL/UTF-8/JSON checks and document counts. Every bad-input error is raised
   here, before any tokenization work is done; an unchanged input is detected here too.
2. *tokenize*: each file is read in chunks (never whole) and its tokens streamed to per-file
   temporary files, which are then concatenated in input order into shards of at most
   `shard_tokens` tokens. Shards and manifest are renamed into place only at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge._io import atomic_write_text
from lmforge.data.corpus import (
    JSONL_SUFFIXES,
    READ_BYTES,
    DataError,
    collect_files,
    decoded_chunks,
    jsonl_docs,
    lines,
    text_pieces,
)

if TYPE_CHECKING:
    from lmforge.tokenizer import Tokenizer

MANIFEST = "manifest.json"
FORMAT = "lmforge-tokens"
FORMAT_VERSION = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


# ---------------------------------------------------------------------------------------------
# the verb
# ---------------------------------------------------------------------------------------------
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
) -> dict[str, Any]:
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

    Returns:
        The manifest (also written to out_dir/manifest.json).
    """
    if tokenizer is None:
        raise DataError("prepare: pass --tokenizer SOURCE (a tokenizer or checkpoint dir, or a .gguf file)")
    if out_dir is None:
        raise DataError("prepare: pass --out_dir DIR (where the shards and manifest.json go)")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"prepare: val_fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1 or chunk_chars < 1:
        raise DataError("prepare: shard_tokens and chunk_chars must be positive")
    out = Path(out_dir)
    files = collect_files(inputs)
    tok_source = Path(tokenizer)
    tok_sha = tokenizer_sha256(tok_source)
    options = {"text_key": text_key, "val_fraction": val_fraction, "seed": seed, "shard_tokens": shard_tokens}
    n_workers = min(len(files), workers if workers > 0 else (os.cpu_count() or 1))
    say = print if progress else (lambda *a, **k: None)

    # ---- pass 1: scan (checks every input before any tokenizing) ----
    t0 = time.perf_counter()
    scans = _map(_scan_file, [(str(f), text_key) for f in files], n_workers)
    scans = [_add_split_stats(s, val_fraction, seed) for s in scans]
    total_docs = sum(s["documents"] for s in scans)
    if total_docs == 0:
        raise DataError(f"{_describe(inputs)}: the corpus is empty (no non-empty documents in {len(files)} file(s))")
    key = {"inputs": [s["sha256"] for s in scans], "tokenizer_sha256": tok_sha, "options": options}
    old = _read_manifest_or_none(out)
    if old is not None and old.get("key") == key:
        say(f"{out}: already prepared from the same {len(files)} input(s), tokenizer and options; nothing to do")
        return old

    tok = load_tokenizer(tok_source)
    if tok.eos_id is None:
        raise DataError(f"{tok_source}: the tokenizer has no EOS token, which prepare puts between documents")
    n_vocab = _vocab_upper_bound(tok)
    dtype = "uint16" if n_vocab <= 1 << 16 else "uint32"

    # forced validation document: the lowest hash overall, so a small corpus still gets a val split
    forced: tuple[int, int] | None = None
    if val_fraction > 0:
        n_val = sum(s["val_documents"] for s in scans)
        if n_val == 0:
            if total_docs < 2:
                raise DataError(
                    f"{_describe(inputs)}: only one document, so nothing can be held out for validation; "
                    "split the text into several files or pass --val_fraction 0"
                )
            i = min(range(len(scans)), key=lambda j: scans[j]["min_u"])
            forced = (i, scans[i]["min_u_doc"])
        elif n_val == total_docs:
            raise DataError(f"{_describe(inputs)}: val_fraction={val_fraction} left no training documents")

    # ---- pass 2: tokenize into per-file temporary token files, then concatenate into shards ----
    out.mkdir(parents=True, exist_ok=True)
    work = out / f".partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        jobs = [
            (str(f), i, s["sha256"], s["documents"], str(tok_source), str(work), text_key, val_fraction, seed,
             dtype, chunk_chars, forced[1] if forced and forced[0] == i else None)
            for i, (f, s) in enumerate(zip(files, scans))
        ]
        total_bytes = sum(s["bytes"] for s in scans)
        results = _map(_tokenize_file, jobs, n_workers, progress_total=total_bytes if progress else None)
        splits = {name: _write_shards(work, name, len(files), dtype, shard_tokens) for name in ("train", "val")}
        if splits["train"]["tokens"] == 0:
            raise DataError(f"{_describe(inputs)}: no training tokens were produced")
        tok.save(work / "tokenizer")
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "key": key,
            "dtype": dtype,
            "tokenizer": {"source": str(tok_source), "sha256": tok_sha, "vocab_size": n_vocab,
                          "eos_id": tok.eos_id, "bos_id": tok.bos_id},
            "options": options,
            "inputs": [
                {"path": str(f), "sha256": s["sha256"], "bytes": s["bytes"], "documents": s["documents"],
                 "train_tokens": r["train"], "val_tokens": r["val"], "val_documents": r["val_documents"]}
                for f, s, r in zip(files, scans, results)
            ],
            "splits": splits,
            "total_tokens": splits["train"]["tokens"] + splits["val"]["tokens"],
        }
        _install(out, work, old, manifest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    dt = time.perf_counter() - t0
    say(f"{out}: {total_docs:,} documents -> {splits['train']['tokens']:,} train + {splits['val']['tokens']:,} val "
        f"tokens ({dtype}, {len(splits['train']['shards'])} + {len(splits['val']['shards'])} shards) in {dt:.1f}s")
    return manifest


# ---------------------------------------------------------------------------------------------
# inputs and tokenizer identity
# ---------------------------------------------------------------------------------------------
def tokenizer_sha256(source: Path) -> str:
    """A hash identifying the tokenizer: its files' names and bytes (or the .gguf file's bytes)."""
    h = hashlib.sha256()
    if source.is_file():
        if source.suffix not in (".gguf", ".tiktoken") and source.name not in TOKENIZER_FILES:
            # any other file would be read as "its folder", and the error would name the folder
            raise DataError(f"{source}: not a tokenizer file (pass a tokenizer/checkpoint dir, its tokenizer.json "
                            f"or tokenizer.model, or a .gguf file)")
        h.update(source.name.encode())
        _hash_file(source, h)
    elif source.is_dir():
        present = [n for n in TOKENIZER_FILES if (source / n).is_file()] + sorted(
            p.name for p in source.glob("*.tiktoken"))
        if not present:
            raise DataError(f"{source}: no tokenizer files here (expected tokenizer.json or tokenizer.model)")
        for name in present:
            h.update(name.encode())
            _hash_file(source / name, h)
    else:
        raise DataError(f"{source}: tokenizer not found (pass a tokenizer/checkpoint dir or a .gguf file)")
    return h.hexdigest()


def load_tokenizer(source: Path) -> Tokenizer:
    """Load a tokenizer SOURCE: a dir with tokenizer files, or a .gguf file."""
    from lmforge.tokenizer import Tokenizer

    if source.is_file() and source.suffix == ".gguf":
        return Tokenizer.from_gguf(source)
    return Tokenizer.from_dir(source)


def _vocab_upper_bound(tok: Tokenizer) -> int:
    """One past the largest id the tokenizer can produce (added tokens may lie past vocab_size)."""
    n = int(tok.vocab_size)
    for tid in (tok.eos_id, tok.bos_id, tok.pad_id, *(tok.eos_ids or [])):
        if tid is not None:
            n = max(n, int(tid) + 1)
    return n


def _hash_file(path: Path, h: Any) -> None:
    with open(path, "rb") as f:
        while buf := f.read(READ_BYTES):
            h.update(buf)


def _describe(inputs: Any) -> str:
    return str(inputs) if isinstance(inputs, (str, Path)) else f"{len(inputs)} inputs"


# ---------------------------------------------------------------------------------------------
# reading documents (streaming)
# ---------------------------------------------------------------------------------------------
def _val_u(seed: int, file_sha: str, doc: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, file content, document index)."""
    d = hashlib.blake2b(f"{seed}:{file_sha}:{doc}".encode(), digest_size=8).digest()
    return int.from_bytes(d, "little") / 2.0**64


# ---------------------------------------------------------------------------------------------
# pass 1: scan
# ---------------------------------------------------------------------------------------------
def _scan_file(args: tuple[str, str]) -> dict[str, Any]:
    path, text_key = Path(args[0]), args[1]
    h = hashlib.sha256()
    n_bytes = 0

    def texts() -> Iterator[str]:
        nonlocal n_bytes
        for text, raw in decoded_chunks(path):
            h.update(raw)
            n_bytes += len(raw)
            yield text

    if path.suffix in JSONL_SUFFIXES:
        docs = sum(1 for _ in jsonl_docs(path, text_key, lines(texts())))
    else:
        docs = int(any(t.strip() for t in texts()))  # read to the end even after the first text
    return {"sha256": h.hexdigest(), "bytes": n_bytes, "documents": docs}


def _add_split_stats(scan: dict[str, Any], val_fraction: float, seed: int) -> dict[str, Any]:
    us = [_val_u(seed, scan["sha256"], d) for d in range(scan["documents"])]
    scan["val_documents"] = sum(u < val_fraction for u in us)
    scan["min_u"], scan["min_u_doc"] = min(((u, d) for d, u in enumerate(us)), default=(2.0, -1))
    return scan


# ---------------------------------------------------------------------------------------------
# pass 2: tokenize
# ---------------------------------------------------------------------------------------------
_on_progress: Callable[[int], None] | None = None  # called with bytes read; set per process
_WORKER_TOKENIZERS: dict[str, Tokenizer] = {}


def _init_worker(counter: Any) -> None:
    """Pool initializer: count bytes read into a shared integer the parent shows as a bar."""
    global _on_progress

    def add(n: int) -> None:
        with counter.get_lock():
            counter.value += n

    _on_progress = add


def _report(n_bytes: int) -> None:
    if _on_progress is not None:
        _on_progress(n_bytes)


def _tokenize_file(args: tuple) -> dict[str, int]:
    import numpy as np

    path, index, sha, n_docs, tok_source, work, text_key, val_fraction, seed, dtype, chunk_chars, forced_doc = args
    path = Path(path)
    tok = _WORKER_TOKENIZERS.get(tok_source)
    if tok is None:
        tok = _WORKER_TOKENIZERS[tok_source] = load_tokenizer(Path(tok_source))
    eos = tok.eos_id
    limit = np.iinfo(dtype).max
    counts = {"train": 0, "val": 0, "val_documents": 0}
    files = {name: open(Path(work) / f"{index:06d}.{name}.bin", "wb") for name in ("train", "val")}

    def emit(name: str, ids: list[int]) -> None:
        arr = np.asarray(ids, dtype=np.int64)
        if arr.size and int(arr.max()) > limit:
            raise DataError(f"{tok_source}: token id {int(arr.max())} does not fit {dtype}")
        files[name].write(arr.astype(dtype).tobytes())
        counts[name] += int(arr.size)

    def texts() -> Iterator[str]:
        for text, raw in decoded_chunks(path):
            _report(len(raw))
            yield text

    try:
        if path.suffix in JSONL_SUFFIXES:
            for d, doc in enumerate(jsonl_docs(path, text_key, lines(texts()))):
                split = "val" if (_val_u(seed, sha, d) < val_fraction or d == forced_doc) else "train"
                counts["val_documents"] += split == "val"
                emit(split, tok.encode(doc, bos=False) + [eos])
        elif n_docs:  # a .txt file is one document (a blank one is none)
            split = "val" if (_val_u(seed, sha, 0) < val_fraction or forced_doc == 0) else "train"
            for piece in text_pieces(texts(), chunk_chars):
                emit(split, tok.encode(piece, bos=False))
            emit(split, [eos])
            counts["val_documents"] += split == "val"
    finally:
        for f in files.values():
            f.close()
    return counts


def _write_shards(work: Path, split: str, n_files: int, dtype: str, shard_tokens: int) -> dict[str, Any]:
    """Concatenate the per-file token files of `split` (in input order) into shards under `work`."""
    import numpy as np

    itemsize = np.dtype(dtype).itemsize
    shards: list[dict[str, Any]] = []
    out = None
    in_shard = 0

    def new_shard():
        nonlocal out, in_shard
        if out is not None:
            out.close()
        name = f"{split}_{len(shards):04d}.bin"
        shards.append({"file": name, "tokens": 0})
        out = open(work / name, "wb")
        in_shard = 0

    for i in range(n_files):
        part = work / f"{i:06d}.{split}.bin"
        with open(part, "rb") as f:
            while True:
                room = shard_tokens - in_shard if out is not None else 0
                if room == 0:
                    peek = f.read(1)
                    if not peek:
                        break
                    f.seek(-1, os.SEEK_CUR)
                    new_shard()
                    continue
                buf = f.read(min(room, 1 << 22) * itemsize)
                if not buf:
                    break
                out.write(buf)
                n = len(buf) // itemsize
                in_shard += n
                shards[-1]["tokens"] += n
        part.unlink()
    if out is not None:
        out.close()
    return {"tokens": sum(s["tokens"] for s in shards), "shards": shards}


def _install(out: Path, work: Path, old: dict[str, Any] | None, manifest: dict[str, Any]) -> None:
    """Move the finished shards into `out` and write the manifest last.

    The old manifest goes first, so a crash in between leaves a directory that the loader
    rejects (no manifest) instead of a manifest pointing at a mix of old and new shards.
    """
    (out / MANIFEST).unlink(missing_ok=True)
    if old is not None:
        for split in old.get("splits", {}).values():
            for shard in split.get("shards", []):
                (out / shard["file"]).unlink(missing_ok=True)
    shutil.rmtree(out / "tokenizer", ignore_errors=True)
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            os.replace(work / shard["file"], out / shard["file"])
    os.replace(work / "tokenizer", out / "tokenizer")
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# parallel map with a byte-progress bar
# ---------------------------------------------------------------------------------------------
def _map(fn: Callable, jobs: list, n_workers: int, progress_total: int | None = None) -> list:
    """`[fn(j) for j in jobs]`, over `n_workers` processes when > 1, in input order.

    The first failing job's `LmforgeError` is re-raised as is (it names the file).
    """
    bar = None
    if progress_total is not None:
        from tqdm import tqdm

        bar = tqdm(total=progress_total, unit="B", unit_scale=True, desc="tokenizing", leave=False)
    try:
        if n_workers <= 1:
            global _on_progress
            _on_progress = bar.update if bar is not None else None
            try:
                return [fn(j) for j in jobs]
            finally:
                _on_progress = None
        import multiprocessing as mp

        # fork: no re-import of the caller's __main__ (spawn would need an `if __name__ == "__main__"`
        # guard in every user script); the parent has not used the tokenizer's thread pool yet
        ctx = mp.get_context("fork")
        counter = ctx.Value("q", 0)
        with ctx.Pool(n_workers, initializer=_init_worker, initargs=(counter,)) as pool:
            pending = pool.map_async(fn, jobs, chunksize=1)
            while not pending.ready():
                pending.wait(0.2)
                if bar is not None:
                    bar.update(counter.value - bar.n)
            return pending.get()
    finally:
        if bar is not None:
            bar.close()


def _read_manifest_or_none(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
