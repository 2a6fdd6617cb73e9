"""Window loader and `lmforge pretrain`: learning, exact resume (also after SIGKILL), DDP/FSDP parity, errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_prepare import DOCS, make_tokenizer

from lmforge.data.loader import TokenData, WindowLoader
from lmforge.data.prepare import DataError, prepare
from lmforge.training.config import TrainConfigError
from lmforge.training.pretrain import PretrainConfig, load_config, pretrain


# ---------------------------------------------------------------------------------------------
# loader, on a hand-made token stream (arange) so every window can be checked exactly
# ---------------------------------------------------------------------------------------------
def write_stream(out: Path, n: int, shard: int, dtype: str = "uint16") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    ids = np.arange(n, dtype=dtype)
    shards = []
    for k, lo in enumerate(range(0, n, shard)):
        ids[lo : lo + shard].tofile(out / f"train_{k:04d}.bin")
        shards.append({"file": f"train_{k:04d}.bin", "tokens": len(ids[lo : lo + shard])})
    manifest = {"format": "lmforge-tokens", "version": 1, "dtype": dtype, "tokenizer": {"eos_id": 0, "vocab_size": 65536},
                "splits": {"train": {"tokens": n, "shards": shards}, "val": {"tokens": 0, "shards": []}}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_windows_stride_and_shift(tmp_path):
    data = TokenData(write_stream(tmp_path / "d", 100, shard=30), "train")  # windows span shard boundaries
    assert len(data) == 100
    disjoint = WindowLoader(data, block_size=8, batch_size=4, shuffle=False, cycle=False)
    x, y = next(disjoint)
    assert x.shape == (4, 8) and x.dtype == torch.int64
    assert x[:, 0].tolist() == [0, 8, 16, 24]  # "sample 1, sample 2 …": no overlap
    assert torch.equal(y, x + 1)  # targets are the inputs shifted by one
    assert disjoint.n_windows == (100 - 9) // 8 + 1
    overlapping = WindowLoader(data, block_size=8, batch_size=4, stride=2, shuffle=False, cycle=False)
    assert next(overlapping)[0][:, 0].tolist() == [0, 2, 4, 6]
    # one epoch without cycling visits every window once, the last batch short
    starts = [int(s) for xb, _ in WindowLoader(data, 8, 5, stride=3, shuffle=False, cycle=False) for s in xb[:, 0]]
    assert starts == list(range(0, 3 * ((100 - 9) // 3 + 1), 3))


def test_shuffle_is_seeded_and_epochs_cycle(tmp_path):
    data = TokenData(write_stream(tmp_path / "d", 200, shard=64), "train")

    def first_starts(seed, n=12):
        it = WindowLoader(data, 8, 4, seed=seed)
        return [int(s) for _ in range(n) for s in next(it)[0][:, 0]]

    a, b, c = first_starts(0), first_starts(0), first_starts(1)
    assert a == b and a != c
    n_windows = WindowLoader(data, 8, 4).n_windows
    # the first epoch is a permutation of all windows; then the next epoch starts (new order)
    assert sorted(a[:n_windows]) == list(range(0, 8 * n_windows, 8))


def test_rank_sharding_covers_the_same_windows(tmp_path):
    data = TokenData(write_stream(tmp_path / "d", 500, shard=128), "train")
    single = WindowLoader(data, 8, 4, seed=3)
    ranks = [WindowLoader(data, 8, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):  # a global batch of 4 = 1 process x 4, or 2 processes x 2
        one = sorted(next(single)[0][:, 0].tolist())
        two = sorted(s for r in ranks for s in next(r)[0][:, 0].tolist())
        assert one == two
    r0, r1 = (set(WindowLoader(data, 8, 1, seed=3, rank=r, world_size=2, cycle=False).__iter__().__next__()[0][:, 0].tolist())
              for r in range(2))
    assert not r0 & r1


def test_resume_sees_the_same_batches(tmp_path):
    data = TokenData(write_stream(tmp_path / "d", 300, shard=100), "train")
    a = WindowLoader(data, 8, 3, seed=7)
    for _ in range(13):  # past the end of the first epoch (36 windows = 12 batches)
        next(a)
    state = json.loads(json.dumps(a.state_dict()))  # survives serialisation
    expected = [next(a)[0] for _ in range(5)]
    b = WindowLoader(data, 8, 3, seed=7)
    b.load_state_dict(state)
    for want in expected:
        assert torch.equal(next(b)[0], want)
    with pytest.raises(DataError, match="world_size"):
        WindowLoader(data, 8, 3, seed=7, rank=0, world_size=2).load_state_dict(state)


def test_loader_errors(tmp_path):
    data = TokenData(write_stream(tmp_path / "d", 20, shard=20), "train")
    with pytest.raises(DataError, match="too few"):
        WindowLoader(data, block_size=64, batch_size=1)
    with pytest.raises(DataError, match="no manifest"):
        (tmp_path / "empty").mkdir()
        TokenData(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# pretraining a tiny model on a tiny corpus
# ---------------------------------------------------------------------------------------------
TINY_MODEL = {"name": "tiny", "n_layer": 2, "n_embd": 32, "n_head": 2, "intermediate_size": 64, "block_size": 64}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrain")
    tok = make_tokenizer(root / "tok", DOCS, vocab_size=300)
    corpus = root / "corpus"
    corpus.mkdir()
    for i, doc in enumerate(DOCS * 3):
        (corpus / f"d{i:02d}.txt").write_text(doc.replace("Chapter", f"Part {i}"), encoding="utf-8")
    prepare(str(corpus), tokenizer=str(tok), out_dir=str(root / "data"), val_fraction=0.15, progress=False)
    return root / "data"


def tiny_config(data_dir: Path, out: Path, **overrides) -> PretrainConfig:
    values = {"data.dir": str(data_dir), "data.block_size": 32, "train.max_steps": 8, "train.global_batch_size": 8,
              "train.micro_batch_size": 4, "train.lr": 1e-2, "train.min_lr": 1e-3, "train.warmup_steps": 2,
              "eval.interval": 4, "eval.val_batches": 2, "eval.sample_tokens": 8, "log.interval": 1,
              "log.tensorboard": False, "log.plot": False, "precision": "fp32", "device": "cpu", **overrides}
    return load_config(None, out_dir=str(out), model=dict(TINY_MODEL), **values)


@pytest.fixture(scope="module")
def full_run(data_dir, tmp_path_factory) -> Path:
    """An uninterrupted 8-step run that the resume tests compare against."""
    out = tmp_path_factory.mktemp("full") / "run"
    pretrain(tiny_config(data_dir, out))
    return out


def train_losses(out: Path) -> dict[int, float]:
    with open(out / "log.csv") as f:
        return {int(r["step"]): float(r["train_loss"]) for r in csv.DictReader(f) if r["train_loss"]}


def test_loss_decreases_and_outputs(data_dir, tmp_path):
    out = tmp_path / "run"
    s = pretrain(tiny_config(data_dir, out, **{"log.plot": True, "log.tensorboard": True}))
    losses = train_losses(out)
    assert list(losses) == list(range(1, 9))
    assert losses[8] < losses[1] - 0.5
    assert s["val_loss"] < s["initial_val_loss"] - 0.5
    assert s["steps"] == 8 and s["tokens"] == 8 * 8 * 32
    assert (out / "loss.png").stat().st_size > 1000 and list((out / "tensorboard").iterdir())
    assert json.loads((out / "summary.json").read_text())["val_loss"] == s["val_loss"]
    # the final model is a normal lmforge checkpoint that LLM.load reads, tokenizer included
    from lmforge.api import LLM

    llm = LLM.load(out / "final", device="cpu", dtype="float32")
    assert llm.tokenizer is not None and llm.config.n_layer == 2
    ids = torch.tensor([llm.tokenizer.encode("It is a truth", bos=False)])
    ref = torch.load(out / "checkpoints" / "step-000008" / "train_state.pt", weights_only=True)
    assert ref["step"] == 8 and ref["loader"]["index"] > 0
    assert torch.isfinite(llm.model(ids)).all()
    # only keep_checkpoints training checkpoints are kept
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000004", "step-000008"]


class _Stop(Exception):
    pass


def test_resume_matches_uninterrupted_run(data_dir, full_run, tmp_path, monkeypatch):
    full = full_run
    # interrupted: the run dies right after its step-4 checkpoint, then resumes
    from lmforge.training import loop

    original = loop.save_train_checkpoint

    def dying(root, step, *a, **k):
        original(root, step, *a, **k)
        if step == 4:
            raise _Stop

    part = tmp_path / "part"
    monkeypatch.setattr(loop, "save_train_checkpoint", dying)
    with pytest.raises(_Stop):
        pretrain(tiny_config(data_dir, part))
    monkeypatch.setattr(loop, "save_train_checkpoint", original)
    s = pretrain(tiny_config(data_dir, part, resume=True))
    assert s["steps"] == 8
    a, b = train_losses(full), train_losses(part)
    assert list(a) == list(b)
    np.testing.assert_allclose([b[k] for k in b], [a[k] for k in a], rtol=1e-6, atol=1e-6)


def _copy_run(full: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(full, dest)
    return dest


def test_resume_after_kill_while_writing_final(full_run, data_dir, tmp_path):
    # killed after the last checkpoint, while copying it to final/: no final/, no summary.json yet
    import shutil

    out = _copy_run(full_run, tmp_path / "run")
    os.replace(out / "final", out / ".final.partial")
    (out / "summary.json").unlink()
    s = pretrain(tiny_config(data_dir, out, resume=True))
    full = json.loads((full_run / "summary.json").read_text())
    volatile = ("seconds", "final", "checkpoint")
    assert {k: v for k, v in s.items() if k not in volatile} == {k: v for k, v in full.items() if k not in volatile}
    assert json.loads((out / "summary.json").read_text())["val_loss"] == full["val_loss"]
    assert (out / "final" / "model.safetensors").is_file() and not (out / ".final.partial").exists()
    shutil.rmtree(out)


def test_resume_removes_stale_partial_checkpoints(full_run, data_dir, tmp_path):
    # a run killed while writing checkpoints left half-written .step-N.partial dirs behind
    out = _copy_run(full_run, tmp_path / "run")
    for name in (".step-000004.partial", ".step-000006.partial"):
        (out / "checkpoints" / name).mkdir()
        (out / "checkpoints" / name / "model.safetensors").write_bytes(b"half")
    pretrain(tiny_config(data_dir, out, resume=True))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000004", "step-000008"]


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from lmforge.training import pretrain as mod
    from lmforge.training.monitor import RunLog

    log = RunLog.log
    def log_then_die(self, row):
        log(self, row)
        if os.environ.get("DIE_AT") and str(row["step"]) == os.environ["DIE_AT"] and row["train_loss"] != "":
            os.kill(os.getpid(), signal.SIGKILL)  # mid-run: after the step-4 checkpoint and step 5's log line
    RunLog.log = log_then_die
    from lmforge.cli import main
    main(["pretrain", *sys.argv[1:]])
""")


