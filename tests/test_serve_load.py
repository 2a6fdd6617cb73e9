"""The real SmolLM2 server under concurrent load: 32 streams with a random arrival schedule get the
answers each prompt gets alone (slow tier: ~1 min on 2 cores)."""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch

from lmforge.generate import Engine
from lmforge.sampling import SamplingParams

pytestmark = pytest.mark.slow

SUBJECTS = ["France", "Japan", "Peru", "Kenya", "Norway", "Egypt", "Canada", "India"]
TEMPLATES = ["The capital of {} is", "A famous dish from {} is", "The language spoken in {} is",
             "The weather in {} is usually"]
PROMPTS = [t.format(s) for t in TEMPLATES for s in SUBJECTS]  # 32 prompts
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def smollm2():
    from helpers import asset

    from lmforge.api import LLM

    return LLM.load(asset("smollm2-135m-instruct"), device="cpu")


def _solo(llm, prompt: str) -> tuple[str, float]:
    """The prompt's greedy completion alone, and the smallest top-2 logit gap along it."""
    ids = llm.tokenizer.encode(prompt)
    engine = Engine(llm.model, llm.tokenizer, max_batch_size=1, max_seq_length=len(ids) + NEW_TOKENS)
    events = list(engine.stream(ids, SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)))
    tokens = [ev.token_id for ev in events]
    with torch.inference_mode():
        logits = llm.model(torch.tensor([ids + tokens]))[0, len(ids) - 1:-1]
    top2 = logits.topk(2, dim=-1).values
    return "".join(ev.text for ev in events), float((top2[:, 0] - top2[:, 1]).min())


def test_32_concurrent_streams_equal_solo_answers(smollm2):
    import openai

    from lmforge.serve import Server

    solo = {p: _solo(smollm2, p) for p in PROMPTS}
    rng = random.Random(11)
    delays = {p: rng.uniform(0.0, 3.0) for p in PROMPTS}  # arrivals spread over the first seconds
    got: dict[str, str] = {}
    errors: list[BaseException] = []
    with Server(smollm2, max_batch_size=8, max_queue=64, max_seq_length=256) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=300)

        def one(prompt: str) -> None:
            try:
                time.sleep(delays[prompt])
                stream = client.completions.create(model="m", prompt=prompt, max_tokens=NEW_TOKENS, temperature=0,
                                                   stream=True, extra_body={"ignore_eos": True})
                got[prompt] = "".join(c.choices[0].text for c in stream if c.choices)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=one, args=(p,)) for p in PROMPTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    assert not errors, errors[:3]
    checked = [p for p in PROMPTS if solo[p][1] > 1e-3]  # near-ties may legitimately flip
    assert len(checked) >= 24
    wrong = [(p, got[p], solo[p][0]) for p in checked if got[p] != solo[p][0]]
    assert not wrong, wrong[:3]
