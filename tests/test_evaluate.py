"""`lmforge evaluate`: the scorer against a plain forward pass, the JSONL/config boundary, the CLI,
and lm-eval (its `hf` backend on our HF export, and our adapter) on the same items."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from unittest import mock

import pytest
import torch
from helpers import asset, tiny_gpt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge import cli
from lmforge.errors import LmforgeError
from lmforge.evaluate import EvalConfig, scoring
from lmforge.evaluate.multiple_choice import parse_item, read_items
from lmforge.evaluate.perplexity import windows
from lmforge.evaluate.scoring import loglikelihoods
from lmforge.inference import prepare_for_inference

HYP = settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _reference(model, requests):
    """Each request's (log-likelihood, greedy) from one plain forward of context + continuation:
    no cache, no batching, the layer loop (no runner)."""
    runner, model.runner = model.runner, None
    try:
        out = []
        with torch.no_grad():
            for ctx, cont in requests:
                logp = torch.log_softmax(model(torch.tensor([(list(ctx) + list(cont))[:-1]]))[0].float(), -1)
                rows = logp[len(ctx) - 1:len(ctx) - 1 + len(cont)]
                out.append((float(rows[torch.arange(len(cont)), torch.tensor(cont)].sum()),
                            bool((rows.argmax(-1) == torch.tensor(cont)).all())))
        return out
    finally:
        model.runner = runner


def _requests(rng: random.Random, vocab: int, questions: int, shared: int) -> list[tuple[list[int], list[int]]]:
    """Questions of 4 options each (one-token and longer), half of them after a common prefix."""
    prefix = [rng.randrange(vocab) for _ in range(shared)]
    reqs = []
    for q in range(questions):
        ctx = (prefix if q % 2 else []) + [rng.randrange(vocab) for _ in range(rng.randint(1, 12))]
        reqs += [(ctx, [rng.randrange(vocab) for _ in range(rng.choice([1, 1, 2, 5]))]) for _ in range(4)]
    return reqs


@pytest.mark.parametrize("family", ["llama-gqa", "gpt2-learned", "mistral-window", "gemma2-like"])
@pytest.mark.parametrize("share", [True, False])
def test_option_loglikelihoods_equal_a_plain_forward(family, share, monkeypatch):
    model = prepare_for_inference(tiny_gpt(family, vector_noise=0.1))
    reqs = _requests(random.Random(0), model.config.vocab_size, questions=9, shared=20)
    calls = []
    monkeypatch.setattr(scoring, "MIN_SAVED_TOKENS", 0)  # share among the few rows of this test
    if share:  # the shared-prefix path must really run: count its one-row prefill caches
        new_cache = model.new_kv_cache
        monkeypatch.setattr(model, "new_kv_cache", lambda b, n=None, **kw: calls.append(b) or new_cache(b, n, **kw))
    else:
        monkeypatch.setattr(scoring, "MIN_SHARED_PREFIX", 10**9)
    got = loglikelihoods(model, reqs, batch_size=3)
    want = _reference(model, reqs)
    for (lp, greedy), (ref, ref_greedy) in zip(got, want):
        assert lp == pytest.approx(ref, abs=1e-4) and greedy == ref_greedy
    if share:
        assert 1 in calls, "no prefix was shared"


@HYP
@given(seed=st.integers(0, 10**6), questions=st.integers(1, 6), shared=st.integers(0, 30),
       batch_size=st.integers(1, 8))
def test_loglikelihoods_equal_a_plain_forward_property(seed, questions, shared, batch_size):
    model = _PROPERTY_MODEL
    reqs = _requests(random.Random(seed), model.config.vocab_size, questions, shared)
    with mock.patch.object(scoring, "MIN_SAVED_TOKENS", seed % 2 * 40):  # sharing among few rows, or not
        got = loglikelihoods(model, reqs, batch_size)
    for (lp, greedy), (ref, ref_greedy) in zip(got, _reference(model, reqs)):
        assert lp == pytest.approx(ref, abs=1e-4) and greedy == ref_greedy


_PROPERTY_MODEL = prepare_for_inference(tiny_gpt("llama-gqa", seed=1, vector_noise=0.1))


def test_a_long_scoring_run_shows_progress_on_stderr(monkeypatch, capsys):
    """Every PROGRESS_EVERY_S seconds a line with the count, rate and ETA; none after the last batch."""
    model = _PROPERTY_MODEL
    reqs = _requests(random.Random(3), model.config.vocab_size, questions=6, shared=0)
    monkeypatch.setattr(scoring, "PROGRESS_EVERY_S", 0.0)
    loglikelihoods(model, reqs, batch_size=2)
    lines = capsys.readouterr().err.strip().splitlines()
    keys = list(dict.fromkeys(tuple(c) for c, _ in reqs))
    contexts = len(keys)
    assert lines and len(lines) == len(scoring._batches(keys, 2)) - 1  # one per batch but the last
    assert all(re.fullmatch(rf"scored [0-9,]+/{contexts} contexts \(\d+%\) \| [0-9.]+/s \| ETA \d+m\d\ds", ln)
               for ln in lines), lines
    monkeypatch.setattr(scoring, "PROGRESS_EVERY_S", 30.0)
    loglikelihoods(model, reqs, batch_size=2)  # a short run: silent
    assert capsys.readouterr().err == ""


def test_a_too_long_pair_keeps_the_end_of_its_context():
    model = prepare_for_inference(tiny_gpt("llama-gqa"))  # block size 64
    ctx, cont = list(range(90)), [5, 6, 7]
    [(lp, _)] = loglikelihoods(model, [(ctx, cont)])
    [(ref, _)] = _reference(model, [(ctx[-(65 - 3):], cont)])
    assert lp == pytest.approx(ref, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# the JSONL and config boundary
# ---------------------------------------------------------------------------------------------
MMLU_LINE = {"question": "2+2?", "answer_a": "3", "answer_b": "4", "answer_c": "5", "answer_d": "6",
             "correct_answer": "B", "topic": "arithmetic"}


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_item_shapes_mmlu_generic_arc_hellaswag():
    assert parse_item(MMLU_LINE, "x").choices == ("3", "4", "5", "6") and parse_item(MMLU_LINE, "x").answer == 1
    generic = parse_item({"question": "q", "choices": ["a", "b", "c"], "answer": 2, "subject": "s_t"}, "x")
    assert (generic.answer, generic.topic) == (2, "s t")
    arc = parse_item({"question": "q", "choices": {"text": ["a", "b"], "label": ["1", "2"]}, "answerKey": "2"}, "x")
    assert arc.answer == 1
    hs = parse_item({"ctx": "A man", "endings": ["runs.", "sits.", "flies.", "eats."], "label": "3"}, "x")
    assert hs.continues and hs.answer == 3


def test_malformed_jsonl_line_is_named(tmp_path):
    f = _write(tmp_path / "q.jsonl", [json.dumps(MMLU_LINE), json.dumps(MMLU_LINE), '{"question": "x",'])
    with pytest.raises(LmforgeError, match=r"q\.jsonl:3: malformed JSON"):
        read_items(f)


def test_choice_count_differing_across_items(tmp_path):
    three = {"question": "q", "choices": ["a", "b", "c"], "answer": 0}
    f = _write(tmp_path / "q.jsonl", [json.dumps(MMLU_LINE), json.dumps(three)])
    with pytest.raises(LmforgeError, match=r"q\.jsonl:2: 3 choices, but the first item has 4"):
        read_items(f)


def test_the_mmlu_asset_reads_as_14042_questions():
    items = read_items(asset("mmlu"))
    assert len(items) == 14042 and len({it.topic for it in items}) == 57


@HYP
@given(record=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
                               st.sampled_from(["question", "choices", "answer", "answer_a", "answer_b", "ctx",
                                                "endings", "label", "answerKey", "correct_answer", "topic"]),
                               kids, max_size=6), max_leaves=12))
def test_any_json_record_is_an_item_or_one_line_error(record):
    try:
        item = parse_item(record, "f.jsonl:7")
    except LmforgeError as e:
        assert str(e).startswith("f.jsonl:7: ") and "\n" not in str(e)
        return
    assert len(item.choices) >= 2 and 0 <= item.answer < len(item.choices) and item.question.strip()


@HYP
@given(lines=st.lists(st.one_of(st.just(json.dumps(MMLU_LINE)), st.text(max_size=20)), min_size=1, max_size=6))
def test_any_file_reads_or_fails_on_one_line(lines, tmp_path_factory):
    f = _write(tmp_path_factory.mktemp("j") / "q.jsonl", lines)
    try:
        items = read_items(f)
    except LmforgeError as e:
        assert "\n" not in str(e) and str(e).startswith(str(f))
        return
    assert len(items) == sum(line == json.dumps(MMLU_LINE) for line in lines)


@HYP
@given(limit=st.one_of(st.none(), st.integers(-3, 5)), subsample=st.one_of(st.none(), st.integers(-3, 5)),
       batch=st.integers(-2, 4), shots=st.integers(-2, 3), task=st.sampled_from(["mmlu", "mc,perplexity", "nope", ""]))
def test_config_checks_every_field_on_one_line(limit, subsample, batch, shots, task):
    bad = ((limit is not None and limit < 1) or (subsample is not None and subsample < 1) or batch < 1 or shots < 0
           or task in ("nope", ""))
    try:
        EvalConfig("m.gguf", task=task, limit=limit, subsample=subsample, batch_size=batch, num_fewshot=shots)
    except LmforgeError as e:
        assert bad and "\n" not in str(e)
        return
    assert not bad


@pytest.mark.parametrize("args, message", [
    (["--task", "hellaswag"], "error: unknown task 'hellaswag': choose from mmlu, mc, perplexity, generation, judge"),
    (["--limit", "0"], "error: --limit must be at least 1, got 0"),
    (["--subsample", "0"], "error: --subsample must be at least 1, got 0"),
])
def test_bad_flags_are_one_line_before_loading(args, message):
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", "no-such-model.gguf", *args])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# perplexity windows
# ---------------------------------------------------------------------------------------------
@HYP
@given(n=st.integers(0, 60), window=st.integers(1, 20), data=st.data())
def test_windows_score_every_token_once_with_its_true_context(n, window, data):
    stride = data.draw(st.integers(1, window))
    tokens = list(range(100, 100 + n))
    reqs = windows(tokens, 7, window, stride)
    assert [t for _, cont in reqs for t in cont] == tokens
    seq = [7, *tokens]
    done = 0
    for ctx, cont in reqs:
        assert ctx and len(ctx) + len(cont) - 1 <= window
        assert ctx == seq[done + 1 - len(ctx):done + 1]  # what really precedes the scored tokens
        done += len(cont)


# ---------------------------------------------------------------------------------------------
# end to end on a tiny model with SmolLM2's tokenizer: the CLI, and lm-eval
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(lmforge checkpoint, its `--to hf` export) of a tiny random model with SmolLM2's tokenizer."""
    from lmforge.checkpoint import save_checkpoint
    from lmforge.conversion import convert_source
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(asset("smollm2-135m-instruct"))
    model = tiny_gpt("llama-gqa", vocab_size=tok.vocab_size, block_size=256, std=0.05, n_embd=32, n_head=4,
                     tie_embeddings=True, eos_token_id=tok.eos_id)
    root = tmp_path_factory.mktemp("tiny-eval")
    save_checkpoint(root / "ck", model, model.config, tok)
    convert_source(str(root / "ck"), str(root / "hf"), to="hf")
    return root / "ck", root / "hf"