def _cli_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--data.dir", str(data_dir), "--out_dir", str(out), "--model", json.dumps(TINY_MODEL),
            "--data.block_size", "32", "--train.max_steps", "8", "--train.global_batch_size", "8",
            "--train.micro_batch_size", "4", "--train.lr", "0.01", "--train.min_lr", "0.001",
            "--train.warmup_steps", "2", "--eval.interval", "4", "--eval.val_batches", "2", "--eval.sample_tokens", "4",
            "--log.interval", "1", "--log.tensorboard", "false", "--log.plot", "false", "--precision", "fp32",
            "--device", "cpu", *extra]


def test_sigkill_and_resume_via_cli(data_dir, full_run, tmp_path):
    full = full_run
    out = tmp_path / "killed"
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "DIE_AT": "5"}
    p = subprocess.run([sys.executable, str(script), *_cli_args(data_dir, out)], env=env, capture_output=True,
                       text=True, timeout=240)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert 5 in train_losses(out) and 6 not in train_losses(out)
    env.pop("DIE_AT")
    p = subprocess.run([sys.executable, str(script), *_cli_args(data_dir, out, "--resume", "true")], env=env,
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resuming from step 4" in p.stdout
    a, b = train_losses(full), train_losses(out)
    assert list(a) == list(b)  # the killed run's step-5 line was replaced, not duplicated
    np.testing.assert_allclose(list(b.values()), list(a.values()), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(data_dir, tmp_path, strategy):
    one = tmp_path / "one"
    pretrain(tiny_config(data_dir, one, **{"train.max_steps": 4}))
    two = tmp_path / "two"
    if strategy == "ddp":  # torchrun by hand
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "lmforge",
               "pretrain", *_cli_args(data_dir, two, "--train.max_steps", "4", "--strategy", strategy)]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
    else:  # devices=2: pretrain() launches torchrun itself
        s = pretrain(tiny_config(data_dir, two, **{"train.max_steps": 4}, devices=2, strategy=strategy))
        assert s["steps"] == 4
    a, b = train_losses(one), train_losses(two)
    assert list(a) == list(b) == [1, 2, 3, 4]
    np.testing.assert_allclose(list(b.values()), list(a.values()), rtol=1e-4)
    sa = json.loads((one / "summary.json").read_text())
    sb = json.loads((two / "summary.json").read_text())
    assert sa["val_loss"] == pytest.approx(sb["val_loss"], rel=1e-4)
    # rank 0 saved a full (gathered) checkpoint
    from lmforge.api import LLM

    wa = LLM.load(one / "final", device="cpu", dtype="float32").model.state_dict()
    wb = LLM.load(two / "final", device="cpu", dtype="float32").model.state_dict()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# bad input: one-line errors before training
# ---------------------------------------------------------------------------------------------
def test_block_size_larger_than_context(data_dir, tmp_path):
    with pytest.raises(TrainConfigError, match="block_size=128 is larger than the model's context"):
        pretrain(tiny_config(data_dir, tmp_path / "o", **{"data.block_size": 128}))


def test_missing_data_dir_and_bad_values(tmp_path, data_dir):
    with pytest.raises(DataError, match="no such data directory"):
        pretrain(tiny_config(tmp_path / "nothing", tmp_path / "o"))
    with pytest.raises(TrainConfigError, match="multiple of train.micro_batch_size"):
        tiny_config(data_dir, tmp_path / "o", **{"train.global_batch_size": 6})
    with pytest.raises(TrainConfigError, match="exactly one of model"):
        PretrainConfig(data={"dir": "x"})
    with pytest.raises(TrainConfigError, match=r"unknown key 'train.lrr' \(did you mean 'train.'lr''?\)|unknown key 'train.lrr'"):
        tiny_config(data_dir, tmp_path / "o", **{"train.lrr": 1.0})


def test_cli_typo_is_one_line(data_dir, tmp_path):
    from lmforge.cli import main

    with pytest.raises(SystemExit) as e:
        main(["pretrain", *_cli_args(data_dir, tmp_path / "o", "--train.lrr", "3")])
    msg = str(e.value.code)
    assert "lrr" in msg and "\n" not in msg and msg.startswith("error:")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  dir: x\nmodel: pythia-14m\ntrain:\n  warmup_stepz: 3\n")
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--config", str(cfg)])
    msg = str(e.value.code)
    assert "warmup_stepz" in msg and "\n" not in msg
    assert not (tmp_path / "o").exists()


def test_cli_flags_are_the_config_fields():
    from lmforge.cli import verb_parser

    parser = verb_parser("pretrain")
    defaults = parser.get_defaults()
    for f in dataclasses.fields(PretrainConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):  # a nested group: --train.lr …
            for g in dataclasses.fields(default):
                assert defaults[f"{f.name}.{g.name}"] == getattr(default, g.name), (f.name, g.name)
        else:
            assert defaults[f.name] == default, f.name


def test_shipped_yaml_parses():
    from lmforge.cli import _arguments, verb_parser
    from lmforge.configs import named_configs
    from lmforge.verbs.pretrain import pretrain as pretrain_verb

    shipped = sorted({p for name, p in named_configs().items() if name.startswith("pretrain/")})
    assert shipped
    parser = verb_parser("pretrain")
    for path in shipped:
        cfg = load_config(path)
        assert cfg.model is not None
        init = parser.instantiate(parser.parse_args(["--config", str(path)]))
        assert _arguments(pretrain_verb, init) == {"cfg": cfg}, path.name


# ---------------------------------------------------------------------------------------------
# the shared loop: any loss function, frozen parameters, layering
# ---------------------------------------------------------------------------------------------
class _Batches:
    """A minimal batch source: fixed random (x, y) micro-batches with a position to resume from."""

    def __init__(self, n: int = 64, vocab: int = 320) -> None:
        g = torch.Generator().manual_seed(0)
        self.data = torch.randint(0, vocab, (n, 2, 17), generator=g)
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self):
        rows = self.data[self.index % len(self.data)]
        self.index += 1
        return rows[:, :-1], rows[:, 1:]

    def state_dict(self):
        return {"index": self.index}

    def load_state_dict(self, state):
        self.index = state["index"]


