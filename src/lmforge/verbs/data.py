"""`lmforge data tasks --out DIR`: instruction data whose answers a program checks; `lmforge data
instructions --out FILE`: the open instructions an LLM judge scores."""

from __future__ import annotations


def tasks(out: str = "data/tasks", n_train: int = 2000, n_test: int = 300, seed: int = 0) -> None:
    """Write train.jsonl and test.jsonl of the checkable task families (test: unseen phrasings).

    Args:
        out: the output directory.
        n_train: training records (spread evenly over the families).
        n_test: test records, with phrasings never seen in training.
        seed: the seed of the records and of the template split.
    """
    from lmforge.data.tasks import write_tasks

    counts = write_tasks(out, n_train, n_test, seed)
    print(f"wrote {counts['train']} train and {counts['test']} test records of {counts['families']} task families "
          f"to {out}/train.jsonl and {out}/test.jsonl")


def instructions(out: str = "data/instructions.jsonl") -> None:
    """Write the shipped open instructions (240, twelve categories) for LLM-as-judge evaluation.

    Args:
        out: the output JSONL file (one {"id", "category", "instruction"} per line).
    """
    from lmforge.data.instructions import write_instructions

    n = write_instructions(out)
    print(f"wrote {n} instructions to {out}")
