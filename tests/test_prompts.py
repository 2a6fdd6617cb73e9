"""Chat formatting: Jinja templates render exactly as transformers' apply_chat_template; built-in styles."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from helpers import asset

from lmforge.errors import LmforgeError
from lmforge.prompts import (
    PROMPT_STYLES,
    detect_style,
    format_chat,
    get_style,
    render_template,
    resolve_style,
    stop_strings,
    stop_tokens,
)

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Hi <b>&'quoted'</b> 世界 😀"},
     {"role": "assistant", "content": "  Hello!  "},
     {"role": "user", "content": "2+2?\nAnswer in JSON: {\"a\": 1}"}],
    [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"}],
]
BOS, EOS = "<s>", "</s>"


@pytest.fixture(scope="module")
def smollm2_template() -> str:
    from gguf import GGUFReader

    field = GGUFReader(asset("smollm2-135m-instruct")).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


@pytest.fixture(scope="module")
def llama_cpp_templates() -> dict[str, str]:
    folder = asset("llama-cpp-vocabs") / "templates"
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.jinja"))}


@pytest.fixture(scope="module")
def hf_tokenizer():
    """A transformers tokenizer object to render templates with (its vocabulary does not matter)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models

    transformers.logging.set_verbosity_error()
    core = Tokenizer(models.WordLevel({"<unk>": 0, BOS: 1, EOS: 2}, unk_token="<unk>"))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS)


def _hf_render(tok, template: str, messages, add_generation_prompt: bool):
    tok.chat_template = template
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _ours(template: str, messages, add_generation_prompt: bool) -> str:
    return render_template(template, messages, bos_token=BOS, eos_token=EOS, add_generation_prompt=add_generation_prompt)


def test_smollm2_template_matches_transformers(smollm2_template, hf_tokenizer):
    for messages in CONVERSATIONS:
        for gen in (True, False):
            assert _ours(smollm2_template, messages, gen) == _hf_render(hf_tokenizer, smollm2_template, messages, gen)
    text = _ours(smollm2_template, CONVERSATIONS[0], True)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


def test_llama_cpp_templates_match_transformers(llama_cpp_templates, hf_tokenizer):
    jinja2 = pytest.importorskip("jinja2")
    compared, mismatched, rejected = [], [], []
    for name, template in llama_cpp_templates.items():
        for messages in CONVERSATIONS:
            for gen in (True, False):
                try:
                    want = _hf_render(hf_tokenizer, template, messages, gen)
                except jinja2.TemplateError:
                    # the template rejects this conversation (raise_exception, e.g. a system role
                    # where none is allowed): ours rejects it too, as a one-line error
                    with pytest.raises(LmforgeError, match="chat template error"):
                        _ours(template, messages, gen)
                    rejected.append(name)
                    continue
                except TypeError:
                    continue  # transformers passes tools=None, which tool-use templates iterate
                if _ours(template, messages, gen) == want:
                    compared.append(name)
                else:
                    mismatched.append((name, gen))
    assert not mismatched
    assert len(set(compared)) >= 50, sorted(set(compared))
    assert rejected  # the error path was exercised


def test_template_features():
    tpl = ("{{ bos_token }}{% for m in messages %}{% generation %}{{ m['content'] | tojson }}{% endgeneration %}"
           "{% if loop.index == 1 %}{% continue %}{% endif %}|{% endfor %}{{ strftime_now('%Y') }}{{ eos_token }}")
    out = render_template(tpl, [{"role": "user", "content": "<é>"}, {"role": "user", "content": "x"}],
                          bos_token="B", eos_token="E")
    # tojson keeps non-ASCII and does not HTML-escape; {% continue %} works; generation renders its body
    assert out == f'B"<é>""x"|{datetime.datetime.now().year}E'
    with pytest.raises(LmforgeError, match="chat template error: roles must alternate"):
        render_template("{{ raise_exception('roles must alternate') }}", [])
    with pytest.raises(LmforgeError, match="syntax error at line 1"):
        render_template("{% for %}", [])


# ---------------------------------------------------------------------------------------------
# built-in styles
# ---------------------------------------------------------------------------------------------
class VocabOnly:
    """The part of `Tokenizer` that style selection reads: a vocabulary and an optional template."""

    def __init__(self, tokens: list[str], chat_template: str | None = None) -> None:
        self.vocab = {t: i for i, t in enumerate(["<unk>", BOS, EOS, *tokens])}
        self.chat_template = chat_template
        self.bos_id, self.eos_id = 1, 2

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def id_to_token(self, i: int) -> str:
        return next(t for t, j in self.vocab.items() if j == i)


