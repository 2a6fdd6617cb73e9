"""`lmforge models`: the table of named model configs.

Parameter counts come from `Config.num_parameters()` (arithmetic on the fields), so listing
405B-parameter models imports no torch and takes milliseconds.
"""

from __future__ import annotations

from lmforge.config import Config, named_configs
from lmforge.errors import LmforgeError
from lmforge.model_registry import ALIASES, FAMILY

_COLUMNS = ("name", "family", "architecture", "params", "exact", "layers", "d_model", "heads/kv", "context")
_RIGHT = {"params", "exact", "layers", "d_model", "heads/kv", "context"}


def short_count(n: int) -> str:
    """124439808 -> '124.4M', 6738415616 -> '6.74B' (two decimals below 10, one above)."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            x = n / scale
            return f"{x:.2f}{unit}" if x < 10 else f"{x:.1f}{unit}"
    return str(n)


def _row(c: Config) -> dict[str, str]:
    return {
        "name": c.name,
        "family": FAMILY[c.name],
        "architecture": c.hf_architecture,
        "params": short_count(c.num_parameters()),
        "exact": f"{c.num_parameters():,}",
        "layers": str(c.n_layer),
        "d_model": str(c.n_embd),
        "heads/kv": f"{c.n_head}/{c.n_query_groups}",
        "context": str(c.block_size),
    }


def _matches(c: Config, needle: str) -> bool:
    aliases = (a for a, target in ALIASES.items() if target == c.name)
    haystack = (c.name, FAMILY[c.name], c.hf_architecture, c.hf_source or "", *aliases)
    return any(needle in field.lower() for field in haystack)


def models(filter: str | None = None) -> None:  # noqa: A002 - the flag reads best as --filter
    """List the named model configs: size, shape and context of each.

    Every name works with `Config.from_name(NAME)` and wherever a model config is expected.

    Args:
        filter: Show only models whose name, family, HF architecture or HF repo contains this
            text (case-insensitive), e.g. `--filter llama-3` or `--filter Gemma2`.
    """
    every = named_configs()
    configs = list(every.values())
    if filter:
        needle = filter.lower()
        configs = [c for c in configs if _matches(c, needle)]
        if not configs:
            raise LmforgeError(f"no named model config matches {filter!r}; run `lmforge models` for the full list")
    rows = [_row(c) for c in configs]
    widths = {col: max(len(col), *(len(r[col]) for r in rows)) for col in _COLUMNS}

    def line(cells: dict[str, str]) -> str:
        parts = (cells[c].rjust(widths[c]) if c in _RIGHT else cells[c].ljust(widths[c]) for c in _COLUMNS)
        return "  ".join(parts).rstrip()

    print(line({c: c for c in _COLUMNS}))
    for r in rows:
        print(line(r))
    print(f"\n{len(rows)} of {len(every)} named configs. Use one with Config.from_name(NAME).")
