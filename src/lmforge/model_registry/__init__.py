"""Named model configs: real architectures with their published sizes.

The registry is data: one module per family (`gpt2`, `pythia`, `llama`, …), each a list of
`Config(...)` entries citing the HF `config.json` they come from (`hf_source`), plus a few
aliases. Importing it does not import torch, so `lmforge models` stays fast.

    >>> from lmforge.model_registry import get_config
    >>> get_config("pythia-160m").num_parameters()
    162322944
    >>> get_config("pythia-160m", n_layer=2).n_layer
    2
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
from typing import Any

from lmforge.config import Config, ConfigError

FAMILY_MODULES: tuple[str, ...] = ("gpt2", "pythia", "llama", "mistral", "phi", "gemma", "qwen", "smollm", "olmo")

CONFIGS: dict[str, Config] = {}
"""Every named config by its canonical name (the HF repo's name), in family order."""

ALIASES: dict[str, str] = {}
"""Alternative names (`Meta-Llama-3-8B`, `OLMo-2-7B`, …) -> canonical name."""

FAMILY: dict[str, str] = {}
"""Canonical name -> family (the registry module that defines it)."""


def _load() -> None:
    for family in FAMILY_MODULES:
        module = importlib.import_module(f"{__name__}.{family}")
        for config in module.CONFIGS:
            if config.name in CONFIGS:
                raise RuntimeError(f"model registry: {config.name!r} is defined twice")
            CONFIGS[config.name] = config
            FAMILY[config.name] = family
        ALIASES.update(module.ALIASES)
    for alias, target in ALIASES.items():
        if target not in CONFIGS:
            raise RuntimeError(f"model registry: alias {alias!r} points to unknown {target!r}")


_load()

# case-insensitive lookup of names and aliases
_BY_LOWER: dict[str, str] = {name.lower(): name for name in CONFIGS}
_BY_LOWER.update({alias.lower(): target for alias, target in ALIASES.items()})

_FIELDS = {f.name for f in dataclasses.fields(Config)}


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


def get_config(name: str, **overrides: Any) -> Config:
    """A fresh copy of the named config, with `overrides` applied.

    Args:
        name: A registry name (case-insensitive) or alias, e.g. `"gpt2"`, `"Llama-3.1-8B"`.
        **overrides: `Config` fields to change, e.g. `n_layer=2` for a shallow test model.
            Changing `n_embd`/`n_head` re-derives `head_size`, `n_query_groups` (multi-head
            models) and `intermediate_size` (4 * n_embd) where the named config had them
            derived and the overrides do not set them.

    Returns:
        A new `Config`; mutating it does not touch the registry.

    Raises:
        ConfigError: unknown name, unknown override key, or an inconsistent result.
    """
    base = CONFIGS[canonical_name(name)]
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(_FIELDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"get_config({base.name!r}): unknown override {unknown[0]!r}{hint}")
    values = {f.name: copy.deepcopy(getattr(base, f.name)) for f in dataclasses.fields(Config)}
    if "n_embd" in overrides or "n_head" in overrides:
        # re-derive what the named config derived (head_size = n_embd // n_head, MHA kv heads,
        # intermediate = 4 * n_embd), so `n_embd=128, n_head=4` on gpt2 gives head_size 32, not 64
        if "head_size" not in overrides and base.head_size * base.n_head == base.n_embd:
            values["head_size"] = None
        if "n_query_groups" not in overrides and base.n_query_groups == base.n_head:
            values["n_query_groups"] = None
    if "n_embd" in overrides and "intermediate_size" not in overrides and base.intermediate_size == 4 * base.n_embd:
        values["intermediate_size"] = None
    values.update(overrides)
    try:
        return Config(**values)
    except TypeError as e:  # a value of the wrong kind, e.g. n_layer="x" compared with ints
        raise ConfigError(f"get_config({base.name!r}): bad override value ({e})") from None


def list_configs() -> list[Config]:
    """Copies of every named config, in registry order (family by family)."""
    return [copy.deepcopy(c) for c in CONFIGS.values()]


def family_of(name: str) -> str:
    """The family (`llama`, `qwen`, …) of a registered model name or alias."""
    return FAMILY[canonical_name(name)]
