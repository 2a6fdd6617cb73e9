"""GGUF import/export: round trips, llama.cpp layout, transformers parity, the real SmolLM2 file, bad input."""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest
import torch
from helpers import tiny_gpt

from lmforge.config import Config
from lmforge.convert.gguf import export_gguf, load_gguf
from lmforge.errors import LmforgeError
from lmforge.model import GPT

TINY = dict(vocab_size=96, n_layer=2, n_embd=64, n_head=4, n_query_groups=2, intermediate_size=128,
            block_size=64, norm_eps=1e-6, rope_base=10000.0)
FAMILIES = {
    "llama": dict(),
    "llama_tied": dict(tie_embeddings=True),
    "qwen2": dict(attn_bias=True, hf_architecture="Qwen2ForCausalLM"),
    # transformers' Qwen3 GGUF loader assumes head_dim 128 (it ignores attention.key_length)
    "qwen3": dict(qk_norm="head", head_size=128, hf_architecture="Qwen3ForCausalLM"),
    # Gemma 2 with transformers' GGUF defaults (soft-caps 50/30, query scale 256 = head_size)
    "gemma2": dict(hf_architecture="Gemma2ForCausalLM", n_head=2, n_query_groups=1, head_size=256,
                   norm_unit_offset=True, post_norm=True, activation="gelu_tanh", scale_embeddings=True,
                   attn_logit_softcap=50.0, final_logit_softcap=30.0, sliding_window=8, sliding_window_pattern=2,
                   tie_embeddings=True),
    # transformers' Phi3Config pads with id 32000 whatever the GGUF says: Phi-3's real vocabulary size
    "phi3": dict(hf_architecture="Phi3ForCausalLM", vocab_size=32064, bos_token_id=1, eos_token_id=2, pad_token_id=0),
    # GPT-2 as transformers reads it from GGUF: 1024 positions, 4 * n_embd MLP
    "gpt2": dict(hf_architecture="GPT2LMHeadModel", position_embedding="learned", norm_class="layernorm",
                 mlp_class="mlp", activation="gelu_tanh", attn_bias=True, attn_out_bias=True, mlp_bias=True,
                 n_query_groups=4, block_size=1024, intermediate_size=256, norm_eps=1e-5, tie_embeddings=True),
}
ARCH_OF = {"llama": "llama", "llama_tied": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
           "phi3": "phi3", "gpt2": "gpt2"}


class _VocabOnly:
    """Stands in for a Tokenizer: transformers' GGUF GPT-2 loader reads vocab_size from the token list."""

    def __init__(self, n: int) -> None:
        self.n = n

    def gguf_metadata(self) -> dict:
        return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": [f"t{i}" for i in range(self.n)],
                "tokenizer.ggml.token_type": [1] * self.n}


def _tiny_model(family: str, seed: int = 0) -> GPT:
    return tiny_gpt(seed=seed, vector_noise=0.2, name=f"tiny-{family}", **{**TINY, **FAMILIES[family]})


def _from_state(config: Config, state: dict) -> GPT:
    model = GPT(config)
    model.load_state_dict(state, strict=not config.tie_embeddings)
    return model.eval()


