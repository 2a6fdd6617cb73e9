"""Named model configs: real architectures with their published sizes.

The registry is data: one module per family (`gpt2`, `pythia`, `llama`, …), each a list of plain
dicts of `Config` keyword arguments citing the HF `config.json` they come from (`hf_source`), plus a
few aliases. This package only names and finds them; `lmforge.config` builds the `Config`s, so data
flows one way (config imports the registry, never the reverse). Importing it does not import torch,
so `lmforge models` stays fast.

    >>> from lmforge.config import Config
    >>> Config.from_name("pythia-160m").num_parameters()
    162322944
    >>> Config.from_name("pythia-160m", n_layer=2).n_layer
    2
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from lmforge.errors import ConfigError

FAMILY_MODULES: tuple[str, ...] = ("gpt2", "pythia", "llama", "mistral", "phi", "gemma", "qwen", "smollm", "olmo")

ENTRIES: dict[str, dict[str, Any]] = {}
"""`Config` keyword arguments of every named config by its canonical name (the HF repo's name), in family
order. Read-only: `lmforge.config.named_configs()` builds the `Config`s."""

ALIASES: dict[str, str] = {}
"""Alternative names (`Meta-Llama-3-8B`, `OLMo-2-7B`, …) -> canonical name."""

FAMILY: dict[str, str] = {}
"""Canonical name -> family (the registry module that defines it)."""


def _load() -> None:
    for family in FAMILY_MODULES:
        module = importlib.import_module(f"{__name__}.{family}")
        for entry in module.ENTRIES:
            name = entry["name"]
            if name in ENTRIES:
                raise RuntimeError(f"model registry: {name!r} is defined twice")
            ENTRIES[name] = entry
            FAMILY[name] = family
        ALIASES.update(module.ALIASES)
    for alias, target in ALIASES.items():
        if target not in ENTRIES:
            raise RuntimeError(f"model registry: alias {alias!r} points to unknown {target!r}")


_load()

# case-insensitive lookup of names and aliases
_BY_LOWER: dict[str, str] = {name.lower(): name for name in ENTRIES}
_BY_LOWER.update({alias.lower(): target for alias, target in ALIASES.items()})


def canonical_name(name: str) -> str:
    """The registry name that `name` (any case, or an alias) refers to.

    Raises:
        ConfigError: `name` is not a registered model (with the closest match as a hint).
    """
    key = name.strip().lower()
    if key in _BY_LOWER:
        return _BY_LOWER[key]
    candidates = list(_BY_LOWER)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close:
        # a substring is a good hint too ("llama-3-8" -> "Llama-3-8B")
        close = [c for c in candidates if key in c][:1]
    hint = f" (did you mean {_BY_LOWER[close[0]]!r}?)" if close else ""
    raise ConfigError(f"unknown model name {name!r}{hint}; `lmforge models` lists the named configs")


def family_of(name: str) -> str:
    """The family (`llama`, `qwen`, …) of a registered model name or alias."""
    return FAMILY[canonical_name(name)]
