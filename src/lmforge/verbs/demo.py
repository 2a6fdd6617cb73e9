"""`lmforge demo` (what `make demo` runs): fetch the assets, chat with SmolLM2, pretrain on Jane Austen, report."""

from __future__ import annotations


def demo(out: str = "out/demo", minutes: float = 3.0, skip_pretrain: bool = False, max_new_tokens: int = 64) -> None:
    """Run the end-to-end demo; it writes a report of every stage to OUT/report.html (and report.json).

    Args:
        out: directory for everything the demo writes (checkpoints, logs, loss curve, the report).
        minutes: wall-clock budget of the pretraining stage.
        skip_pretrain: only fetch assets and chat with SmolLM2.
        max_new_tokens: length limit of each SmolLM2 answer.
    """
    from lmforge.demo import run_demo

    run_demo(out, minutes=minutes, skip_pretrain=skip_pretrain, max_new_tokens=max_new_tokens)
