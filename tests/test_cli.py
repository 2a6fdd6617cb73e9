"""The CLI layer: fast --help, every module imports, one-line errors for bad input."""

import dataclasses
import importlib
import math
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


def fn_doc_summary(argv):
    fn = cli._resolve(argv[0])
    fn = fn[argv[1]] if isinstance(fn, dict) else fn
    return " ".join(fn.__doc__.split("\n\n")[0].split())


def _verb_functions():
    for verb in cli.VERBS:
        target = cli._resolve(verb)
        for sub, fn in (target.items() if isinstance(target, dict) else [(None, target)]):
            yield [verb] if sub is None else [verb, sub], fn


def test_every_verb_is_a_typed_function_in_lmforge_verbs():
    import inspect
    import typing

    found = list(_verb_functions())
    assert len(found) >= len(cli.VERBS)
    for argv, fn in found:
        assert inspect.isfunction(fn) and fn.__module__.startswith("lmforge.verbs."), (argv, fn.__module__)
        hints = typing.get_type_hints(fn)
        assert all(name in hints for name in inspect.signature(fn).parameters), argv  # every parameter typed


@pytest.mark.parametrize("argv", [argv for argv, _ in _verb_functions()], ids=" ".join)
def test_every_verb_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main([*argv, "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lmforge {argv[0]}") and fn_doc_summary(argv) in " ".join(out.split())
    from lmforge.verbs.flags import flat_params

    fn = cli._resolve(argv[0])
    fn = fn[argv[1]] if isinstance(fn, dict) else fn

    for group in flat_params(fn).values():  # a Flat group's fields are the verb's own flags
        for name in group.flags:
            assert (f"--{name} " in out or f"  {name} " in out), (argv, name)


# ---------------------------------------------------------------------------------------------
# flag groups (lmforge.verbs.flags): defined once, flat on the command line, the same in a --config
# ---------------------------------------------------------------------------------------------
def _parse(verb, args):
    return cli.parse([verb, *args])[1]


def test_flag_groups_are_flat_and_built(tmp_path):
    from lmforge.sampling import SamplingParams
    from lmforge.serve.settings import ServeSettings
    from lmforge.verbs.flags import ModelArgs

    got = _parse("generate", ["m.gguf", "--max-new-tokens", "7", "--temperature", "0", "--stop+", "x",
                              "--quantize", "int8"])
    assert got["model"] == ModelArgs("m.gguf", quantize="int8")
    assert got["sampling"] == SamplingParams(max_new_tokens=7, temperature=0.0, top_k=50, stop=["x"])
    # the verbs' own defaults
    assert _parse("chat", ["m"])["sampling"] == SamplingParams(max_new_tokens=512, temperature=0.8, top_k=50)
    assert _parse("generate", ["m"])["sampling"].max_new_tokens == 128
    # a --config file holds the same flat keys
    (tmp_path / "serve.yaml").write_text("max_batch_size: 3\nhost: 0.0.0.0\ndevice: cpu\nport: 9\n")
    got = _parse("serve", ["m", "--config", str(tmp_path / "serve.yaml")])
    assert got["settings"] == ServeSettings(max_batch_size=3, host="0.0.0.0")
    assert got["model"] == ModelArgs("m", device="cpu") and got["port"] == 9


def test_serve_flags_are_the_serve_settings():
    import dataclasses

    from lmforge.serve.settings import ServeSettings

    defaults = cli.verb_parser("serve").get_defaults()
    for f in dataclasses.fields(ServeSettings):
        if f.name != "retry_after":  # a server constant, no flag
            assert defaults[f.name] == f.default, f.name
    assert "retry_after" not in defaults


_SAMPLING_FLAGS = {"max_new_tokens": int, "temperature": float, "top_k": int | None, "top_p": float, "min_p": float,
                   "repetition_penalty": float, "seed": int | None}
_values = st.one_of(st.integers(-3, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["null", "", "true", "x", "0.5e-3"]))


def _python_value(text, kind):
    """The value a flag's text stands for (YAML scalars: `null`, ints, floats), or ValueError."""
    if text == "null" and kind == int | None:
        return None
    if kind is float:
        value = float(text)  # ValueError for "x", "", "null", "true"
        return value
    if not text.lstrip("-").isdigit():
        raise ValueError(text)
    return int(text)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(values=st.fixed_dictionaries({}, optional={name: _values for name in _SAMPLING_FLAGS}))
def test_any_sampling_flags_build_what_sampling_params_builds(values):
    """The flags give the SamplingParams Python gets from the same values; else a one-line error."""
    from lmforge.errors import LmforgeError
    from lmforge.sampling import SamplingParams
    from lmforge.verbs.flags import cli_sampling

    args = [a for name, text in values.items() for a in (f"--{name}", text)]
    try:
        got = _parse("generate", ["m", *args])["sampling"]
    except LmforgeError as e:
        got = e
        assert "\n" not in str(e) and "Traceback" not in str(e)
    try:
        python = {name: _python_value(text, _SAMPLING_FLAGS[name]) for name, text in values.items()}
        want = dataclasses.replace(cli_sampling(max_new_tokens=128), **python)
    except (ValueError, TypeError, LmforgeError) as e:
        assert isinstance(got, LmforgeError), (values, got, e)
        return
    if not all(math.isfinite(v) for v in python.values() if isinstance(v, float)):
        return  # nan/inf: the flag parser may take or refuse them; either way no traceback (above)
    assert isinstance(got, SamplingParams) and got == want, (values, got)


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


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(["--full", "--out", "x", "--force", "sft,dpo", "true", "false", "--stages", "--nope"]),
                max_size=8))
def test_a_bare_bool_flag_means_true_and_nothing_else_changes(args):
    """`--full` alone (last, or before another flag) gains "true"; every other word stays as it was."""
    from lmforge.cli import _bare_bools
    from lmforge.verbs.demo import demo

    out = _bare_bools(demo, args)
    assert out == [w for i, a in enumerate(args) for w in
                                ([a, "true"] if a == "--full" and (i + 1 == len(args) or args[i + 1].startswith("--"))
                                 else [a])]
    assert _bare_bools({"sub": demo}, args) == args  # a verb with subverbs: left alone
