"""Named YAML configs shipped with lmforge (package data): `--config austen-tiny` reads
`lmforge/configs/pretrain/austen-tiny.yaml` wherever lmforge is installed.

    configs/<verb>/<name>.yaml      one file per named config
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def config_dir() -> Path:
    """The folder of the packaged configs (a real folder: lmforge is installed unzipped)."""
    return Path(str(files(__name__)))


def named_configs() -> dict[str, Path]:
    """Every packaged config by name (`austen-tiny`) and by verb/name (`pretrain/austen-tiny`)."""
    found: dict[str, Path] = {}
    for path in sorted(config_dir().glob("*/*.yaml")):
        found[f"{path.parent.name}/{path.stem}"] = path
        found.setdefault(path.stem, path)
    return found


def find_config(value: str | Path) -> Path:
    """`value` itself when it is a file, else the packaged config of that name (else `value`, for the
    caller's file-not-found error)."""
    path = Path(value)
    if path.is_file():
        return path
    return named_configs().get(str(value).removesuffix(".yaml"), path)
