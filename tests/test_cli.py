"""The CLI layer: fast --help, every module imports, one-line errors for bad input."""

import importlib
import pkgutil
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmforge
from lmforge import cli


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(lmforge.__path__, "lmforge.") if not m.name.endswith("__main__")]
    assert len(names) > 10
    for name in names:
        importlib.import_module(name)


def test_every_verb_resolves():
    for verb in cli.VERBS:
        target = cli._resolve(verb)
        assert callable(target) or all(callable(f) for f in target.values()), verb


def test_help_lists_verbs_without_heavy_imports():
    code = "import sys; from lmforge.cli import main; main(['--help']); print(sorted(m for m in ('torch','jsonargparse','transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pretrain" in out and "serve" in out
    assert out.strip().endswith("[]")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["nosuchverb"], "unknown verb 'nosuchverb'"),
        (["convert", "/no/such/path", "--out", "/tmp/x"], "/no/such/path: no such file or directory"),
        (["convert", "x", "--outt", "y"], "unrecognized arguments: --outt"),
    ],
)
def test_bad_input_is_one_line(argv, expected):
    proc = subprocess.run([sys.executable, "-m", "lmforge", *argv], capture_output=True, text=True)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert expected in err and "Traceback" not in err and len(err.splitlines()) == 1, err


# ---------------------------------------------------------------------------------------------
# unreadable files: a checkpoint's config.json and --config YAML are named in the one-line error
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    import torch

    from lmforge.checkpoint import save_checkpoint
    from lmforge.config import Config
    from lmforge.model import GPT

    torch.manual_seed(0)
    cfg = Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, block_size=16)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "ck", GPT(cfg), cfg)


def _one_line_error(argv: list[str], culprit) -> str:
    proc = subprocess.run([sys.executable, "-m", "lmforge", *argv], capture_output=True, text=True)
    err = proc.stderr.strip()
    assert proc.returncode != 0 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and str(culprit) in err, err
    return err


def test_binary_checkpoint_config_is_named(tiny_ckpt, tmp_path):
    import shutil

    ck = shutil.copytree(tiny_ckpt, tmp_path / "ck")
    (ck / "config.json").write_bytes(bytes(range(256)) * 4)
    assert "UnicodeDecodeError" not in _one_line_error(["convert", str(ck), "--out", str(tmp_path / "o")],
                                                       ck / "config.json")


@pytest.mark.parametrize("name, content, expected", [
    ("binary.yaml", bytes(range(256)) * 4, "not UTF-8"),
    ("malformed.yaml", b"train:\n  lr: [1,\n", "not valid YAML"),
    ("tab.yaml", b"train:\n\tlr: 1\n", "line 2"),
    ("list.yaml", b"- 1\n- 2\n", "a list"),
    ("group.yaml", b"data:\n  dir: x\nmodel: pythia-14m\ntrain: 3\n", "'train'"),
    ("unknown.yaml", b"data:\n  dir: x\nmodel: pythia-14m\ntrain:\n  lrr: 3\n", "lrr"),
])
def test_bad_config_yaml_is_named(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    err = _one_line_error(["pretrain", "--config", str(path)], path)
    assert expected in err and "<unicode string>" not in err and "UnicodeDecodeError" not in err, err


def test_prepare_names_a_bad_tokenizer_file(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("hello world\n")
    (tmp_path / "random.bin").write_bytes(bytes(range(256)))
    _one_line_error(["prepare", str(tmp_path / "corpus"), "--tokenizer", str(tmp_path / "random.bin"),
                     "--out_dir", str(tmp_path / "o")], tmp_path / "random.bin")


_files = st.one_of(st.binary(max_size=300), st.text(max_size=200).map(lambda s: s.encode("utf-8")))


def _exit_message(argv: list[str]) -> str | None:
    """What `lmforge ARGV` exits with (None: success), run in this process."""
    try:
        cli.main(argv)
    except SystemExit as e:
        return str(e.code)
    return None


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(content=_files)
def test_any_checkpoint_config_json_is_one_named_error(tiny_ckpt, tmp_path_factory, content):
    import shutil

    root = tmp_path_factory.mktemp("fuzz-ck")
    ck = shutil.copytree(tiny_ckpt, root / "ck")
    (ck / "config.json").write_bytes(content)
    msg = _exit_message(["convert", str(ck), "--out", str(root / "out")])
    if msg is not None:
        assert msg.startswith("error: ") and "\n" not in msg and str(ck / "config.json") in msg, msg
    shutil.rmtree(root)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(content=_files)
def test_any_config_yaml_is_one_named_error(tmp_path_factory, content):
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_bytes(content)
    msg = _exit_message(["pretrain", "--config", str(path)])
    assert msg is not None and msg.startswith("error: ") and "\n" not in msg and str(path) in msg, msg


@pytest.mark.slow
def test_wheel_install_runs_outside_the_source_tree(tmp_path):
    """A plain (non-editable) wheel install: --help, models, and pretrain with a packaged config name.

    Offline and quick: the wheel goes with --no-deps into a fresh venv whose dependencies come from
    this interpreter's site-packages, added as a plain path (so its .pth files, the editable lmforge
    install among them, are not processed), and nothing runs from the source tree.
    """
    import os
    import sysconfig
    import zipfile
    from pathlib import Path

    from test_prepare import DOCS, make_tokenizer

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing from the source tree
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", str(repo), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")],
                   check=True, cwd=tmp_path, env=env, capture_output=True)
    wheel = next((tmp_path / "dist").glob("lmforge-*.whl"))
    assert "lmforge/configs/pretrain/austen-tiny.yaml" in zipfile.ZipFile(wheel).namelist()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index", str(wheel)],
                   check=True, env=env, capture_output=True)
    site = subprocess.check_output([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   env=env, text=True).strip()
    (Path(site) / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def lmforge(*args: str) -> str:
        p = subprocess.run([str(venv / "bin" / "lmforge"), *args], cwd=elsewhere, env=env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        return p.stdout

    where = subprocess.check_output([venv / "bin" / "python", "-c", "import lmforge; print(lmforge.__file__)"],
                                    cwd=elsewhere, env=env, text=True)
    assert where.startswith(site), where
    assert "pretrain" in lmforge("--help")
    assert "pythia-14m" in lmforge("models")
    tok = make_tokenizer(elsewhere / "tok", DOCS, vocab_size=300)
    corpus = elsewhere / "corpus"
    corpus.mkdir()
    for i, doc in enumerate(DOCS * 3):
        (corpus / f"d{i:02d}.txt").write_text(doc.replace("Chapter", f"Part {i}"), encoding="utf-8")
    lmforge("prepare", "corpus", "--tokenizer", str(tok), "--out_dir", "data", "--val_fraction", "0.15")
    out = lmforge("pretrain", "--config", "austen-tiny", "--data.dir", "data", "--out_dir", "run",
                  "--train.max_steps", "2", "--log.tensorboard", "false", "--log.plot", "false")
    assert "pretrain: austen-tiny" in out and "done: 2 steps" in out
    assert (elsewhere / "run" / "final" / "model.safetensors").is_file()
