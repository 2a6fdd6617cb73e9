"""`lmforge demo` (what `make demo` runs): the whole cycle, pretrain -> SmolLM2 -> spam -> SFT -> DPO ->
evaluate -> export, each stage with its metric before -> after, in OUT/report.html."""

from __future__ import annotations


def demo(out: str = "out/demo", full: bool = False, force: str = "", stages: str = "") -> None:
    """Run the whole cycle on this machine; a re-run skips the stages an earlier run completed.

    Args:
        out: directory for everything the demo writes (one folder per stage, report.json, report.html).
        full: the full budgets (~30 min on 2 cores; every recipe's numeric target) instead of the quick
            ones (~12 min).
        force: stages to redo even when an earlier run completed them, comma-separated
            (pretrain, smollm2, spam, sft, dpo, evaluate, export).
        stages: run only these stages, comma-separated (default: all).
    """
    from lmforge.demo import run_demo

    def names(text: str) -> list[str]:
        return [n.strip() for n in text.split(",") if n.strip()]

    run_demo(out, full=full, force=names(force), stages=names(stages) or None)