@pytest.fixture(scope="module")
def mmlu12(tmp_path_factory):
    """12 MMLU questions of three topics (the asset's lines)."""
    lines = Path(asset("mmlu")).read_text().splitlines()
    picked = [ln for ln in lines[1:] if json.loads(ln)["topic"] in ("astronomy", "virology", "marketing")]
    rng = random.Random(0)
    f = tmp_path_factory.mktemp("mmlu") / "mmlu12.jsonl"
    f.write_text("\n".join(rng.sample(picked, 12)) + "\n")
    return f


def test_cli_writes_table_json_and_chart_and_compare(tiny, mmlu12, tmp_path, capsys):
    ck, _ = tiny
    for name, extra in (("a", []), ("b", ["--scoring", "options", "--num_fewshot", "2"])):
        cli.main(["evaluate", str(ck), "--task", "mmlu,mc", "--data", str(mmlu12), "--out", str(tmp_path / f"{name}.json"),
                  "--batch_size", "4", *extra])
    out = capsys.readouterr().out
    assert "mmlu  acc " in out and "acc_norm" in out
    report = json.loads((tmp_path / "b.json").read_text())
    assert set(report["results"]) == {"mmlu", "mc"} and report["lmforge_version"] and len(report["model"]["sha256"]) == 64
    mmlu = report["results"]["mmlu"]
    assert mmlu["n"] == 12 and set(mmlu["breakdown"]) == {"astronomy", "virology", "marketing"}
    assert mmlu["prompt_format"]["example"].count("\nAnswer:") == 3  # two shots and the question
    assert (tmp_path / "b.png").stat().st_size > 1000
    cli.main(["evaluate", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "c.png")])
    table = capsys.readouterr().out
    assert "mmlu/acc" in table and "mmlu/acc_norm" in table and (tmp_path / "c.png").is_file()
    with pytest.raises(SystemExit, match=r"nope\.json: file not found"):
        cli.main(["evaluate", "compare", str(tmp_path / "a.json"), str(tmp_path / "nope.json")])


