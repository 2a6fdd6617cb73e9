"""lmforge.align: the DPO value by hand, the reference variants agree, the recipe on the shared loop,
bad input (one line each, before training), resume after SIGKILL, DDP, pairs from a served model + judge."""

from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch
from helpers import kill_and_resume, tiny_gpt
from hypothesis import given, settings
from hypothesis import strategies as st
from test_finetune import _cli_error, train_losses
from test_finetune import one_thread, tiny_ckpt, tok  # noqa: F401 - the shared fixtures

from lmforge.align import align, losses
from lmforge.align.recipe import AlignConfig
from lmforge.align.reference import Reference, cached_reference_logps, sequence_logps
from lmforge.data.pairs import EncodedRecord, PairsDataError, check_record, collate_pairs, encode_records
from lmforge.lora import LoRASettings, apply_lora

QUIET = {"interval": 1, "tensorboard": False, "plot": False}


def align_cfg(init, out, method="dpo", name="lora", **kw) -> AlignConfig:
    train = {"max_steps": 4, "global_batch_size": 4, "micro_batch_size": 2, "lr": 1e-2, "warmup_steps": 1,
             **kw.pop("train", {})}
    data = {"train_file": "tasks", "n_train": 60, "n_test": 15, "max_seq_length": 128, "test_max_new_tokens": 4,
            **kw.pop("data", {})}
    return AlignConfig(init=str(init), out_dir=str(out), method=method, data=data,
                       trainable={"name": name, "lora": {"targets": "all-linear"}, **kw.pop("trainable", {})},
                       train=train, eval={"interval": 2, "sample_tokens": 0, **kw.pop("eval", {})}, log=kw.pop("log", QUIET),
                       device="cpu", precision="fp32", **kw)


# ---------------------------------------------------------------------------------------------
# the losses and the reference
# ---------------------------------------------------------------------------------------------
def test_dpo_by_hand_on_two_pairs():
    # pair 1: policy chosen -2, rejected -5; reference -3, -4 -> delta = (-2 + 3) - (-5 + 4) = 2
    # pair 2: policy chosen -6, rejected -1; reference -4, -2 -> delta = (-6 + 4) - (-1 + 2) = -3
    # beta 0.5: -log sigmoid(1) = 0.313262; -log sigmoid(-1.5) = 1.701413; mean 1.007338
    # label smoothing 0.1: 0.9 * 0.313262 + 0.1 * 1.313262 = 0.413262; 0.9 * 1.701413 + 0.1 * 0.201413 = 1.551413
    c, r = torch.tensor([-2.0, -6.0]), torch.tensor([-5.0, -1.0])
    rc, rr = torch.tensor([-3.0, -4.0]), torch.tensor([-4.0, -2.0])
    assert float(losses.dpo_loss(c, r, rc, rr, 0.5).mean()) == pytest.approx(1.007338, abs=1e-6)
    got = losses.dpo_loss(c, r, rc, rr, 0.5, 0.1)
    assert got.tolist() == pytest.approx([0.413262, 1.551413], abs=1e-6)
    assert math.log(2) == pytest.approx(float(losses.dpo_loss(c, r, c, r, 0.5)[0]))  # policy == reference


def _tiny_pairs(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)

    def ids(k):
        return torch.randint(3, 90, (k,), generator=g).tolist()

    return [EncodedRecord(ids(4 + i % 3), [ids(2 + i % 2), ids(3)]) for i in range(n)]


def test_cached_reference_equals_on_the_fly(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path))
    policy, ref = tiny_gpt("llama-gqa", seed=1), tiny_gpt("llama-gqa", seed=2)
    pairs = _tiny_pairs()
    batch = collate_pairs(pairs, 0)
    rows = [(p.prompt, p.completions[0]) for p in pairs] + [(p.prompt, p.completions[1]) for p in pairs]
    table, hit = cached_reference_logps(ref, rows, "k", 0, batch_size=4)
    assert not hit and (tmp_path / "align-ref" / "k.pt").is_file()
    again, hit = cached_reference_logps(tiny_gpt("llama-gqa", seed=3), rows, "k", 0)  # the file, not the model
    assert hit and torch.equal(again, table)
    lp, _ = sequence_logps(policy, batch["ids"], batch["targets"])
    fly = Reference("copy", ref)(policy, batch)
    cached = Reference("copy", None)(policy, {**batch, "ref": table})
    torch.testing.assert_close(cached, fly, rtol=0, atol=1e-5)
    n = len(pairs)
    torch.testing.assert_close(losses.dpo_loss(lp[:n], lp[n:], cached[:n], cached[n:]),
                               losses.dpo_loss(lp[:n], lp[n:], fly[:n], fly[n:]), rtol=0, atol=1e-6)


