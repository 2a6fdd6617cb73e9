"""Instruction data: Alpaca and chat rendering, prompt masking, packing equal to unpacked, bad input."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import asset, tiny_gpt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.data.sft import (IGNORE, SFTDataError, alpaca_prompt, batches, collate, encode_records, pack,
                              read_records)

CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6, of course."}]


@pytest.fixture(scope="module")
def tok():
    from lmforge.tokenizer import Tokenizer

    return Tokenizer.from_gguf(asset("smollm2-135m-instruct"))


def test_alpaca_rendering_and_prompt_mask(tok):
    rec = {"instruction": "Add 2 and 3.", "input": "", "output": "5"}
    (ex,) = encode_records([rec], tok)
    text = tok.decode(ex.ids)
    assert text == alpaca_prompt("Add 2 and 3.") + "5" + tok.decode([tok.eos_id])
    assert "### Input:" not in text and "### Input:\nx" in alpaca_prompt("i", "x")
    learned = [t for t in ex.labels if t != IGNORE]
    assert tok.decode(learned) == "5" + tok.decode([tok.eos_id])
    (whole,) = encode_records([rec], tok, mask_prompt=False)
    assert whole.labels == whole.ids


def test_chat_equals_apply_chat_template_and_learns_assistant_turns_only(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    from lmforge.prompts import format_chat

    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert format_chat(CHAT, tok, add_generation_prompt=False) == hf.apply_chat_template(CHAT, tokenize=False)
    (ex,) = encode_records([{"messages": CHAT}], tok)
    assert tok.decode(ex.ids) == hf.apply_chat_template(CHAT, tokenize=False)
    spans, cur = [], []
    for t, lab in zip(ex.ids, ex.labels):
        if lab != IGNORE:
            cur.append(t)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    spans += [tok.decode(cur)] if cur else []
    assert spans == ["4<|im_end|>\n", "6, of course.<|im_end|>\n"]  # each assistant turn with its end


def _loss(model, batch) -> torch.Tensor:
    logits = model(batch["ids"], segments=batch.get("segments"))
    return F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE, reduction="sum")


def test_packed_loss_equals_unpacked(tok):
    model = tiny_gpt("llama-gqa", vocab_size=tok.vocab_size, block_size=256)
    recs = [{"instruction": f"Repeat the word number {i}.", "output": "word " * (i % 5 + 1)} for i in range(7)]
    recs.append({"messages": CHAT})
    examples = encode_records(recs, tok)
    rows = pack(examples, max_len=128)
    assert len(rows) < len(examples)  # several examples share a row
    packed = collate(rows, packed=True)
    plain = collate([[e] for e in examples], packed=False)
    n = (plain["targets"] != IGNORE).sum()
    assert (packed["targets"] != IGNORE).sum() == n
    with torch.no_grad():
        torch.testing.assert_close(_loss(model, packed) / n, _loss(model, plain) / n, rtol=1e-5, atol=1e-5)
        # without segments the packed rows attend across examples: a different loss
        assert not torch.allclose(_loss(model, {**packed, "segments": None}), _loss(model, packed), rtol=1e-3)


def test_masked_positions_contribute_nothing(tok):
    model = tiny_gpt("llama-gqa", vocab_size=tok.vocab_size, block_size=256)
    (ex,) = encode_records([{"instruction": "Say hi.", "output": "hi"}], tok)
    batch = collate([[ex]], packed=False)
    logits = model(batch["ids"]).detach().requires_grad_(True)
    F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE).backward()
    masked = batch["targets"][0] == IGNORE
    assert masked.sum() > 0 and (~masked).sum() > 0
    assert torch.count_nonzero(logits.grad[0][masked]) == 0
    assert torch.count_nonzero(logits.grad[0][~masked]) > 0


def test_batches_are_seeded_and_cover_every_example(tok):
    examples = encode_records([{"instruction": f"n{i}", "output": str(i)} for i in range(10)], tok)
    a = list(batches(examples, batch_size=3, max_len=64, seed=1))
    assert [b["ids"].tolist() for b in a] == [b["ids"].tolist() for b in batches(examples, 3, 64, seed=1)]
    learned = sum(int((b["targets"] != IGNORE).sum()) for b in a)
    assert learned == sum(sum(t != IGNORE for t in e.labels[1:]) for e in examples)  # every example, once
    assert [b["ids"].tolist() for b in a] != [b["ids"].tolist() for b in batches(examples, 3, 64, seed=1, epoch=1)]


def _write(path, lines):
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize("lines,match", [
    (['{"instruction": "a", "output": "b"}\n', '{"instrucion": "a", "output": "b"}\n'], r"x.jsonl:2: missing key 'instruction'"),
    (['{"instruction": "a", "output": "  "}\n'], r"x.jsonl:1: 'output' is empty"),
    (['{"instruction": "a", "output": 3}\n'], r"x.jsonl:1: 'output' must be a string"),
    (['\n', '{"instruction": "a", "output": "b"\n'], r"x.jsonl:2: malformed JSON"),
    (['{"messages": [{"role": "user", "content": "hi"}]}\n'], r"x.jsonl:1: the conversation has no non-empty assistant"),
    (['{"messages": [{"role": "bot", "content": "hi"}]}\n'], r"x.jsonl:1: message 0 must be"),
    (['[1, 2]\n'], r"x.jsonl:1: expected a JSON object"),
])
def test_bad_records_name_file_and_line(tmp_path, lines, match):
    with pytest.raises(SFTDataError, match=match):
        read_records(_write(tmp_path / "x.jsonl", lines))


def test_too_long_examples_are_counted_then_truncated(tok):
    recs = [{"instruction": "word " * 200, "output": "x"}, {"instruction": "hi", "output": "x"}]
    with pytest.raises(SFTDataError, match="1 of 2 examples are longer than 64 tokens.*truncate"):
        encode_records(recs, tok, max_len=64)
    out = encode_records(recs, tok, max_len=64, truncate=True)
    assert [len(e.ids) for e in out] == [len(encode_records(recs[1:], tok)[0].ids)]  # nothing left to learn: dropped


_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                            max_leaves=6)
_records = st.dictionaries(st.sampled_from(["instruction", "input", "output", "messages", "x"]), _json_values,
                           max_size=4)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(rows=st.lists(st.one_of(_records, _json_values, st.text(max_size=20)), min_size=1, max_size=4))
def test_any_jsonl_gives_records_or_one_line_naming_the_line(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("fuzz") / "d.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)).replace("\n", " ") + "\n" for r in rows))
    try:
        records = read_records(path)
    except SFTDataError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith(str(path))
    else:
        assert all(("instruction" in r and r["output"].strip()) or "messages" in r for r in records)
