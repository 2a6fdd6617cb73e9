"""`lmforge chat` in a pseudo-terminal, `lmforge generate`, their flag errors, and history trimming."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import asset

from lmforge.checkpoint import save_checkpoint
from lmforge.config import Config
from lmforge.model import GPT

TIMING = re.compile(r"Time for inference: \d+\.\d\d sec total, \d+\.\d\d tokens/sec, (\d+) tokens")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8", "TERM": "dumb"}


@pytest.fixture(scope="module")
def tokenizer():
    from lmforge.tokenizer import Tokenizer

    return Tokenizer.from_gguf(asset("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer) -> Path:
    """A tiny random model with SmolLM2's tokenizer and chat template, 96-token context."""
    torch.manual_seed(0)
    config = Config(name="tiny-chat", vocab_size=tokenizer.vocab_size, n_layer=2, n_embd=32, n_head=2,
                    block_size=96, tie_embeddings=True, eos_token_id=tokenizer.eos_id)
    model = GPT(config)
    model.init_weights(std=0.3)
    return save_checkpoint(tmp_path_factory.mktemp("tiny-chat"), model, config, tokenizer)


def test_chat_session_in_a_terminal(checkpoint):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "lmforge", "chat", str(checkpoint), "--temperature", "0",
                                           "--max-new-tokens", "8"],
                          env=ENV, encoding="utf-8", timeout=120, dimensions=(40, 200))
    try:
        child.expect("Chatting with tiny-chat \\(chat template\\)")
        child.expect("Prompt: ")
        child.sendline("Hello there")  # turn 1
        child.expect("Reply: ")
        child.expect(TIMING)
        assert 1 <= int(child.match.group(1)) <= 8
        child.expect("Prompt: ")
        child.sendline("first line \\")  # turn 2, two lines joined by the trailing backslash
        child.expect(r"\.\.\. ")
        child.sendline("second line")
        child.expect("Reply: ")
        child.expect(TIMING)
        child.expect("Prompt: ")
        # a long message: with the two earlier turns it no longer fits the 96-token context
        child.sendline("apple " * 30)
        child.expect(r"\[dropped the \d oldest turn\(s\) to fit the 96-token context\]")
        child.expect(TIMING)
        child.expect("Prompt: ")
        child.sendline("/reset")
        child.expect(r"\[history cleared\]")
        child.expect("Prompt: ")
        child.sendline("")  # an empty prompt exits
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before


def test_generate_verb_reads_stdin_and_matches_the_api(checkpoint):
    from lmforge.api import LLM

    llm = LLM.load(checkpoint, device="cpu")
    want = llm.generate("The capital of France is", max_new_tokens=6, ignore_eos=True)
    proc = subprocess.run([sys.executable, "-m", "lmforge", "generate", str(checkpoint), "--prompt", "-",
                           "--temperature", "0", "--max-new-tokens", "6"],
                          input="The capital of France is", capture_output=True, text=True, env=ENV, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert TIMING.search(proc.stderr)
    n = int(TIMING.search(proc.stderr).group(1))
    # the verb stops at EOS; the reference ignored it
    assert proc.stdout.rstrip("\n") == llm.generate("The capital of France is", max_new_tokens=6)
    assert want.startswith(proc.stdout.rstrip("\n")) and 1 <= n <= 6


@pytest.mark.parametrize("verb", ["chat", "generate"])
@pytest.mark.parametrize("flags, expected", [
    (["--top-p", "1.5"], "top_p must be in (0, 1], got 1.5"),
    (["--temperature", "-0.5"], "temperature must be >= 0, got -0.5"),
    (["--max-new-tokens", "0"], "max_new_tokens must be a positive integer"),
    (["--prompt-style", "klingon"], "unknown prompt style 'klingon'"),
])
def test_bad_flags_are_one_line_errors(verb, flags, expected, checkpoint):
    proc = subprocess.run([sys.executable, "-m", "lmforge", verb, str(checkpoint), *flags],
                          capture_output=True, text=True, env=ENV, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert expected in err and "Traceback" not in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("verb", ["chat", "generate"])
def test_missing_model_is_one_line_error(verb, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lmforge", verb, str(tmp_path / "nope")],
                          capture_output=True, text=True, env=ENV, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "nope: no such file or directory" in err and len(err.splitlines()) == 1, err


def test_read_message_continuations_and_paste():
    from lmforge.verbs.chat import read_message

    def feed(lines):
        it = iter(lines)

        def read(prompt):
            try:
                return next(it)
            except StopIteration:
                raise EOFError from None
        return read

    assert read_message(feed(["one \\", "two \\", "three"])) == "one \ntwo \nthree"
    assert read_message(feed(["/paste", "a", "", "b\\", "/end", "ignored"])) == "a\n\nb\\"
    assert read_message(feed(["/paste", "x", "y"])) == "x\ny"  # Ctrl-D ends a paste
    assert read_message(feed([])) is None
    assert read_message(feed(["plain"])) == "plain"


def test_fit_history_drops_oldest_turns(checkpoint):
    from lmforge.api import LLM
    from lmforge.verbs.chat import fit_history

    llm = LLM.load(checkpoint, device="cpu")
    history = []
    for i in range(4):
        history += [{"role": "user", "content": f"question {i} " + "pear " * 5},
                    {"role": "assistant", "content": f"answer {i}"}]
    message = {"role": "user", "content": "last"}
    ids, dropped = fit_history(llm, [], history, message, None, reserve=8)
    assert dropped >= 1 and len(ids) + 8 <= 96
    assert history[0]["content"].startswith(f"question {dropped}")  # the oldest went first
    assert len(history) == 2 * (4 - dropped)