def test_lora_disabled_reference_equals_frozen_copy():
    base = tiny_gpt("llama-gqa", seed=4)
    frozen = copy.deepcopy(base)
    apply_lora(base, LoRASettings(r=4, targets="all-linear"))
    with torch.no_grad():  # trained-looking adapters: the policy differs from its base
        for name, p in base.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    batch = collate_pairs(_tiny_pairs(4, 5), 0)
    via_lora = Reference("lora")(base, batch)
    via_copy = Reference("copy", frozen)(base, batch)
    torch.testing.assert_close(via_lora, via_copy, rtol=0, atol=1e-5)
    policy = sequence_logps(base, batch["ids"], batch["targets"])[0]
    assert (policy - via_copy).abs().max() > 1e-2  # the adapters were really off


def test_sequence_logps_score_the_completion_only():
    model = tiny_gpt("llama-gqa", seed=6)
    p = _tiny_pairs(1, 7)[0]
    batch = collate_pairs([p], 0)
    with torch.no_grad():
        lp, n = sequence_logps(model, batch["ids"], batch["targets"])
        full = torch.tensor([p.prompt + p.completions[0]])
        logp = model(full).log_softmax(-1)[0]
        k = len(p.prompt)
        by_hand = sum(float(logp[k - 1 + i, t]) for i, t in enumerate(p.completions[0]))
    assert float(lp[0]) == pytest.approx(by_hand, abs=1e-5) and int(n[0]) == len(p.completions[0])


# ---------------------------------------------------------------------------------------------
# data: checks and truncation
# ---------------------------------------------------------------------------------------------
_VALUE = st.one_of(st.none(), st.integers(), st.text(max_size=8), st.booleans(),
                   st.lists(st.dictionaries(st.sampled_from(["role", "content"]),
                                            st.one_of(st.text(max_size=6), st.sampled_from(["user", "assistant"]))),
                            max_size=2))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected", "completion", "label", "x"]), _VALUE,
                       max_size=5), st.booleans())
def test_any_record_is_accepted_or_one_clear_line(rec, unpaired):
    try:
        out = check_record(rec, "f.jsonl:3", unpaired)
    except PairsDataError as e:
        msg = str(e)
        assert msg.startswith("f.jsonl:3: ") and "\n" not in msg
        return
    assert set(out) == ({"prompt", "completion", "label"} if unpaired else {"prompt", "chosen", "rejected"})
    assert unpaired or out["chosen"] != out["rejected"]


def test_long_prompts_are_cut_from_the_start_and_reported(tok):
    recs = [{"prompt": "word " * 200, "chosen": "yes", "rejected": "no"}, {"prompt": "hi", "chosen": "a", "rejected": "b"}]
    enc, report = encode_records(recs, tok, max_len=50)
    assert report.truncated == 1 and "1 prompts truncated" in str(report)
    full = tok.encode("word " * 200)
    assert enc[0].prompt == full[len(full) - len(enc[0].prompt):]  # the end of the prompt is kept
    assert len(enc[0].prompt) + max(map(len, enc[0].completions)) == 50
    with pytest.raises(PairsDataError, match="record 1: a completion of .* leaves no room"):
        encode_records([{"prompt": "hi", "chosen": "word " * 80, "rejected": "no"}], tok, max_len=50)


def test_chat_pairs_render_with_the_template(tok):
    from lmforge.prompts import encode_chat

    msgs = [{"role": "user", "content": "Capital of France?"}]
    rec = {"prompt": msgs, "chosen": [{"role": "assistant", "content": "Paris"}], "rejected": "Lyon"}
    (enc,), _ = encode_records([check_record(rec, "x")], tok)
    whole = encode_chat(msgs + [{"role": "assistant", "content": "Paris"}], tok, add_generation_prompt=False)
    assert enc.prompt + enc.completions[0] == whole
    assert enc.prompt == encode_chat(msgs, tok, add_generation_prompt=True)


# ---------------------------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,name,reference", [("dpo", "lora", "cached"), ("ipo", "full", "copy"),
                                                   ("simpo", "lora", "auto"), ("orpo", "last_n", "auto")])