def test_train_loop_takes_any_loss_and_leaves_frozen_parameters(tmp_path):
    from lmforge.config import Config
    from lmforge.model import GPT
    from lmforge.training import distributed
    from lmforge.training.config import EvalArgs, LogArgs, TrainArgs
    from lmforge.training.loop import train_loop
    from lmforge.training.step import lm_loss

    torch.manual_seed(0)
    config = Config(name="t", n_layer=1, n_embd=32, n_head=2, intermediate_size=64, vocab_size=320, block_size=32)
    model = GPT(config)
    model.init_weights()
    model.embed_tokens.weight.requires_grad_(False)  # frozen: as LoRA freezes the base model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def loss_fn(m, batch):  # a recipe's own loss, with a metric
        x, y = batch
        return lm_loss(m, x, y), {"scored": torch.tensor(float(y.numel()))}

    saved = []
    s = train_loop(model, _Batches(), loss_fn, lambda d, msd: saved.append(sorted(msd)),
                   train=TrainArgs(max_steps=3, global_batch_size=4, micro_batch_size=2, warmup_steps=0),
                   eval=EvalArgs(interval=2, initial=False), log=LogArgs(interval=1, tensorboard=False, plot=False),
                   out_dir=tmp_path, info=distributed.setup(torch.device("cpu")), seq_len=16)
    assert s["steps"] == 3 and s["tokens"] == 3 * 4 * 16 and s["val_loss"] is None
    assert len(saved) == 2 and sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000002",
                                                                                                "step-000003"]
    after = model.state_dict()
    assert torch.equal(after["embed_tokens.weight"], before["embed_tokens.weight"])
    assert not torch.equal(after["layers.0.self_attn.q_proj.weight"], before["layers.0.self_attn.q_proj.weight"])
    osd = torch.load(tmp_path / "checkpoints" / "step-000003" / "train_state.pt", weights_only=True)["optimizer"]
    in_optimizer = {name for group in osd["param_groups"] for name in group["params"]}
    assert "layers.0.self_attn.q_proj.weight" in in_optimizer
    assert "embed_tokens.weight" not in in_optimizer  # the optimizer never saw the frozen table


def test_training_imports_neither_cli_nor_demo():
    import ast

    import lmforge.training

    for path in Path(lmforge.training.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith(("lmforge.cli", "lmforge.demo")) for n in names), path.name
