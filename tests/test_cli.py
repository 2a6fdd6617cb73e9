"""The CLI layer: fast --help, every module imports, one-line errors for bad input."""

import importlib
import pkgutil
import subprocess
import sys

import pytest

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
