"""Preference tuning: DPO, IPO, SimPO, ORPO and KTO on the one training loop.

    from lmforge.align import align, load_config
    align(load_config("dpo-smollm2", **{"train.max_steps": 20}))     # or AlignConfig(...)

See `lmforge.align.recipe` (the recipe), `lmforge.align.losses` (the losses, each citing its paper)
and `lmforge.align.reference` (completion log-probs; the reference model, or its cached log-probs).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmforge.align.recipe import AlignConfig


def align(cfg: AlignConfig) -> dict[str, Any]:
    """Preference-tune a language model (see `lmforge.align.recipe`); returns the run summary."""
    from lmforge.align.recipe import align as run

    return run(cfg)


def load_config(path: str | Path | None = None, **overrides: Any) -> AlignConfig:
    """An `AlignConfig` from YAML (a file or a packaged name such as `dpo-smollm2`); `overrides` use
    dotted keys (`**{"loss.beta": 0.2}`)."""
    from lmforge.align.recipe import AlignConfig
    from lmforge.training import config as _config

    return _config.load_config(AlignConfig, path, **overrides)