def _ids(batch: int = 2, length: int = 19) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------
# round trips lmforge -> gguf -> lmforge
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_round_trip_f32_is_exact(family, tmp_path):
    model = _tiny_model(family)
    path = export_gguf(model.state_dict(), model.config, tmp_path / "m.gguf", dtype="f32")
    config, state, tokenizer = load_gguf(path)
    assert tokenizer is None  # no tokenizer was written
    for field in ("n_layer", "n_embd", "n_head", "n_query_groups", "head_size", "intermediate_size", "vocab_size",
                  "block_size", "attn_bias", "qk_norm", "tie_embeddings", "rotary_percentage", "norm_class",
                  "mlp_class", "activation", "position_embedding", "post_norm", "norm_unit_offset", "sliding_window",
                  "attn_logit_softcap", "final_logit_softcap", "scale_embeddings", "attn_out_bias", "mlp_bias",
                  "bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(config, field) == getattr(model.config, field), field
    assert config.norm_eps == pytest.approx(model.config.norm_eps)
    assert config.hf_architecture == model.config.hf_architecture
    if model.config.position_embedding == "rope":
        assert config.rope_base == model.config.rope_base
    assert ("lm_head.weight" in state) == (not model.config.tie_embeddings)
    for key, value in state.items():  # exact, except Gemma's norms: (w + 1) - 1 rounds in fp32
        torch.testing.assert_close(value, model.state_dict()[key], atol=2.4e-7 if family == "gemma2" else 0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(_from_state(config, state)(_ids()), model(_ids()), atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "phi3"])
def test_round_trip_f16_matches_f16_rounded_weights(family, tmp_path):
    model = _tiny_model(family)
    path = export_gguf(model.state_dict(), model.config, tmp_path / "m.gguf", dtype="f16")
    config, state, _ = load_gguf(path)
    rounded = _tiny_model(family)
    with torch.no_grad():  # what llama.cpp's f16 files hold: 2-D weights in f16, norms and biases in f32
        for p in rounded.parameters():
            if p.dim() > 1:
                p.copy_(p.half().float())
    loaded = _from_state(config, state)
    with torch.no_grad():
        ours, ref, full = loaded(_ids()), rounded(_ids()), model(_ids())
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # f16 keeps ~3 significant digits: the logits move, but only by rounding noise
    assert 0 < ((ours - full).norm() / full.norm()).item() < 1e-2


def test_load_dtype(tmp_path):
    model = _tiny_model("llama")
    path = export_gguf(model.state_dict(), model.config, tmp_path / "m.gguf", dtype="f32")
    _, state, _ = load_gguf(path, dtype="bfloat16")
    assert {v.dtype for v in state.values()} == {torch.bfloat16}
    _, state, _ = load_gguf(path, dtype=torch.float16)
    assert {v.dtype for v in state.values()} == {torch.float16}


@pytest.mark.parametrize("scaling", [
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},
])
def test_rope_scaling_round_trip(scaling, tmp_path):
    torch.manual_seed(0)
    config = Config(**{**TINY, "n_embd": 256, "n_head": 2, "n_query_groups": 1, "rope_base": 500000.0},
                    rope_scaling=scaling)
    model = GPT(config)
    model.init_weights()
    path = export_gguf(model.state_dict(), config, tmp_path / "m.gguf", dtype="f32")
    loaded, _, _ = load_gguf(path)
    assert loaded.rope_scaling == scaling
    names = {t.name for t in gguf.GGUFReader(path).tensors}
    assert ("rope_freqs.weight" in names) == (scaling["rope_type"] == "llama3")


# ---------------------------------------------------------------------------------------------
# the file is what llama.cpp expects
# ---------------------------------------------------------------------------------------------
def _llama_cpp_names(arch: gguf.MODEL_ARCH, n_layer: int) -> set[str]:
    """Every tensor name gguf-py (llama.cpp's own table) allows for `arch`."""
    names = set()
    for t in gguf.MODEL_TENSORS[arch]:
        template = gguf.TENSOR_NAMES[t]
        for i in range(n_layer):
            names |= {f"{template.format(bid=i)}.weight", f"{template.format(bid=i)}.bias"}
    return names


@pytest.mark.parametrize("family", ["llama", "llama_tied", "qwen2", "qwen3"])
def test_exported_file_layout(family, tmp_path):
    arch = ARCH_OF[family]
    model = _tiny_model(family)
    c = model.config
    path = export_gguf(model.state_dict(), c, tmp_path / "m.gguf", dtype="f16")
    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items()}
    assert meta["general.architecture"] == arch
    expected_meta = {
        "context_length": c.block_size, "embedding_length": c.n_embd, "block_count": c.n_layer,
        "feed_forward_length": c.intermediate_size, "attention.head_count": c.n_head,
        "attention.head_count_kv": c.n_query_groups, "rope.dimension_count": c.head_size,
        "vocab_size": c.vocab_size,
    }
    for key, value in expected_meta.items():
        assert meta[f"{arch}.{key}"] == value, key
    assert meta[f"{arch}.rope.freq_base"] == pytest.approx(c.rope_base)
    assert meta[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(c.norm_eps)
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    if c.head_size != c.n_embd // c.n_head:
        assert meta[f"{arch}.attention.key_length"] == c.head_size

    tensors = {t.name: t for t in reader.tensors}
    per_layer = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
    if c.qk_norm:
        per_layer += ["attn_q_norm", "attn_k_norm"]
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(c.n_layer) for n in per_layer}
    if not c.tie_embeddings:
        expected.add("output.weight")
    if c.attn_bias:
        expected |= {f"blk.{i}.attn_{n}.bias" for i in range(c.n_layer) for n in "qkv"}
    assert set(tensors) == expected
    # ggml order: fastest dimension first; 2-D weights f16, norms and biases f32 (as llama.cpp writes them)
    assert tensors["token_embd.weight"].shape.tolist() == [c.n_embd, c.vocab_size]
    assert tensors["blk.0.attn_k.weight"].shape.tolist() == [c.n_embd, c.n_query_groups * c.head_size]
    assert tensors["blk.0.ffn_down.weight"].shape.tolist() == [c.intermediate_size, c.n_embd]
    for name, t in tensors.items():
        want = gguf.GGMLQuantizationType.F16 if len(t.shape) == 2 else gguf.GGMLQuantizationType.F32
        assert t.tensor_type == want, name