def test_recipe_runs_and_logs_the_preference_metrics(tiny_ckpt, tmp_path, monkeypatch, method, name, reference):
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))
    s = align(align_cfg(tiny_ckpt, tmp_path / "run", method, name, reference=reference,
                        log={**QUIET, "plot": True}, train={"lr": 3e-2}))
    rep = s["report"]
    assert {"heldout_before", "heldout_after", "exact_match_before", "exact_match_after"} <= set(rep)
    assert rep["heldout_after"]["val_kl"] > 0
    header = (tmp_path / "run" / "log.csv").read_text().splitlines()[0].split(",")
    assert {"reward_margin", "reward_acc", "val_pref_acc", "val_kl"} <= set(header)
    assert (tmp_path / "run" / "align.png").stat().st_size > 1000
    if reference != "auto":  # the untrained policy is its reference: every pair a tie, counted half
        assert rep["heldout_before"]["val_reward_acc"] == 0.5
    from lmforge.report import recipe_stage

    shown = {m["name"]: m for m in recipe_stage(tmp_path / "run")["metrics"]}  # the run folder renders alone
    assert shown["preference accuracy (implicit reward, held-out)"]["after"] == round(100 * rep["heldout_after"]["val_reward_acc"], 4)


def test_kto_recipe_on_unpaired_records(tiny_ckpt, tmp_path):
    path = tmp_path / "kto.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Q{i}: 2+{i}=", "completion": str(2 + i if i % 2 else i),
                                        "label": bool(i % 2)}) + "\n" for i in range(40)))
    s = align(align_cfg(tiny_ckpt, tmp_path / "kto", "kto", data={"train_file": str(path)}))
    assert s["steps"] == 4 and "val_kl" in s["report"]["heldout_after"]


# ---------------------------------------------------------------------------------------------
# bad input: one clear line each, before training (through the CLI)
# ---------------------------------------------------------------------------------------------
def test_bad_input_is_one_line_before_training(tiny_ckpt, tmp_path, capsys):
    base = ["align", "--init", str(tiny_ckpt), "--out_dir", str(tmp_path / "o"), "--device", "cpu"]

    def pairs_file(name, *rows):
        p = tmp_path / name
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(p)

    ok = {"prompt": "a", "chosen": "b", "rejected": "c"}
    f = pairs_file("missing.jsonl", ok, ok, {"prompt": "a", "rejected": "c"})
    assert "missing.jsonl:3: missing key 'chosen'" in _cli_error(capsys, *base, "--data.train_file", f)
    f = pairs_file("same.jsonl", ok, {"prompt": "a", "chosen": "b", "rejected": "b"})
    assert "same.jsonl:2: 'chosen' and 'rejected' are the same" in _cli_error(capsys, *base, "--data.train_file", f)
    f = pairs_file("empty.jsonl", {"prompt": " ", "chosen": "b", "rejected": "c"})
    assert "empty.jsonl:1: 'prompt' is empty" in _cli_error(capsys, *base, "--data.train_file", f)
    msg = _cli_error(capsys, *base, "--data.train_file", "tasks", "--method", "ppo")
    assert "method='ppo' is not one of dpo, ipo, simpo, orpo, kto" in msg
    assert "loss.beta must be > 0, got 0.0" in _cli_error(capsys, *base, "--data.train_file", "tasks", "--loss.beta", "0")
    assert "loss.beta must be > 0" in _cli_error(capsys, *base, "--data.train_file", "tasks", "--loss.beta", "-1")
    assert not (tmp_path / "o" / "log.csv").exists()  # nothing trained


def test_shipped_yaml_parses_and_the_verb_mirrors_the_config():
    import dataclasses
    import inspect

    from jsonargparse import ActionConfigFile, ArgumentParser

    from lmforge.configs import named_configs
    from lmforge.verbs import align as verb

    assert set(inspect.signature(verb.align).parameters) == {f.name for f in dataclasses.fields(AlignConfig)}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(verb.align)
    ns = parser.parse_args(["--config", str(named_configs()["align/dpo-smollm2"])])
    assert ns.init == "smollm2-135m-instruct" and ns.method == "dpo"


def test_data_pairs_verb(tmp_path, capsys):
    from lmforge.cli import main
    from lmforge.data.tasks import check

    main(["data", "pairs", "--out", str(tmp_path), "--n_train", "45", "--n_test", "15"])
    assert "wrote 45 train and 15 test pairs" in capsys.readouterr().out
    rows = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 45 and len({r["family"] for r in rows}) == 15
    for r in rows:  # chosen passes the checker, rejected does not
        assert check(r["family"], r["chosen"], r["chosen"]) and not check(r["family"], r["rejected"], r["chosen"])


