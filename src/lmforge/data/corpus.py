"""Reading a text corpus: which files it is made of, and their texts, streamed and checked.

One reader for every verb that takes a corpus (`lmforge prepare`, `lmforge tokenizer train`):

* `collect_files` turns folders (searched recursively), globs and file paths into the list of
  `.txt` / `.jsonl` files, naming any input that is missing or of another type.
* `decoded_chunks` reads a file in pieces as strict UTF-8; a NUL byte (a binary file) or a byte
  sequence that is not UTF-8 is an error naming the file and the offset.
* `jsonl_docs` yields each JSONL line's text field; errors name the file and the line.
* `iter_texts` chains these into the texts of many files, for tokenizer training.

A `.txt` file is one document; a `.jsonl` file is one document per non-blank line.
"""

from __future__ import annotations

import codecs
import glob
from collections.abc import Iterable, Iterator
from pathlib import Path

from lmforge._io import jsonl_objects
from lmforge.errors import LmforgeError

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl",)
READ_BYTES = 1 << 20


class DataError(LmforgeError):
    """Bad corpus input or a bad prepared-data directory."""


def collect_files(inputs: str | Path | Iterable[str | Path]) -> list[Path]:
    """The corpus files named by `inputs`, in order; each folder's files sorted.

    Args:
        inputs: a folder (searched recursively for *.txt and *.jsonl), a .txt/.jsonl file, a glob
            ("data/*.txt"), or a list of those.

    Raises:
        DataError: no inputs, a missing path, a glob or folder that matches no corpus file, or a
            file of another type.
    """
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise DataError("no inputs given (pass a folder, a .txt/.jsonl file, a glob or a list of them)")
    suffixes = TEXT_SUFFIXES + JSONL_SUFFIXES
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if not p.exists() and any(c in str(item) for c in "*?["):
            matches = sorted(glob.glob(str(item)))
            if not matches:
                raise DataError(f"{item}: no file matches this pattern")
            files.extend(collect_files(matches))
        elif p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in suffixes)
            if not found:
                raise DataError(f"{p}: the folder holds no .txt or .jsonl files")
            files.extend(found)
        elif p.is_file():
            if p.suffix not in suffixes:
                raise DataError(f"{p}: unsupported input type {p.suffix or '(none)'!r} (use .txt or .jsonl)")
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    return files


def decoded_chunks(path: Path) -> Iterator[tuple[str, bytes]]:
    """Yield (text, raw bytes) in ~1 MiB pieces; raise naming the file on NUL bytes or bad UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(READ_BYTES)
            final = not raw
            pending = len(decoder.getstate()[0])  # bytes of a character the previous piece began
            nul = raw.find(b"\0")
            if nul >= 0:
                raise DataError(f"{path}: binary file (not UTF-8 text: a NUL byte at offset {offset + nul}); "
                                "remove it from the inputs")
            try:
                text = decoder.decode(raw, final=final)
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: cannot read it (not UTF-8 text: {e.reason} at byte {offset - pending + e.start}); "
                                "re-encode it as UTF-8 or remove it from the inputs") from None
            offset += len(raw)
            if text or raw:
                yield text, raw
            if final:
                return


def lines(chunks: Iterator[str]) -> Iterator[str]:
    """Re-cut a text stream into lines (without their "\\n")."""
    rest = ""
    for text in chunks:
        rest += text
        *complete, rest = rest.split("\n")
        yield from complete
    if rest:
        yield rest


def jsonl_docs(path: Path, text_key: str, lines: Iterator[str]) -> Iterator[str]:
    """The non-empty `text_key` strings of JSONL lines; errors name the file and the line number."""
    for lineno, obj in jsonl_objects(lines, path, DataError):
        if text_key not in obj:
            raise DataError(f"{path}:{lineno}: no {text_key!r} field (choose the field with --text_key)")
        text = obj[text_key]
        if not isinstance(text, str):
            raise DataError(f"{path}:{lineno}: field {text_key!r} is {type(text).__name__}, not a string")
        if text:
            yield text


def text_pieces(chunks: Iterator[str], chunk_chars: int) -> Iterator[str]:
    """Re-cut a text stream into pieces of about `chunk_chars`, each ending in a single "\n" between
    two non-space characters ("end.\nNext"): the pre-tokenizers of GPT-2, Llama-3 and Qwen2 all split
    there and the same way at the end of a text, so tokenizing piece by piece gives the same ids as
    tokenizing the whole text. (After a blank line they do not: GPT-2 splits "\n\n\nX" as
    "\n\n", "\n", "X" but a text ending in "\n\n\n" as one token.)"""
    buf = ""
    for text in chunks:
        buf += text
        while len(buf) >= chunk_chars:
            cut = _safe_cut(buf, chunk_chars)
            if cut <= 0:
                break
            yield buf[:cut]
            buf = buf[cut:]
    if buf:
        yield buf


def _safe_cut(buf: str, target: int) -> int:
    i = buf.find("\n", max(target - 1, 1))
    while i >= 0 and i + 1 < len(buf):
        if not buf[i - 1].isspace() and not buf[i + 1].isspace():
            return i + 1
        i = buf.find("\n", i + 1)
    return -1  # no safe cut yet: read more (a text with no such line break stays one piece)


def iter_texts(files: Iterable[str | Path], text_key: str = "text", chunk_chars: int = 1 << 16) -> Iterator[str]:
    """The texts of corpus files: .txt files in pieces of about `chunk_chars` (cut where a byte-level
    pre-tokenizer cuts anyway), .jsonl files one text per line.

    Pieces keep a tokenizer trainer's memory flat and let it work in parallel.
    """
    for f in files:
        path = Path(f)
        chunks = (text for text, _ in decoded_chunks(path))
        if path.suffix in JSONL_SUFFIXES:
            yield from jsonl_docs(path, text_key, lines(chunks))
        else:
            yield from text_pieces(chunks, chunk_chars)
