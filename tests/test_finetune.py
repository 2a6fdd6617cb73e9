"""lmforge.finetune: classification and SFT recipes on the shared loop, the methods, resume, bad input."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import kill_and_resume, asset, tiny_gpt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.errors import LmforgeError
from lmforge.finetune import classify, sft
from lmforge.finetune.classification import ClassifyConfig, class_logits, collate, encode_texts
from lmforge.finetune.instruction import SFTConfig

QUIET = {"interval": 1, "tensorboard": False, "plot": False}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared machine: one thread is fastest
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    from lmforge.tokenizer import Tokenizer

    return Tokenizer.from_gguf(asset("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def tiny_ckpt(tok, tmp_path_factory) -> Path:
    """A tiny random Llama-style checkpoint with SmolLM2's tokenizer (and its chat template)."""
    from lmforge.checkpoint import save_checkpoint

    model = tiny_gpt("llama-gqa", vocab_size=tok.vocab_size, block_size=128, std=0.02, n_embd=32, n_head=4)
    out = tmp_path_factory.mktemp("tiny_ckpt")
    save_checkpoint(out, model, model.config, tok)
    return out


@pytest.fixture(scope="module")
def spam_like(tmp_path_factory) -> Path:
    """Synthetic two-class texts: the class is decided by one keyword among filler words."""
    r = random.Random(0)
    filler = "the a of and to in is it you that he was for on are with as".split()
    path = tmp_path_factory.mktemp("syn") / "syn.jsonl"
    with open(path, "w") as f:
        for i in range(400):
            words = [r.choice(filler) for _ in range(r.randint(3, 10))]
            words.insert(r.randint(0, len(words)), "money" if i % 2 else "hello")
            f.write(json.dumps({"text": " ".join(words) + f" {i}", "label": ["ham", "spam"][i % 2]}) + "\n")
    return path


def classify_cfg(init, data_file, out, name="full", **kw) -> ClassifyConfig:
    train = {"max_steps": 40, "global_batch_size": 16, "micro_batch_size": 8, "lr": 3e-3, "warmup_steps": 4,
             **kw.pop("train", {})}
    return ClassifyConfig(init=str(init), out_dir=str(out), data={"file": str(data_file), **kw.pop("data", {})},
                          method={"name": name, **kw.pop("method", {})}, train=train,
                          eval={"interval": 20, **kw.pop("eval", {})}, log=QUIET, device="cpu", precision="fp32", **kw)


def sft_cfg(init, out, name="lora", **kw) -> SFTConfig:
    train = {"max_steps": 6, "global_batch_size": 4, "micro_batch_size": 2, "lr": 3e-3, "warmup_steps": 1,
             **kw.pop("train", {})}
    data = {"train_file": "tasks", "n_train": 120, "n_test": 15, "max_seq_length": 128, "test_max_new_tokens": 4,
            **kw.pop("data", {})}
    return SFTConfig(init=str(init), out_dir=str(out), data=data,
                     method={"name": name, "lora": {"targets": "all-linear"}, **kw.pop("method", {})}, train=train,
                     eval={"interval": 3, "sample_tokens": 4, **kw.pop("eval", {})}, log=QUIET, device="cpu",
                     precision="fp32", **kw)


def train_losses(out: Path) -> dict[int, float]:
    with open(out / "log.csv") as f:
        return {int(r["step"]): float(r["train_loss"]) for r in csv.DictReader(f) if r["train_loss"]}


