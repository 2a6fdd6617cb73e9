"""lmforge as an lm-evaluation-harness model: `--model lmforge --model_args source=SOURCE`.

    python -m lmforge.evaluate.lm_eval_model run --model lmforge --model_args source=model.gguf --tasks mmlu
    # or, in Python:
    import lmforge.evaluate.lm_eval_model, lm_eval
    lm_eval.simple_evaluate(model="lmforge", model_args="source=model.gguf,batch_size=32", tasks=[...])

Importing this module registers the class under the name "lmforge" (`@register_model`). lm-eval
0.4.13 finds models only in its own `MODEL_MAPPING` (it reads no plugin entry points), so its bare
`lm_eval` command cannot know of us: `python -m lmforge.evaluate.lm_eval_model …` is that command
with lmforge registered first (all of lm-eval's flags work).

The scoring is lmforge's (`lmforge.evaluate.scoring`: a context run once for its continuations,
shared prefixes, the CPU kernels); the tokenization of a (context, continuation) pair is lm-eval's
own (`TemplateLM._encode_pair`), so the token ids are those its `hf` backend scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lm_eval.models  # noqa: F401 - lm-eval's own names first: it fills an empty registry only
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm


@register_model("lmforge")
class LmforgeLM(TemplateLM):
    """An lm-eval model over `lmforge.LLM.load(source, …)`."""

    def __init__(self, source: str, batch_size: int | str = 32, quantize: str = "none", device: str | None = None,
                 dtype: str | None = None, max_gen_toks: int = 256, **_ignored: Any) -> None:
        super().__init__()
        import torch

        from lmforge.api import LLM

        if device and device.startswith("cuda") and not torch.cuda.is_available():
            device = None  # lm-eval's default device is cuda; its hf backend falls back to the CPU too
        self.llm = LLM.load(source, device=device, dtype=dtype, quantize=quantize)
        self.tok = self.llm._require_tokenizer()
        self.batch_size = 32 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_gen_toks = int(max_gen_toks)

    # -- what TemplateLM needs ----------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        # the token before an empty context (as lm-eval's hf backend: BOS when there is one, else EOS)
        return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

    @property
    def max_length(self) -> int:
        return self.llm.config.block_size

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tok.encode(string, bos=bool(add_special_tokens))

    def tok_decode(self, tokens: list[int], **kwargs: Any) -> str:
        return self.tok.decode(tokens)

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        from lmforge.evaluate.scoring import loglikelihoods

        results = loglikelihoods(self.llm.model, [(ctx, cont) for _, ctx, cont in requests], self.batch_size)
        for (pair, _, _), res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", pair, res)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each whole text, in disjoint windows of the block size (lm-eval's rule)."""
        from lmforge.evaluate.perplexity import windows
        from lmforge.evaluate.scoring import loglikelihoods

        spans, flat = [], []
        for (text,) in [r.args for r in requests]:
            w = windows(self.tok_encode(text), self.prefix_token_id, self.max_length, self.max_length)
            spans.append((len(flat), len(w)))
            flat += w
        lls = [ll for ll, _ in loglikelihoods(self.llm.model, flat, self.batch_size)]
        out = [sum(lls[s:s + n]) for s, n in spans]
        for r, ll in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, ll)
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with do_sample/temperature) completions, cut at the `until` strings."""
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        out = []
        for context, gen_kwargs in tqdm([r.args for r in requests], disable=disable_tqdm,
                                        desc="lmforge generate_until"):
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=self.tok.decode([self.eot_token_id]))
            n_new = int(kwargs.pop("max_gen_toks"))
            ids = self.tok_encode(context)[-(self.max_length - n_new):]
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            text = self.llm.generate(ids, max_new_tokens=n_new, temperature=temperature,
                                     top_p=float(kwargs.get("top_p", 1.0)), stop=until)
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return out


def write_mmlu_task(folder: str | Path, data_file: str | Path, name: str = "mmlu_lmforge") -> Path:
    """An lm-eval task YAML (in `folder`, for `--include_path`) over an MMLU-shaped JSONL (the `mmlu`
    asset's lines), with `lmforge evaluate --scoring letter`'s prompt (MMLU's standard one) and no hub.

    Returns:
        The YAML's path.
    """
    import yaml

    from lmforge.evaluate.multiple_choice import LETTERS, header

    text = header("{{topic}}") + "{{question.strip()}}" + "".join(
        f"\n{c}. {{{{answer_{c.lower()}}}}}" for c in LETTERS[:4]) + "\nAnswer:"
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(data_file).resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": text,
        "doc_to_choice": list(LETTERS[:4]),
        "doc_to_target": "{{correct_answer}}",
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    out = Path(folder) / f"{name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(task, sort_keys=False, allow_unicode=True))
    return out


def run_lm_eval(model: str, model_args: str, include_path: str | Path, task: str,
                batch_size: int = 1, device: str = "cpu") -> tuple[list[dict[str, Any]], float]:
    """Run one local lm-eval task offline (no hub) through `lm_eval.simple_evaluate`.

    Returns:
        (per document in order: {"doc_id", "resps": [each request's result]}, the seconds spent in
        the model's loglikelihood / loglikelihood_rolling / generate_until calls).
    """
    import os
    import time

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    import lm_eval
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    lm = get_model(model).create_from_arg_string(model_args, {"batch_size": batch_size, "device": device})
    spent = [0.0]

    def timed(method):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t0
        return call

    for name in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        setattr(lm, name, timed(getattr(lm, name)))
    out = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=str(include_path)),
                                  log_samples=True)
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    return [{"doc_id": s["doc_id"], "resps": [r[0] for r in s["resps"]]} for s in samples], spent[0]


def main() -> None:
    """`lm_eval`'s command line with the "lmforge" model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
