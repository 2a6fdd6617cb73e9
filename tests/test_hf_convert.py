"""HF checkpoint conversion: logits parity with transformers for every supported family.

Each case builds a tiny random-weight model with transformers, saves it, loads it through
`load_hf_checkpoint` into our `GPT`, compares logits, exports it back with `export_hf` and loads
*that* with transformers again. `must_differ` proves the case exercises its family's features:
switching the feature off in our config must change the logits.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

from lmforge.config import Config, ConfigError  # noqa: E402
from lmforge.convert.hf import CONVERTERS, export_hf, load_hf_checkpoint  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.hf_config import ARCHITECTURES, config_to_hf  # noqa: E402
from lmforge.model import GPT  # noqa: E402

B, T, VOCAB = 2, 24, 128
_GQA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)

# id -> (model_type, config kwargs, checks on our Config, fields whose removal must change logits)
CASES: dict[str, tuple[str, dict, dict, dict]] = {
    "gpt2": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64,
                          bos_token_id=0, eos_token_id=0),
             dict(position_embedding="learned", tie_embeddings=True), {}),
    "pythia": ("gpt_neox", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                                vocab_size=VOCAB, rotary_pct=0.25),
               dict(rotary_percentage=0.25, parallel_residual=True), {"parallel_residual": False}),
    "llama2": ("llama", dict(_GQA, num_key_value_heads=4, rms_norm_eps=1e-5), dict(n_query_groups=4), {}),
    "llama3.1": ("llama", dict(_GQA, max_position_embeddings=128, eos_token_id=[2, 3], rope_theta=500000.0,
                               rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                 high_freq_factor=4.0, original_max_position_embeddings=16)),
                 dict(eos_token_id=[2, 3], rope_base=500000.0), {"rope_scaling": None}),
    "tinyllama": ("llama", dict(_GQA, num_attention_heads=8, num_key_value_heads=2), dict(q_per_kv=4), {}),
    "smollm2": ("llama", dict(_GQA, num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True,
                              rope_theta=100000.0), dict(tie_embeddings=True), {}),
    "mistral": ("mistral", dict(_GQA, sliding_window=8), dict(sliding_window=8, sliding_window_pattern=1),
                {"sliding_window": None}),
    "mixtral": ("mixtral", dict(_GQA, num_local_experts=4, num_experts_per_tok=2),
                dict(mlp_class="moe", n_expert=4, n_expert_per_token=2), {"n_expert_per_token": 1}),
    "phi2": ("phi", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                         vocab_size=VOCAB, partial_rotary_factor=0.4),
             dict(rotary_percentage=0.4, shared_attention_norm=True, lm_head_bias=True), {}),
    "phi3": ("phi3", dict(_GQA, sliding_window=8, pad_token_id=0), dict(sliding_window=8),
             {"sliding_window": None}),
    "gemma2": ("gemma2", dict(_GQA, head_dim=32, sliding_window=8, query_pre_attn_scalar=24,
                              attn_logit_softcapping=1.0, final_logit_softcapping=1.5, pad_token_id=0),
               dict(head_size=32, sliding_window=8, sliding_window_pattern=2, attn_scale_base=24.0,
                    norm_unit_offset=True, scale_embeddings=True, post_norm=True),
               {"sliding_window_pattern": 1, "attn_logit_softcap": None, "final_logit_softcap": None}),
    "qwen2.5": ("qwen2", dict(_GQA, tie_word_embeddings=True), dict(attn_bias=True, attn_out_bias=False), {}),
    "qwen3": ("qwen3", dict(_GQA, head_dim=32), dict(qk_norm="head", head_size=32), {}),
    "olmo2": ("olmo2", dict(_GQA), dict(qk_norm="full", pre_norm=False, post_norm=True), {}),
}


@pytest.fixture(autouse=True, scope="module")
def _quiet_transformers():
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    yield


def _hf_model(case: str):
    model_type, kwargs, _, _ = CASES[case]
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(model_type, **kwargs)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():  # default init leaves biases 0 and norms 1: perturb so every tensor matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _ids(vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def _hf_logits(model, idx: torch.Tensor) -> torch.Tensor:
    return model(idx).logits.float()


@torch.no_grad()
def _our_logits(config: Config, state_dict: dict, idx: torch.Tensor) -> torch.Tensor:
    model = GPT(config).eval()
    model.load_state_dict(state_dict)
    return model(idx).float()


def _assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_every_architecture_has_a_case_and_a_converter():
    assert {arch.model_type for arch in ARCHITECTURES.values()} == {mt for mt, *_ in CASES.values()}
    assert set(CONVERTERS) == set(ARCHITECTURES)


@pytest.mark.parametrize("case", list(CASES))
def test_parity_load_and_export(case: str, tmp_path: Path):
    _, _, checks, must_differ = CASES[case]
    hf = _hf_model(case)
    hf.save_pretrained(tmp_path / "hf")
    idx = _ids()
    expected = _hf_logits(hf, idx)

    config, sd = load_hf_checkpoint(tmp_path / "hf")
    for key, value in checks.items():
        assert getattr(config, key) == value, key
    ours = _our_logits(config, sd, idx)
    _assert_close(ours, expected)

    for key, value in must_differ.items():  # the case really exercises this feature
        altered = _our_logits(dataclasses.replace(config, **{key: value}), sd, idx)
        assert (altered - expected).abs().max() > 1e-3, f"{key}={value!r} did not change the logits"

    export_hf(sd, config, tmp_path / "out")
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["config.json", "generation_config.json", "model.safetensors"]
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    _assert_close(_hf_logits(back, idx), expected)
    # and our own loader reads our export to the same config
    config2, sd2 = load_hf_checkpoint(tmp_path / "out")
    assert dataclasses.replace(config2, name=config.name) == config
    _assert_close(_our_logits(config2, sd2, idx), expected)


def test_tied_head_is_stored_once(tmp_path: Path):
    from safetensors import safe_open

    hf = _hf_model("smollm2")
    hf.save_pretrained(tmp_path / "hf")
    config, sd = load_hf_checkpoint(tmp_path / "hf")
    assert sd["lm_head.weight"] is sd["embed_tokens.weight"]
    export_hf(sd, config, tmp_path / "out")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert gen == {"bos_token_id": 1, "eos_token_id": 2}


def test_mixtral_fused_expert_layout(tmp_path: Path):
    """transformers 5 keeps experts as 3-D `gate_up_proj`/`down_proj`; such files load too."""
    from safetensors.torch import save_file

    hf = _hf_model("mixtral")
    d = tmp_path / "fused"
    hf.config.save_pretrained(d)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert "model.layers.0.mlp.experts.gate_up_proj" in state
    save_file(state, str(d / "model.safetensors"))
    idx = _ids()
    config, sd = load_hf_checkpoint(d)
    _assert_close(_our_logits(config, sd, idx), _hf_logits(hf, idx))


def test_sharded_safetensors(tmp_path: Path):
    hf = _hf_model("llama2")
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    idx = _ids()
    config, sd = load_hf_checkpoint(tmp_path)
    _assert_close(_our_logits(config, sd, idx), _hf_logits(hf, idx))


def test_pytorch_bin_checkpoint_with_stored_tied_head(tmp_path: Path):
    hf = _hf_model("smollm2")
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")  # includes lm_head.weight although tied
    idx = _ids()
    config, sd = load_hf_checkpoint(tmp_path / "config.json", dtype="float32")
    _assert_close(_our_logits(config, sd, idx), _hf_logits(hf, idx))


def test_dtype_cast(tmp_path: Path):
    _hf_model("qwen3").save_pretrained(tmp_path)
    _, sd = load_hf_checkpoint(tmp_path, dtype=torch.bfloat16)
    assert {t.dtype for t in sd.values()} == {torch.bfloat16}
    with pytest.raises(LmforgeError, match="int8"):
        load_hf_checkpoint(tmp_path, dtype="int8")


# ---------------------------------------------------------------------------------------------
# bad input: one line naming the culprit
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("llama")
    _hf_model("llama2").save_pretrained(d)
    return d


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_missing_path(tmp_path: Path):
    with pytest.raises(LmforgeError) as e:
        load_hf_checkpoint(tmp_path / "nope")
    assert str(tmp_path / "nope") in _one_line_error(e)


def test_dir_without_config(saved_llama: Path, tmp_path: Path):
    d = _copy(saved_llama, tmp_path / "m")
    (d / "config.json").unlink()
    with pytest.raises(LmforgeError) as e:
        load_hf_checkpoint(d)
    assert str(d) in _one_line_error(e) and "config.json" in str(e.value)


def test_dir_without_weights(saved_llama: Path, tmp_path: Path):
    d = _copy(saved_llama, tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(LmforgeError, match="no weights found") as e:
        load_hf_checkpoint(d)
    assert str(d) in _one_line_error(e)


def test_unknown_architecture(saved_llama: Path, tmp_path: Path):
    d = _copy(saved_llama, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["FooForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as e:
        load_hf_checkpoint(d)
    msg = _one_line_error(e)
    assert str(d / "config.json") in msg
    assert "architecture 'FooForCausalLM' is not supported (supported: GPT2LMHeadModel" in msg


def test_missing_required_config_key(saved_llama: Path, tmp_path: Path):
    d = _copy(saved_llama, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    del cfg["hidden_size"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as e:
        load_hf_checkpoint(d)
    assert _one_line_error(e) == f"{d / 'config.json'}: required key 'hidden_size' is missing"


def test_mistyped_config_key():
    hf = config_to_hf(Config())
    hf["num_hidden_layers"] = "2"
    with pytest.raises(ConfigError, match=r"x/config.json: key 'num_hidden_layers' must be an int, got '2'"):
        Config.from_hf(hf, "x/config.json")


def test_truncated_safetensors(saved_llama: Path, tmp_path: Path):
    d = _copy(saved_llama, tmp_path / "m")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(LmforgeError) as e:
        load_hf_checkpoint(d)
    msg = _one_line_error(e)
    assert msg.startswith(f"{f}: truncated or corrupt safetensors file (") and msg.endswith("re-download it")


def test_corrupt_bin(saved_llama: Path, tmp_path: Path):
    d = _copy(saved_llama, tmp_path / "m")
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(LmforgeError) as e:
        load_hf_checkpoint(d)
    assert _one_line_error(e).startswith(f"{d / 'pytorch_model.bin'}: not a readable PyTorch weights file")


def _rewrite_weights(d: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    f = d / "model.safetensors"
    state = load_file(str(f))
    edit(state)
    save_file(state, str(f))
    return f


def test_unknown_key(saved_llama: Path, tmp_path: Path):
    d = _copy(saved_llama, tmp_path / "m")
    f = _rewrite_weights(d, lambda s: s.update({"model.layers.0.self_attn.mystery.weight": torch.zeros(2)}))
    with pytest.raises(LmforgeError) as e:
        load_hf_checkpoint(d)
    msg = _one_line_error(e)
    assert str(f) in msg and "'model.layers.0.self_attn.mystery.weight'" in msg


def test_missing_key(saved_llama: Path, tmp_path: Path):
    d = _copy(saved_llama, tmp_path / "m")
    _rewrite_weights(d, lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(LmforgeError, match=r"missing key 'model.layers.1.mlp.up_proj.weight'") as e:
        load_hf_checkpoint(d)
    assert str(d) in _one_line_error(e)


def test_shape_mismatch(saved_llama: Path, tmp_path: Path):
    d = _copy(saved_llama, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LmforgeError, match=r"model.safetensors: key 'model.layers.0.mlp.\w+_proj.weight' has shape"):
        load_hf_checkpoint(d)


def test_missing_shard(tmp_path: Path):
    _hf_model("llama2").save_pretrained(tmp_path, max_shard_size="40KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(LmforgeError, match=f"shard '{shard.name}' is missing"):
        load_hf_checkpoint(tmp_path)


# ---------------------------------------------------------------------------------------------
# config.json details
# ---------------------------------------------------------------------------------------------
def test_legacy_rope_keys_are_read():
    """transformers 4 files spell rotary settings at top level (`rope_theta`, `rope_scaling`, `rotary_pct`)."""
    llama31 = dict(architectures=["LlamaForCausalLM"], hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=131072,
                   rope_theta=500000.0, rope_scaling=dict(factor=32.0, high_freq_factor=4.0, low_freq_factor=1.0,
                                                          original_max_position_embeddings=8192, rope_type="llama3"))
    c = Config.from_hf(llama31, "llama/config.json")
    assert c.rope_base == 500000.0 and c.rope_scaling["factor"] == 32.0
    assert c.rope_scaling["original_max_position_embeddings"] == 8192
    neox = dict(architectures=["GPTNeoXForCausalLM"], hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=256, vocab_size=VOCAB, rotary_pct=0.5, rotary_emb_base=5000)
    c = Config.from_hf(neox, "neox/config.json")
    assert (c.rotary_percentage, c.rope_base, c.parallel_residual) == (0.5, 5000.0, True)
    with pytest.raises(ConfigError, match=r"neox/config.json: rope type 'yarn' is not supported"):
        Config.from_hf(dict(neox, rope_scaling={"rope_type": "yarn", "factor": 4.0}), "neox/config.json")


def test_model_type_without_architectures():
    hf = config_to_hf(Config(hf_architecture="Qwen3ForCausalLM", qk_norm="head"))
    del hf["architectures"]
    assert Config.from_hf(hf).hf_architecture == "Qwen3ForCausalLM"


def test_export_refuses_what_the_architecture_cannot_express(tmp_path: Path):
    config = Config(vocab_size=VOCAB, sliding_window=8)  # LlamaForCausalLM has no sliding window
    with pytest.raises(ConfigError, match=r"LlamaForCausalLM cannot express sliding_window=8"):
        config_to_hf(config)
    sd = GPT(config).state_dict()
    with pytest.raises(ConfigError):
        export_hf(sd, config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_rejects_foreign_state_dict_keys(tmp_path: Path):
    config = Config(vocab_size=VOCAB)
    sd = dict(GPT(config).state_dict(), **{"classifier.weight": torch.zeros(2, 64)})
    with pytest.raises(LmforgeError, match=r"'classifier.weight' has no place in a LlamaForCausalLM checkpoint"):
        export_hf(sd, config, tmp_path / "out")


def test_export_rejects_replaced_head(tmp_path: Path):
    config = Config(vocab_size=VOCAB)
    model = GPT(config)
    model.lm_head = torch.nn.Linear(64, 2, bias=False)  # a classifier
    with pytest.raises(LmforgeError, match=r"'lm_head.weight' has shape \(2, 64\)"):
        export_hf(model.state_dict(), config, tmp_path / "out")


def test_gpt2_hub_layout_without_prefix_and_with_mask_buffers(tmp_path: Path):
    """The original GPT-2 files name keys `h.0.…`/`wte.weight` and carry `attn.bias` causal masks."""
    from safetensors.torch import save_file

    hf = _hf_model("gpt2")
    hf.config.save_pretrained(tmp_path)
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
    save_file(state, str(tmp_path / "model.safetensors"))
    idx = _ids()
    config, sd = load_hf_checkpoint(tmp_path)
    _assert_close(_our_logits(config, sd, idx), _hf_logits(hf, idx))


def test_registry_style_configs_export():
    """Equivalent spellings (explicit attn_scale_base, [eos]) are not mistaken for lost features."""
    c = Config(hf_architecture="Gemma2ForCausalLM", head_size=32, attn_scale_base=32, eos_token_id=[1],
               norm_unit_offset=True, post_norm=True, scale_embeddings=True, tie_embeddings=True,
               activation="gelu_tanh", sliding_window=16, sliding_window_pattern=2)
    hf = config_to_hf(c)
    assert hf["query_pre_attn_scalar"] == 32 and hf["layer_types"] == ["sliding_attention", "full_attention"]


def test_fused_experts_for_another_expert_count(tmp_path: Path):
    from safetensors.torch import save_file

    hf = _hf_model("mixtral")
    hf.config.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "model.safetensors"))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_local_experts"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LmforgeError, match=r"model.safetensors: key 'model.layers.0.mlp.(gate.weight|experts.\w+)'"):
        load_hf_checkpoint(tmp_path)


def test_modules_import_without_torch():
    """Config loading and the converter table stay light (the CLI imports them at start-up)."""
    import subprocess
    import sys

    code = "import sys, lmforge.hf_config, lmforge.convert.hf; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)



# any JSON, plus values near the valid ones (small sizes, the spellings the readers know)
_WORDS = st.sampled_from(["silu", "gelu", "gelu_new", "default", "linear", "llama3", "yarn", "factor",
                          "sliding_attention", "full_attention", "LlamaForCausalLM", "qwen3"])
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 5000) | st.floats(-1e3, 1e6, allow_nan=False) | _WORDS
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_WORDS | st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
_VALID_HF = [config_to_hf(Config(hf_architecture=name, n_layer=2, **extra)) for name, extra in (
    ("GPT2LMHeadModel", dict(position_embedding="learned", norm_class="layernorm", mlp_class="mlp",
                             activation="gelu_tanh", attn_bias=True, attn_out_bias=True, mlp_bias=True)),
    ("GPTNeoXForCausalLM", dict(norm_class="layernorm", mlp_class="mlp", activation="gelu", attn_bias=True,
                                attn_out_bias=True, mlp_bias=True, rotary_percentage=0.25, parallel_residual=True)),
    ("LlamaForCausalLM", dict(n_query_groups=2)),
    ("Gemma2ForCausalLM", dict(norm_unit_offset=True, post_norm=True, scale_embeddings=True, tie_embeddings=True,
                               activation="gelu_tanh", sliding_window=16, sliding_window_pattern=2)),
    ("Qwen3ForCausalLM", dict(qk_norm="head")),
)]


@st.composite
def _edited_config_json(draw) -> dict:
    hf = json.loads(json.dumps(draw(st.sampled_from(_VALID_HF))))
    keys = sorted(set(hf) | {"head_dim", "layer_types", "rope_scaling", "sliding_window"})
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(keys))
        if draw(st.booleans()):
            hf.pop(key, None)
        else:
            hf[key] = draw(st.integers(-2, 9) | _JSON_VALUES)
    return hf


@settings(max_examples=300, derandomize=True, deadline=None)
@given(hf=_edited_config_json())
def test_any_config_json_gives_a_buildable_config_or_one_line_error(hf):
    """A config.json edited at random (keys dropped or set to any JSON value) never gives a traceback,
    and what it accepts builds: the model has the parameters the config counts."""
    try:
        config = Config.from_hf(hf, "fuzz/config.json")
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz/config.json: "), str(e)
        return
    assert Config.from_dict(config.to_dict()) == config
    with torch.device("meta"):
        model = GPT(config)
    assert sum(p.numel() for p in model.parameters()) == config.num_parameters()


@pytest.mark.parametrize("edit, expected", [
    (dict(num_attention_heads=0, head_dim=None), "key 'num_attention_heads' must be a positive int, got 0"),
    (dict(intermediate_size=0), "intermediate_size must be an int >= 1, got 0"),
    (dict(num_hidden_layers=-1), "n_layer must be an int >= 1, got -1"),
    (dict(sliding_window=0), "sliding_window must be > 0"),
    (dict(architectures=[["LlamaForCausalLM"]]), "architecture ['LlamaForCausalLM'] is not supported"),
    (dict(architectures=None, model_type=["llama"]), "architecture ['llama'] is not supported"),
])
def test_config_json_values_that_cannot_build_a_model(edit, expected):
    hf = dict(config_to_hf(Config(hf_architecture="MistralForCausalLM", sliding_window=8)), **edit)
    with pytest.raises(ConfigError) as e:
        Config.from_hf(hf, "m/config.json")
    assert str(e.value).startswith("m/config.json: ") and expected in str(e.value) and "\n" not in str(e.value)