# ---------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------
def test_classifier_learns_and_its_checkpoint_serves_every_way(tiny_ckpt, spam_like, tmp_path):
    from lmforge.api import LLM

    s = classify(classify_cfg(tiny_ckpt, spam_like, tmp_path / "run"))
    assert s["test"]["accuracy"] > 0.95
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["per_class"]) == {"ham", "spam"} and report["sizes"] == {"train": 280, "val": 40, "test": 80}
    assert report["accuracy_before"] < 0.9  # the untrained head, on the same test texts
    assert (tmp_path / "run" / "confusion.png").stat().st_size > 1000
    final = tmp_path / "run" / "final"
    llm = LLM.load(final, device="cpu")
    assert llm.model.lm_head.out_features == 2
    got = llm.classify(["you hello the a", "money money the of"])
    assert [g["label"] for g in got] == ["ham", "spam"]
    assert abs(sum(got[0]["scores"].values()) - 1) < 1e-5
    # the CLI verb prints the same labels
    texts = tmp_path / "texts.txt"
    texts.write_text("the hello a\nmoney is it\n")
    p = subprocess.run([sys.executable, "-m", "lmforge", "classify", str(final), "--file", str(texts)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert [ln.split("\t")[0] for ln in p.stdout.splitlines()] == ["ham", "spam"]


def test_padding_side_does_not_change_logits(tok):
    model = tiny_gpt("llama-gqa", vocab_size=tok.vocab_size, n_embd=32)
    model.lm_head = torch.nn.Linear(32, 3)
    rows = encode_texts(tok, ["short", "a somewhat longer text here", "mid length one"], 64)
    with torch.no_grad():
        alone = torch.cat([class_logits(model, collate([r], 0)) for r in rows])
        right = class_logits(model, collate(rows, 0, "right"))
        left = class_logits(model, collate(rows, 0, "left"))
    torch.testing.assert_close(right, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(left, alone, rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.integers(1, 95), min_size=1, max_size=12), min_size=1, max_size=5),
       st.sampled_from(["left", "right"]), st.integers(0, 95))
def test_any_rows_any_padding_give_each_rows_own_logits(rows, side, pad):
    model = tiny_gpt("llama-gqa", n_embd=32)
    model.lm_head = torch.nn.Linear(32, 2)
    with torch.no_grad():
        alone = torch.cat([class_logits(model, collate([r], pad)) for r in rows])
        batched = class_logits(model, collate(rows, pad, side))
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["last_n", "head"])
def test_frozen_parameters_are_bit_identical_after_training(tiny_ckpt, spam_like, tmp_path, method):
    from lmforge.checkpoint import load_lmforge_checkpoint

    classify(classify_cfg(tiny_ckpt, spam_like, tmp_path / method, method, method={"last_n": 1},
                          train={"max_steps": 6}, eval={"interval": 6}))
    _, before = load_lmforge_checkpoint(tiny_ckpt)
    _, after = load_lmforge_checkpoint(tmp_path / method / "final")
    trained = ["lm_head."] + (["layers.1.", "norm."] if method == "last_n" else [])
    for k, v in before.items():
        if any(k.startswith(p) for p in trained):
            continue
        assert torch.equal(after[k], v), k
    if method == "last_n":
        assert not torch.equal(after["layers.1.mlp.up_proj.weight"], before["layers.1.mlp.up_proj.weight"])


# ---------------------------------------------------------------------------------------------
# SFT
# ---------------------------------------------------------------------------------------------
def test_sft_lora_writes_merged_model_and_peft_adapter(tiny_ckpt, tmp_path):
    from lmforge.api import LLM
    from lmforge.convert.peft import load_peft_adapter
    from lmforge.lora import merge_lora

    s = sft(sft_cfg(tiny_ckpt, tmp_path / "run", train={"lr": 3e-2}))
    assert s["val_loss"] < s["initial_val_loss"]
    assert {"before", "after"} <= set(s["exact_match"]) and len(s["exact_match"]["after"]) >= 13
    assert (tmp_path / "run" / "exact_match.png").stat().st_size > 1000  # the per-family chart
    final = tmp_path / "run" / "final"
    assert (final / "adapter" / "adapter_config.json").is_file() and (final / "adapter" / "adapter_model.safetensors").is_file()
    merged = LLM.load(final, device="cpu", dtype="float32").model
    base = LLM.load(tiny_ckpt, device="cpu", dtype="float32")
    load_peft_adapter(base.model, base.config, final / "adapter")
    ids = torch.tensor([[1, 2, 3, 400, 5000]])
    with torch.no_grad():
        torch.testing.assert_close(merge_lora(base.model)(ids), merged(ids), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(LLM.load(tiny_ckpt, device="cpu", dtype="float32").model(ids), merged(ids))


def test_sft_adapter_loads_in_peft_on_the_hf_export(tiny_ckpt, tmp_path):
    """A finetune run's adapter dir, loaded by `peft.PeftModel.from_pretrained` on the `--to hf` export of
    the base, gives the logits of the run's merged model."""
    pytest.importorskip("peft")
    import peft
    import transformers

    from lmforge.api import LLM
    from lmforge.cli import main

    sft(sft_cfg(tiny_ckpt, tmp_path / "run", data={"n_test": 0}, eval={"sample_tokens": 0}, train={"lr": 3e-2},
                method={"lora": {"r": 4, "alpha": 8, "targets": "all-linear"}}))
    final = tmp_path / "run" / "final"
    assert main(["convert", str(tiny_ckpt), "--to", "hf", "--out", str(tmp_path / "hf")]) in (0, None)
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32).eval()
    theirs = peft.PeftModel.from_pretrained(base, final / "adapter").eval()
    merged = LLM.load(final, device="cpu", dtype="float32").model
    ids = torch.tensor([[1, 2, 3, 400, 5000, 77]])
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, merged(ids), rtol=1e-4, atol=1e-4)
        with theirs.disable_adapter():  # the adapter is what makes the difference
            assert not torch.allclose(theirs(ids).logits, merged(ids), atol=1e-3)