def test_perplexity_equals_a_plain_forward(tiny, tmp_path):
    from lmforge.api import LLM
    from lmforge.evaluate.perplexity import perplexity

    ck, _ = tiny
    llm = LLM.load(ck)
    text = "It is a truth universally acknowledged, that a single man in possession of a good fortune."
    f = tmp_path / "t.txt"
    f.write_text(text)
    ids = [llm.tokenizer.eos_id, *llm.tokenizer.encode(text, bos=False)]
    [(ll, _)] = _reference(llm.model, [(ids[:1], ids[1:])])
    for window, stride in ((None, None), (8, 3)):
        res = perplexity(llm, EvalConfig(str(ck), task="perplexity", data=str(f), window=window, stride=stride))
        nll = res["metrics"]["perplexity"]["value"]
        assert nll == pytest.approx(torch.tensor(-ll / (len(ids) - 1)).exp().item(), rel=1e-4) if window is None \
            else nll > 1.0
        assert res["metrics"]["bits_per_byte"]["value"] > 0


def _lm_eval_tasks(folder: Path, mmlu: Path, texts: Path) -> Path:
    """Local lm-eval tasks: MMLU (letter prompt), a rolling log-likelihood and a generation task."""
    import yaml

    from lmforge.evaluate.lm_eval_model import write_mmlu_task

    write_mmlu_task(folder, mmlu, "mmlu_local")
    common = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(texts)}}, "test_split": "test"}
    (folder / "roll.yaml").write_text(yaml.safe_dump({
        "task": "roll_local", **common, "output_type": "loglikelihood_rolling", "doc_to_text": "",
        "doc_to_target": "{{text}}", "metric_list": [{"metric": "word_perplexity"}]}))
    (folder / "gen.yaml").write_text(yaml.safe_dump({
        "task": "gen_local", **common, "output_type": "generate_until", "doc_to_text": "{{text}}",
        "doc_to_target": "x", "generation_kwargs": {"until": ["\n"], "max_gen_toks": 6, "do_sample": False},
        "metric_list": [{"metric": "exact_match"}]}))
    return folder


