"""`lmforge classify CKPT --text "…"`: the class of each text, from a `finetune classify` checkpoint."""

from __future__ import annotations

import json
import sys

from lmforge.errors import LmforgeError


def classify(checkpoint: str, *, text: str | None = None, file: str | None = None, device: str | None = None,
             output: str = "text") -> None:
    """Print the predicted class of each text (one line each), with its probability.

    Args:
        checkpoint: a classifier checkpoint dir (what `lmforge finetune classify` writes as final/).
        text: a text to classify.
        file: a file with one text per line (`-`: stdin).
        device: cpu, cuda or auto.
        output: text (`label<TAB>probability<TAB>text`) or jsonl.
    """
    texts = [text] if text is not None else []
    if file is not None:
        try:
            lines = sys.stdin.read().splitlines() if file == "-" else open(file, encoding="utf-8").read().splitlines()
        except OSError as e:
            raise LmforgeError(f"{file}: cannot read ({e.strerror})") from None
        texts += [ln for ln in lines if ln.strip()]
    if not texts:
        raise LmforgeError("nothing to classify: pass --text \"…\" or --file FILE")
    if output not in ("text", "jsonl"):
        raise LmforgeError(f"--output must be text or jsonl, got {output!r}")
    from lmforge.api import LLM

    llm = LLM.load(checkpoint, device=device, dtype="float32")
    for t, res in zip(texts, llm.classify(texts)):
        if output == "jsonl":
            print(json.dumps({"text": t, **res}, ensure_ascii=False))
        else:
            print(f"{res['label']}\t{res['probability']:.4f}\t{t}")