def test_sft_int8_base_lora_trains(tiny_ckpt, tmp_path):
    s = sft(sft_cfg(tiny_ckpt, tmp_path / "q", method={"quantize": "int8"}, train={"lr": 3e-2}))
    assert s["val_loss"] < s["initial_val_loss"]


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from lmforge.training.monitor import RunLog

    log = RunLog.log
    def log_then_die(self, row):
        log(self, row)
        if os.environ.get("DIE_AT") and str(row["step"]) == os.environ["DIE_AT"] and row.get("train_loss") is not None:
            os.kill(os.getpid(), signal.SIGKILL)  # after the step-3 checkpoint and step 4's log line
    RunLog.log = log_then_die
    from lmforge.cli import main
    main(["finetune", "sft", *sys.argv[1:]])
""")


def test_lora_resume_after_sigkill_equals_uninterrupted(tiny_ckpt, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)

    def args(out, *extra):
        return ["--init", str(tiny_ckpt), "--out_dir", str(out), "--data.train_file", "tasks", "--data.n_train", "120",
                "--data.n_test", "0", "--data.max_seq_length", "128", "--method.name", "lora",
                "--method.lora.dropout", "0.1", "--activation_checkpointing", "mlp",  # (dropout replayed)
                "--train.max_steps", "6", "--train.global_batch_size", "4",
                "--train.micro_batch_size", "2", "--train.lr", "0.01", "--train.warmup_steps", "1",
                "--eval.interval", "3", "--eval.sample_tokens", "0", "--log.interval", "1", "--log.tensorboard",
                "false", "--log.plot", "false", "--device", "cpu", "--precision", "fp32", *extra]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, out = kill_and_resume(script, args, env, tmp_path)
    a, b = train_losses(full), train_losses(out)
    assert list(a) == list(b) == [1, 2, 3, 4, 5, 6]
    assert list(b.values()) == pytest.approx(list(a.values()), rel=1e-6, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# bad input: one clear line each, before training
# ---------------------------------------------------------------------------------------------
def _cli_error(capsys, *argv) -> str:
    from lmforge.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(argv))
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "\n" not in msg and "Traceback" not in msg
    return msg


def test_bad_input_is_one_line_before_training(tiny_ckpt, tmp_path, capsys):
    base = ["--init", str(tiny_ckpt), "--out_dir", str(tmp_path / "o"), "--device", "cpu"]
    bad_keys = tmp_path / "bad.jsonl"
    bad_keys.write_text('{"instruction": "a", "output": "b"}\n{"prompt": "a", "output": "b"}\n')
    assert "bad.jsonl:2: missing key 'instruction'" in _cli_error(capsys, "finetune", "sft", *base,
                                                                   "--data.train_file", str(bad_keys))
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"instruction": "a", "output": "  "}\n')
    assert "'output' is empty" in _cli_error(capsys, "finetune", "sft", *base, "--data.train_file", str(empty))
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"instruction": "word " * 300, "output": "x"}) + "\n"
                    + json.dumps({"instruction": "hi", "output": "x"}) + "\n")
    msg = _cli_error(capsys, "finetune", "sft", *base, "--data.train_file", str(long), "--data.val_fraction", "0")
    assert "1 of 2 examples are longer than 128 tokens" in msg and "--data.truncate true" in msg
    msg = _cli_error(capsys, "finetune", "sft", *base, "--data.train_file", "tasks", "--method.lora.targets", "qq_proj")
    assert "lora target 'qq_proj' matches no linear layer" in msg

    labels = tmp_path / "l.csv"
    labels.write_text("text,label\nhello,a\nbye,b\nhm,c\n")
    msg = _cli_error(capsys, "finetune", "classify", *base, "--data.file", str(labels), "--data.classes", '["a","b"]')
    assert "l.csv:4: label 'c' is not among the classes" in msg
    one = tmp_path / "one.csv"
    one.write_text("text,label\nhello,a\nbye,a\n")
    assert "at least two classes" in _cli_error(capsys, "finetune", "classify", *base, "--data.file", str(one))
    assert not (tmp_path / "o" / "log.csv").exists()  # nothing trained


def test_data_tasks_verb(tmp_path, capsys):
    from lmforge.cli import main

    main(["data", "tasks", "--out", str(tmp_path), "--n_train", "30", "--n_test", "15"])
    assert "15 task families" in capsys.readouterr().out
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 30


def test_shipped_yaml_parses_against_the_verbs():
    from jsonargparse import ActionConfigFile, ArgumentParser

    from lmforge.configs import named_configs
    from lmforge.verbs import finetune as verbs

    shipped = {k: v for k, v in named_configs().items() if k.startswith("finetune/")}
    assert {"finetune/spam-smollm2", "finetune/tasks-smollm2"} <= set(shipped)
    for name, path in shipped.items():
        fn = verbs.classify if "spam" in name else verbs.sft
        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--config", action=ActionConfigFile)
        parser.add_function_arguments(fn)
        ns = parser.parse_args(["--config", str(path)])
        assert ns.init == "smollm2-135m-instruct"


def test_verb_signatures_mirror_configs():
    import dataclasses
    import inspect

    from lmforge.verbs import finetune as verbs

    for fn, cls in ((verbs.classify, ClassifyConfig), (verbs.sft, SFTConfig)):
        assert set(inspect.signature(fn).parameters) == {f.name for f in dataclasses.fields(cls)}


@pytest.mark.slow
def test_two_processes_match_one(tiny_ckpt, tmp_path):
    import numpy as np

    one, two = tmp_path / "one", tmp_path / "two"
    sft(sft_cfg(tiny_ckpt, one, data={"n_test": 0}, eval={"sample_tokens": 0}))
    s = sft(sft_cfg(tiny_ckpt, two, data={"n_test": 0}, eval={"sample_tokens": 0}, devices=2))
    assert s["steps"] == 6
    a, b = train_losses(one), train_losses(two)
    assert list(a) == list(b)
    np.testing.assert_allclose(list(b.values()), list(a.values()), rtol=1e-4)


def test_classify_endpoint_through_the_real_server(tiny_ckpt, spam_like, tmp_path):
    requests = pytest.importorskip("requests")
    from lmforge.api import LLM
    from lmforge.serve.server import Server

    classify(classify_cfg(tiny_ckpt, spam_like, tmp_path / "c", "head", train={"max_steps": 30}))
    llm = LLM.load(tmp_path / "c" / "final", device="cpu")
    texts = ["hello the a", "money of it"]
    with Server(llm, max_batch_size=2) as srv:
        r = requests.post(srv.url + "/v1/classify", json={"input": texts}, timeout=60)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [d["label"] for d in data] == [g["label"] for g in llm.classify(texts)]
        assert requests.post(srv.url + "/v1/classify", json={"input": []}, timeout=60).status_code == 400
    with pytest.raises(LmforgeError, match="not a classifier checkpoint"):
        LLM.load(tiny_ckpt, device="cpu").classify(["x"])
