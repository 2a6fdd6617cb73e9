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


def pairs(out: str = "data/pairs", from_tasks: bool = True, n_train: int = 2000, n_test: int = 300,
          seed: int = 0, sample_url: str | None = None, model: str = "", judge_url: str | None = None,
          judge_model: str | None = None, n_prompts: int = 20) -> None:
    """Write preference pairs from the checkable tasks, or from a served model's samples ranked by a judge.

    From the tasks: chosen is the checked answer, rejected a plausible wrong one. With --sample_url:
    each prompt is sampled twice and the judge's preferred sample is chosen.

    Args:
        out: the output directory (train.jsonl and test.jsonl; with --sample_url, judged.jsonl).
        from_tasks: pairs from the generated task families (test: phrasings unseen in training).
        n_train: training pairs (spread evenly over the families).
        n_test: test pairs.
        seed: the seed of the records, their wrong answers and the template split.
        sample_url: an OpenAI-compatible base URL (http://host:port/v1) to sample from instead.
        model: the model name at sample_url.
        judge_url: the judge's base URL (default: sample_url).
        judge_model: the judge's model name (default: model).
        n_prompts: with sample_url: task prompts to sample twice each.
    """
    from lmforge.data import pairs as P

    if sample_url:
        from lmforge.data.sft import alpaca_prompt
        from lmforge.data.tasks import make_tasks

        prompts = [alpaca_prompt(r["instruction"]) for r in make_tasks(n_prompts, 0, seed)[0]]
        made = P.judged_pairs(sample_url, model, prompts, judge_url, judge_model, seed=seed)
        P.write_jsonl(f"{out}/judged.jsonl", made)
        print(f"wrote {len(made)} judged pairs (of {len(prompts)} prompts) to {out}/judged.jsonl")
        return
    if not from_tasks:
        from lmforge.errors import LmforgeError

        raise LmforgeError("data pairs: pass --from_tasks true or --sample_url URL --model NAME")
    counts = P.write_task_pairs(out, n_train, n_test, seed)
    print(f"wrote {counts['train']} train and {counts['test']} test pairs to {out}/train.jsonl and {out}/test.jsonl")