def test_lm_eval_adapter_and_lmforge_equal_lm_evals_hf_backend(tiny, mmlu12, tmp_path):
    """Offline, on a local MMLU task file: lm-eval's own `hf` backend on our HF export, lm-eval through
    our adapter, and `lmforge evaluate` give the same log-likelihoods, item for item."""
    pytest.importorskip("lm_eval")
    from lmforge.api import LLM
    from lmforge.evaluate.lm_eval_model import run_lm_eval
    from lmforge.evaluate.multiple_choice import evaluate_items

    ck, hf = tiny
    tasks = _lm_eval_tasks(tmp_path / "tasks", mmlu12, tmp_path / "unused.jsonl")
    theirs, _ = run_lm_eval("hf", f"pretrained={hf},dtype=float32", tasks, "mmlu_local", batch_size=4)
    ours, _ = run_lm_eval("lmforge", f"source={ck}", tasks, "mmlu_local", batch_size=4)
    assert len(theirs) == len(ours) == 12
    for a, b in zip(theirs, ours):
        assert [float(r[0]) for r in b["resps"]] == pytest.approx([float(r[0]) for r in a["resps"]], abs=1e-4)
    llm = LLM.load(ck)
    res = evaluate_items(llm, read_items(mmlu12), EvalConfig(str(ck), data=str(mmlu12), batch_size=4), "mmlu")
    for a, p in zip(theirs, res["items"]):
        assert p["loglikelihoods"] == pytest.approx([float(r[0]) for r in a["resps"]], abs=1e-4)