@pytest.mark.parametrize("family", list(FAMILIES))
def test_exported_tensor_names_are_llama_cpp_names(family, tmp_path):
    model = _tiny_model(family)
    path = export_gguf(model.state_dict(), model.config, tmp_path / "m.gguf", dtype="f16")
    reader = gguf.GGUFReader(path)
    arch = ARCH_OF[family]
    assert reader.fields["general.architecture"].contents() == arch
    names = {t.name for t in reader.tensors}
    assert names <= _llama_cpp_names(gguf.MODEL_ARCH[arch.upper()], model.config.n_layer)
    n_tensors = len(model.state_dict()) - (1 if model.config.tie_embeddings else 0)
    if arch in ("phi3", "gpt2"):  # q/k/v fused into attn_qkv (and gate/up into ffn_up for phi3)
        assert "blk.0.attn_qkv.weight" in names and "blk.0.attn_q.weight" not in names
        n_tensors -= model.config.n_layer * (2 if arch == "phi3" else 4) + (model.config.n_layer if arch == "phi3" else 0)
    assert len(names) == n_tensors


def test_gemma2_norms_are_stored_plus_one(tmp_path):
    model = _tiny_model("gemma2")
    path = export_gguf(model.state_dict(), model.config, tmp_path / "m.gguf", dtype="f32")
    stored = {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}
    for ours, theirs in (("layers.1.post_mlp_norm.weight", "blk.1.post_ffw_norm.weight"), ("norm.weight", "output_norm.weight")):
        np.testing.assert_allclose(stored[theirs], model.state_dict()[ours].numpy() + 1.0, rtol=1e-6)


