"""`lmforge demo` (what `make demo` runs): fetch the assets, chat with SmolLM2, pretrain on Jane Austen."""

from __future__ import annotations


def demo(out: str = "out/demo", minutes: float = 3.0, skip_pretrain: bool = False, max_new_tokens: int = 64) -> None:
    """Run the end-to-end demo.

    Args:
        out: directory for everything the demo writes (checkpoints, logs, loss curve).
        minutes: wall-clock budget of the pretraining stage.
        skip_pretrain: only fetch assets and chat with SmolLM2.
        max_new_tokens: length limit of each SmolLM2 answer.
    """
    from lmforge.demo import run_demo

    run_demo(out, minutes=minutes, skip_pretrain=skip_pretrain, max_new_tokens=max_new_tokens)