# ---------------------------------------------------------------------------------------------
# resume, DDP, the judge
# ---------------------------------------------------------------------------------------------
KILL_SCRIPT = """
import os, signal, sys
from lmforge.training.monitor import RunLog

log = RunLog.log
def log_then_die(self, row):
    log(self, row)
    if os.environ.get("DIE_AT") and str(row["step"]) == os.environ["DIE_AT"] and row.get("train_loss") is not None:
        os.kill(os.getpid(), signal.SIGKILL)  # after the step-3 checkpoint and step 4's log line
RunLog.log = log_then_die
from lmforge.cli import main
main(sys.argv[1:])
"""


def test_resume_after_sigkill_equals_uninterrupted(tiny_ckpt, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)

    def args(out, *extra):
        return ["align", "--method", "dpo", "--init", str(tiny_ckpt), "--out_dir", str(out), "--data.train_file",
                "tasks", "--data.n_train", "60", "--data.n_test", "8", "--data.exact_match", "false",
                "--data.max_seq_length", "128", "--trainable.name", "lora", "--trainable.lora.dropout", "0.1",
                "--train.max_steps", "6", "--train.global_batch_size", "4", "--train.micro_batch_size", "2",
                "--train.lr", "0.01", "--train.warmup_steps", "1", "--eval.interval", "3", "--eval.sample_tokens",
                "0", "--log.interval", "1", "--log.tensorboard", "false", "--log.plot", "false", "--device", "cpu",
                "--precision", "fp32", *extra]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMFORGE_HOME": str(tmp_path / "home")}
    full, out = kill_and_resume(script, args, env, tmp_path)
    a, b = train_losses(full), train_losses(out)
    assert list(a) == list(b) == [1, 2, 3, 4, 5, 6]
    assert list(b.values()) == pytest.approx(list(a.values()), rel=1e-6, abs=1e-6)


@pytest.mark.slow
def test_two_processes_match_one(tiny_ckpt, tmp_path):
    import numpy as np

    one, two = tmp_path / "one", tmp_path / "two"
    kw = dict(data={"exact_match": False}, reference="cached", train={"max_steps": 6})
    align(align_cfg(tiny_ckpt, one, **kw))
    s = align(align_cfg(tiny_ckpt, two, devices=2, **kw))
    assert s["steps"] == 6
    a, b = train_losses(one), train_losses(two)
    assert list(a) == list(b)
    np.testing.assert_allclose(list(b.values()), list(a.values()), rtol=1e-4)


@pytest.mark.slow
def test_judged_pairs_from_a_real_server(tiny_ckpt):
    pytest.importorskip("openai")
    from lmforge.api import LLM
    from lmforge.data.pairs import judged_pairs, rank_with_judge
    from lmforge.serve.server import Server

    llm = LLM.load(tiny_ckpt, device="cpu")
    with Server(llm, max_batch_size=2) as srv:
        url = srv.url + "/v1"
        choice = rank_with_judge(url, "tiny", "What is 2+2?", "4", "5")
        assert choice in (0, 1)
        made = judged_pairs(url, "tiny", ["Say something:", "Count:"], max_tokens=6)
    for p in made:
        assert set(p) == {"prompt", "chosen", "rejected"} and p["chosen"] != p["rejected"]


def test_rpo_alpha_adds_the_chosen_nll():
    """loss.rpo_alpha adds α x each chosen completion's token-mean NLL to the DPO loss (TRL's rpo_alpha)."""
    import dataclasses

    from lmforge.align.recipe import AlignConfig, LossArgs, batch_terms

    policy = tiny_gpt("llama-gqa", seed=6)
    batch = collate_pairs(_tiny_pairs(4, 7), 0)
    ref = Reference("copy", tiny_gpt("llama-gqa", seed=8))
    cfg = AlignConfig(init="x", data={"train_file": "tasks"})
    plain = batch_terms(cfg, policy, batch, ref)["loss"]
    rpo = batch_terms(dataclasses.replace(cfg, loss=LossArgs(rpo_alpha=0.5)), policy, batch, ref)["loss"]
    lp, n = sequence_logps(policy, batch["ids"], batch["targets"])
    torch.testing.assert_close(rpo - plain, 0.5 * (-lp[:4] / n[:4]), rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="rpo_alpha must be >= 0"):
        LossArgs(rpo_alpha=-1)