def test_llama_qk_rows_are_interleaved_per_head(tmp_path):
    """llama.cpp's rotary pairs (2j, 2j+1) must hold HF's rows (j, j + head_size/2) of each head."""
    model = _tiny_model("llama")
    path = export_gguf(model.state_dict(), model.config, tmp_path / "m.gguf", dtype="f32")
    stored = {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}
    hs = model.config.head_size
    for name, ours, heads in (("attn_q", "q_proj", model.config.n_head), ("attn_k", "k_proj", model.config.n_query_groups)):
        w = model.state_dict()[f"layers.0.self_attn.{ours}.weight"].numpy()
        g = stored[f"blk.0.{name}.weight"]
        for h in range(heads):
            np.testing.assert_array_equal(g[h * hs: (h + 1) * hs: 2], w[h * hs: h * hs + hs // 2])
            np.testing.assert_array_equal(g[h * hs + 1: (h + 1) * hs: 2], w[h * hs + hs // 2: (h + 1) * hs])
    # V and the other projections are stored as they are
    np.testing.assert_array_equal(stored["blk.0.attn_v.weight"], model.state_dict()["layers.0.self_attn.v_proj.weight"])


# ---------------------------------------------------------------------------------------------
# transformers reads our files the way it reads llama.cpp's
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_transformers_loads_exported_gguf(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = _tiny_model(family)
    tokenizer = _VocabOnly(model.config.vocab_size) if family == "gpt2" else None
    export_gguf(model.state_dict(), model.config, tmp_path / "tiny.gguf", dtype="f32", tokenizer=tokenizer)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", dtype=torch.float32).eval()
    assert type(hf).__name__ == model.config.hf_architecture
    with torch.no_grad():
        torch.testing.assert_close(hf(_ids()).logits, model(_ids()), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# export refuses what llama.cpp cannot express
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,feature", [
    (dict(position_embedding="learned"), "learned position embeddings"),
    (dict(parallel_residual=True), "parallel residual"),
    (dict(hf_architecture="GPT2LMHeadModel", position_embedding="learned", norm_class="layernorm",
          mlp_class="mlp", activation="gelu_tanh", attn_bias=True, attn_out_bias=True, mlp_bias=True,
          parallel_residual=True), "parallel residual blocks cannot be expressed by llama.cpp's gpt2"),
    (dict(sliding_window=16), "sliding-window attention"),
    (dict(final_logit_softcap=30.0), "final logit soft-capping"),
    (dict(norm_class="layernorm"), "norm_class='layernorm'"),
    (dict(mlp_class="mlp", activation="gelu"), "mlp_class='mlp'"),
    (dict(rotary_percentage=0.5), "partial rotary"),
])
def test_export_rejects_unexpressible_configs(overrides, feature, tmp_path):
    config = Config(name="odd", **{**TINY, **overrides})
    model = GPT(config)
    with pytest.raises(LmforgeError, match=f"cannot export 'odd' to GGUF: {feature}") as e:
        export_gguf(model.state_dict(), config, tmp_path / "m.gguf")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "m.gguf").exists()


def test_export_rejects_state_dict_of_another_config(tmp_path):
    model = _tiny_model("llama")
    other = Config(name="other", **{**TINY, "n_layer": 3})
    with pytest.raises(LmforgeError, match="state dict lacks 'layers.2."):
        export_gguf(model.state_dict(), other, tmp_path / "m.gguf")


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def exported(tmp_path):
    model = _tiny_model("llama")
    return export_gguf(model.state_dict(), model.config, tmp_path / "good.gguf", dtype="f32")


def test_missing_file(tmp_path):
    with pytest.raises(LmforgeError, match=r"nope\.gguf: file not found"):
        load_gguf(tmp_path / "nope.gguf")


@pytest.mark.parametrize("fraction", [0.001, 0.5, 0.999])
def test_truncated_file(exported, tmp_path, fraction):
    data = exported.read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[: max(8, int(len(data) * fraction))])
    with pytest.raises(LmforgeError, match=r"cut\.gguf: truncated or corrupt GGUF file \(") as e:
        load_gguf(bad)
    assert "\n" not in str(e.value)


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_text('{"model_type": "llama"}')
    with pytest.raises(LmforgeError, match=r"model\.gguf: not a GGUF file"):
        load_gguf(bad)


def test_unknown_architecture(tmp_path):
    path = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(path, "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(LmforgeError, match=r"mamba\.gguf: GGUF architecture 'mamba' is not supported"):
        load_gguf(path)


def test_tensor_not_matching_metadata(exported, tmp_path):
    """A file whose tensors disagree with its metadata is refused, naming the tensor."""
    reader = gguf.GGUFReader(exported)
    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(path, "llama")
    for key, field in reader.fields.items():
        if key.startswith("llama."):
            value = field.contents()
            if key == "llama.feed_forward_length":
                value = 96  # the tensors say 128
            w.add_uint32(key, value) if isinstance(value, int) else w.add_float32(key, value)
    for t in reader.tensors:
        w.add_tensor(t.name, np.array(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(LmforgeError, match=r"odd\.gguf: layers\.0\.mlp\.(gate|up|down)_proj\.weight has shape"):
        load_gguf(path)


# ---------------------------------------------------------------------------------------------
# the real SmolLM2-135M-Instruct (Q4_1 + Q8_0) file
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def smollm2_file():
    from helpers import asset

    return asset("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2(smollm2_file):
    config, state, tokenizer = load_gguf(smollm2_file)
    return config, _from_state(config, state), tokenizer


@pytest.fixture(scope="session")
def smollm2_hf_tokenizer(smollm2_file):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_file.parent, gguf_file=smollm2_file.name)


@pytest.fixture(scope="session")
def austen_text():
    from helpers import asset

    text = (asset("austen") / "pride_and_prejudice.txt").read_text(encoding="utf-8")
    return text[100_000:104_000]  # a fixed passage from chapter 3 (> 512 tokens)


def _tiny_bpe_meta() -> dict:
    """A byte-level BPE vocabulary in llama.cpp's `tokenizer.*` keys: 256 bytes, 3 merges, 2 control tokens."""
    from lmforge.tokenizer import bytes_to_unicode

    tokens = list(bytes_to_unicode().values()) + ["Ġt", "he", "Ġthe", "<|im_start|>", "<|im_end|>"]
    return {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * (len(tokens) - 2) + [3, 3], "tokenizer.ggml.merges": ["Ġ t", "h e", "Ġt he"],
        "tokenizer.ggml.bos_token_id": 259, "tokenizer.ggml.eos_token_id": 260,
        "tokenizer.chat_template": "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}",
    }


def test_export_with_tiny_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from lmforge.tokenizer import Tokenizer, read_gguf_metadata

    meta = _tiny_bpe_meta()
    tok = Tokenizer.from_gguf_metadata(meta)
    model = _tiny_model("llama")
    config = Config(**{**model.config.__dict__, "vocab_size": tok.vocab_size})
    model = GPT(config)
    model.init_weights()
    path = export_gguf(model.state_dict(), config, tmp_path / "tiny.gguf", tokenizer=tok)
    written = read_gguf_metadata(path, prefix="tokenizer.")
    for key, value in meta.items():
        if key != "tokenizer.ggml.pre":  # lmforge names the pre-tokenizer by what it does
            assert written[key] == value, key
    loaded_config, _, loaded = load_gguf(path)
    assert (loaded_config.bos_token_id, loaded_config.eos_token_id) == (259, 260)  # the tokenizer's ids
    text = " the<|im_end|> theme\n  café"
    assert loaded is not None and loaded.encode(text) == tok.encode(text)
    assert loaded.chat_template == meta["tokenizer.chat_template"]
    assert AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf").encode(text) == tok.encode(text, bos=False)


@pytest.mark.slow  # GGUFReader and transformers parse 49k tokens + 49k merges: ~1 min on a busy machine
def test_export_with_tokenizer(smollm2_file, tmp_path):
    """SmolLM2's tokenizer written into an exported file reads back identically, in llama.cpp's keys."""
    from transformers import AutoTokenizer

    from lmforge.tokenizer import Tokenizer, read_gguf_metadata

    tok = Tokenizer.from_gguf(smollm2_file)
    torch.manual_seed(0)
    config = Config(name="tiny-smol", **{**TINY, "vocab_size": tok.vocab_size, "tie_embeddings": True,
                                         "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id})
    model = GPT(config)
    model.init_weights()
    path = export_gguf(model.state_dict(), config, tmp_path / "tiny.gguf", tokenizer=tok)
    original = read_gguf_metadata(smollm2_file, prefix="tokenizer.")
    written = read_gguf_metadata(path, prefix="tokenizer.")
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"):
        assert written[key] == original[key], key

    _, _, loaded = load_gguf(path)
    text = "Hello, Mr. Darcy! 12345 <|im_start|>user\n  café 🙂<|im_end|>"
    assert loaded is not None and loaded.encode(text) == tok.encode(text)
    assert loaded.chat_template == tok.chat_template
    hf = AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    assert hf.encode(text) == tok.encode(text, bos=False)


def _perplexity(logits: torch.Tensor, ids: torch.Tensor) -> float:
    loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
    return math.exp(loss.item())


@pytest.mark.slow  # ~1 min on an idle machine: our load + transformers' load of the same file
def test_smollm2_matches_transformers(smollm2, smollm2_file, smollm2_hf_tokenizer, austen_text):
    from transformers import AutoModelForCausalLM

    config, model, tokenizer = smollm2
    assert (config.n_layer, config.n_embd, config.n_head, config.n_query_groups) == (30, 576, 9, 3)
    assert (config.vocab_size, config.rope_base, config.tie_embeddings) == (49152, 100000.0, True)
    assert (config.bos_token_id, config.eos_token_id) == (1, 2)
    assert model.lm_head.weight is model.embed_tokens.weight
    ids = torch.tensor([smollm2_hf_tokenizer.encode(austen_text)[:512]])
    assert ids.shape == (1, 512)
    if tokenizer is not None:  # lmforge's own GGUF tokenizer, where this build has one
        assert tokenizer.encode(austen_text, bos=False)[:512] == ids[0].tolist()
    hf = AutoModelForCausalLM.from_pretrained(smollm2_file.parent, gguf_file=smollm2_file.name,
                                              dtype=torch.float32).eval()
    with torch.no_grad():
        ours, ref = model(ids), hf(ids).logits
    torch.testing.assert_close(ours, ref, atol=2e-3, rtol=0)
    ppl, ref_ppl = _perplexity(ours, ids), _perplexity(ref, ids)
    assert ppl == pytest.approx(ref_ppl, rel=1e-3)
    assert 10.0 < ppl < 40.0, ppl  # ~18-28 on 512-token chunks of the novel


@pytest.mark.slow
def test_smollm2_answers_paris(smollm2, smollm2_hf_tokenizer):
    config, model, _ = smollm2
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = smollm2_hf_tokenizer.encode(prompt)
    cache = model.new_kv_cache(1, len(ids) + 32)
    x, pos, out = torch.tensor([ids]), torch.arange(len(ids)), []
    with torch.no_grad():
        for _ in range(32):  # greedy decoding with the KV cache
            nxt = int(model(x, input_pos=pos, cache=cache, logits_to_keep=1)[0, -1].argmax())
            if nxt in config.eos_ids or nxt == smollm2_hf_tokenizer.convert_tokens_to_ids("<|im_end|>"):
                break
            out.append(nxt)
            x, pos = torch.tensor([[nxt]]), pos[-1:] + 1
    answer = smollm2_hf_tokenizer.decode(out)
    assert "Paris" in answer, answer

