"""`lmforge pretrain`: train a model from scratch (or continue training one) on prepared shards.

    lmforge pretrain --config austen-tiny --data.dir out/austen/data --train.max_steps 200
    lmforge pretrain --config path/to/run.yaml
    torchrun --nproc-per-node 2 -m lmforge pretrain --config … --strategy fsdp
    lmforge pretrain --config … --devices 2            # launches torchrun itself
"""

from __future__ import annotations

from typing import Annotated

from lmforge.training.pretrain import PretrainConfig
from lmforge.verbs.flags import Flat


def pretrain(cfg: Annotated[PretrainConfig, Flat()]) -> None:
    """Pretrain a model from scratch, or continue training one, on data made by `lmforge prepare`.

    Args:
        cfg: the run: its fields are the flags and the keys of a --config YAML file.
    """
    from lmforge.training.pretrain import pretrain as run_pretrain

    run_pretrain(cfg)