def test_builtin_chatml_equals_smollm2_template_with_a_system_message(smollm2_template):
    for messages in CONVERSATIONS[1:2]:
        for gen in (True, False):
            assert get_style("chatml").render(messages, gen) == _ours(smollm2_template, messages, gen)


def test_builtin_styles_equal_their_families_templates(llama_cpp_templates):
    no_system = CONVERSATIONS[1][1:]
    # Phi-3.5's template writes EOS after a conversation without a generation prompt
    assert get_style("phi3").render(CONVERSATIONS[1], True) == _ours(
        llama_cpp_templates["microsoft-Phi-3.5-mini-instruct"], CONVERSATIONS[1], True)
    # Gemma's template writes BOS itself; the built-in style leaves it to the tokenizer
    assert BOS + get_style("gemma").render(no_system, True) == _ours(
        llama_cpp_templates["google-gemma-2-2b-it"], no_system, True)


def test_builtin_style_texts():
    conv = CONVERSATIONS[1]
    assert get_style("llama3").render(conv, True) == (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi <b>&'quoted'</b> 世界 😀<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n2+2?\nAnswer in JSON: {\"a\": 1}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert get_style("llama2").render(conv, True) == (
        "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi <b>&'quoted'</b> 世界 😀 [/INST] Hello! </s>"
        "<s>[INST] 2+2?\nAnswer in JSON: {\"a\": 1} [/INST]")
    assert get_style("alpaca").render(CONVERSATIONS[0], True) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nWhat is the capital of France?\n\n### Response:\n")
    assert get_style("phi2").render(CONVERSATIONS[0], True) == "Instruct: What is the capital of France?\nOutput:"
    assert get_style("gemma").render(conv[:2], True) == (
        "<start_of_turn>user\nYou are terse.\n\nHi <b>&'quoted'</b> 世界 😀<end_of_turn>\n<start_of_turn>model\n")
    assert get_style("default").render(CONVERSATIONS[0], True) == "What is the capital of France?"
    assert set(PROMPT_STYLES) == {"default", "alpaca", "chatml", "llama2", "llama3", "phi2", "phi3", "gemma"}


def test_style_selection_and_stop_tokens(smollm2_template):
    from lmforge.config import Config

    chatml = VocabOnly(["<|im_start|>", "<|im_end|>"])
    assert detect_style(chatml, None) == "chatml"
    assert detect_style(VocabOnly(["<|begin_of_text|>", "<|eot_id|>"]), None) == "llama3"
    assert detect_style(VocabOnly(["<start_of_turn>", "<end_of_turn>"]), None) == "gemma"
    assert detect_style(VocabOnly(["<|assistant|>", "<|end|>"]), None) == "phi3"
    assert detect_style(VocabOnly([]), Config(name="Llama-2-7b-chat-hf")) == "llama2"
    assert detect_style(VocabOnly([]), Config(name="Llama-2-7b-hf")) == "default"
    assert detect_style(VocabOnly([]), Config(name="phi-2")) == "phi2"
    assert detect_style(None, None) == "default"

    templated = VocabOnly(["<|im_start|>", "<|im_end|>"], chat_template=smollm2_template)
    assert resolve_style(templated, None) == "template"
    assert resolve_style(templated, None, "alpaca") == "alpaca"
    assert resolve_style(templated, None, "ChatML") == "chatml"
    with pytest.raises(LmforgeError, match="unknown prompt style 'nope'"):
        resolve_style(templated, None, "nope")
    with pytest.raises(LmforgeError, match="no chat template"):
        resolve_style(chatml, None, "template")
    assert stop_tokens(templated, None) == [templated.token_to_id("<|im_end|>")]
    assert stop_tokens(chatml, None, "chatml") == [chatml.token_to_id("<|im_end|>")]
    assert stop_strings(templated, None, "alpaca") == ["\n### Instruction:"]
    assert format_chat(CONVERSATIONS[0], templated) == _ours(smollm2_template, CONVERSATIONS[0], True)
    assert format_chat(CONVERSATIONS[0], templated, style="alpaca").endswith("### Response:\n")
    with pytest.raises(LmforgeError, match="message 0 has role 'robot'"):
        format_chat([{"role": "robot", "content": "x"}], templated)
    with pytest.raises(LmforgeError, match="message 0 must be a dict"):
        format_chat(["hi"], templated)


def test_prompts_module_is_light():
    import subprocess
    import sys

    code = "import sys, lmforge.prompts; print('torch' in sys.modules, 'jinja2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    assert Path(__file__).exists()