@pytest.mark.slow
def test_lm_eval_adapter_rolling_and_generation_equal_the_hf_backend(tiny, tmp_path):
    """loglikelihood_rolling (texts longer than the block size) and generate_until (greedy, cut at
    the `until` string) through our adapter equal lm-eval's `hf` backend on our HF export."""
    pytest.importorskip("lm_eval")
    from lmforge.evaluate.lm_eval_model import run_lm_eval

    ck, hf = tiny
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                             ["Once upon a time", "The cat sat on the mat. " * 60, "Paris is the capital of"]))
    tasks = _lm_eval_tasks(tmp_path / "tasks", tmp_path / "unused.jsonl", texts)
    for task in ("roll_local", "gen_local"):
        theirs, _ = run_lm_eval("hf", f"pretrained={hf},dtype=float32", tasks, task, batch_size=4)
        ours, _ = run_lm_eval("lmforge", f"source={ck}", tasks, task, batch_size=4)
        if task == "roll_local":
            assert [float(d["resps"][0]) for d in ours] == pytest.approx([float(d["resps"][0]) for d in theirs], abs=1e-3)
        else:
            assert [d["resps"] for d in ours] == [d["resps"] for d in theirs]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~10 min on 2 shared cores: three scorers over 200 questions
def test_smollm2_mmlu_200_agrees_with_lm_eval_item_for_item(tmp_path):
    """SmolLM2-135M-Instruct on the same 200 MMLU items (a seeded subsample of the asset, MMLU's
    letter prompt): `lmforge evaluate` == lm-eval's `hf` backend on our `--to hf` export, item for
    item (at most 1 differing item, from near ties), and lm-eval through our adapter == both."""
    pytest.importorskip("lm_eval")
    from lmforge.api import LLM
    from lmforge.conversion import convert_source
    from lmforge.evaluate.lm_eval_model import run_lm_eval, write_mmlu_task
    from lmforge.evaluate.multiple_choice import evaluate_items, is_header_row, select

    gguf = str(asset("smollm2-135m-instruct"))
    lines = [ln for ln in Path(asset("mmlu")).read_text().splitlines() if not is_header_row(json.loads(ln))]
    data = tmp_path / "mmlu200.jsonl"
    data.write_text("".join(lines[i] + "\n" for i in select(len(lines), None, 200, seed=0)))
    write_mmlu_task(tmp_path / "tasks", data, "mmlu200")
    convert_source(gguf, str(tmp_path / "hf"), to="hf")

    res = evaluate_items(LLM.load(gguf), read_items(data), EvalConfig(gguf, data=str(data)), "mmlu")
    ours = [p["pred"] for p in res["items"]]

    def letters(docs):
        return [max(range(4), key=lambda i, d=d: float(d["resps"][i][0])) for d in docs]

    hf = letters(run_lm_eval("hf", f"pretrained={tmp_path / 'hf'},dtype=float32", tmp_path / "tasks", "mmlu200",
                             batch_size=32)[0])
    adapter = letters(run_lm_eval("lmforge", f"source={gguf}", tmp_path / "tasks", "mmlu200", batch_size=32)[0])
    assert len(ours) == len(hf) == len(adapter) == 200
    assert sum(a != b for a, b in zip(ours, hf)) <= 1
    assert sum(a != b for a, b in zip(adapter, hf)) <= 1 and sum(a != b for a, b in zip(adapter, ours)) <= 1
