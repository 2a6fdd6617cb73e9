"""The named-config registry: published sizes, GPT parity, (de)serialisation, lookup, `lmforge models`."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.cli import main as cli_main
from lmforge.config import Config, ConfigError, get_config, list_configs, named_configs
from lmforge.model import GPT
from lmforge.model_registry import ALIASES, FAMILY, FAMILY_MODULES
from lmforge.verbs.models import models, short_count

CONFIGS = named_configs()

# Parameter counts published for the checkpoints (model cards, safetensors metadata); each was also
# checked against the same architecture built by `transformers` on the meta device.
PUBLISHED = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "pythia-14m": 14_067_712,
    "pythia-160m": 162_322_944,
    "pythia-12b": 11_846_072_320,
    "Llama-2-7b-hf": 6_738_415_616,
    "Llama-2-13b-hf": 13_015_864_320,
    "Llama-2-70b-hf": 68_976_648_192,
    "Llama-3-8B": 8_030_261_248,
    "Llama-3-70B": 70_553_706_496,
    "Llama-3.1-405B": 405_853_388_800,
    "Llama-3.2-1B": 1_235_814_400,
    "TinyLlama-1.1B": 1_100_048_384,
    "Mistral-7B-v0.1": 7_241_732_096,
    "Mistral-7B-v0.3": 7_248_023_552,
    "Mixtral-8x7B-v0.1": 46_702_792_704,
    "phi-2": 2_779_683_840,
    "Phi-3-mini-4k-instruct": 3_821_079_552,
    "gemma-2-2b": 2_614_341_888,
    "gemma-2-9b": 9_241_705_984,
    "gemma-2-27b": 27_227_128_320,
    "Qwen2.5-0.5B": 494_032_768,
    "Qwen2.5-7B": 7_615_616_512,
    "Qwen3-0.6B": 596_049_920,
    "SmolLM2-135M": 134_515_008,
    "OLMo-2-1124-7B": 7_298_617_344,
}

# sizes the registry must carry (one name per checkpoint the project promises)
REQUIRED = [
    "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl",
    *(f"pythia-{s}" for s in ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")),
    "Llama-2-7b-hf", "Llama-2-13b-hf", "Llama-2-70b-hf", "Llama-3-8B", "Llama-3-70B",
    "Llama-3.1-8B", "Llama-3.1-70B", "Llama-3.1-405B", "Llama-3.2-1B", "Llama-3.2-3B", "TinyLlama-1.1B",
    "Mistral-7B-v0.1", "Mistral-7B-v0.3", "Mixtral-8x7B-v0.1", "phi-2", "Phi-3-mini-4k-instruct",
    "gemma-2-2b", "gemma-2-9b", "gemma-2-27b",
    *(f"Qwen2.5-{s}" for s in ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B")),
    *(f"Qwen3-{s}" for s in ("0.6B", "1.7B", "4B", "8B", "14B", "32B")),
    "SmolLM2-135M", "SmolLM2-360M", "SmolLM2-1.7B", "OLMo-2-1124-7B", "OLMo-2-1124-13B",
]


def _architecture_key(c: Config) -> str:
    """Configs that differ only in name, source or special-token ids build the same modules."""
    bare = dataclasses.replace(c, name="", hf_source=None, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return json.dumps(bare.to_dict(), sort_keys=True)


_UNIQUE: dict[str, Config] = {}
for _c in CONFIGS.values():
    _UNIQUE.setdefault(_architecture_key(_c), _c)
UNIQUE_ARCHITECTURES = list(_UNIQUE.values())


# ---- sizes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REQUIRED)
def test_required_sizes_are_registered(name):
    assert name in CONFIGS


@pytest.mark.parametrize("name,expected", PUBLISHED.items(), ids=list(PUBLISHED))
def test_num_parameters_matches_published_count(name, expected):
    assert get_config(name).num_parameters() == expected


@pytest.mark.parametrize("config", UNIQUE_ARCHITECTURES, ids=lambda c: c.name)
def test_gpt_on_meta_device_has_num_parameters(config):
    # the meta device allocates nothing, so even the 405B model builds in well under a second
    with torch.device("meta"):
        model = GPT(config)
    assert sum(p.numel() for p in model.parameters()) == config.num_parameters()


def test_every_config_is_covered_by_the_meta_device_check():
    covered = {_architecture_key(c) for c in UNIQUE_ARCHITECTURES}
    assert all(_architecture_key(c) in covered for c in CONFIGS.values())
    assert len(UNIQUE_ARCHITECTURES) < len(CONFIGS)  # variants share an architecture


# ---- data hygiene -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_round_trip_and_provenance(name):
    c = CONFIGS[name]
    assert Config.from_dict(c.to_dict()) == c
    assert Config.from_dict(json.loads(json.dumps(c.to_dict()))) == c  # survives a JSON file too
    org, _, repo = (c.hf_source or "").partition("/")
    assert org and repo and "/" not in repo, f"{name}: hf_source must be '<org>/<repo>', got {c.hf_source!r}"
    assert c.hf_architecture.endswith(("ForCausalLM", "LMHeadModel"))
    assert c.name == name and FAMILY[name] in FAMILY_MODULES


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hf_config_round_trip(name):
    # every named config is expressible as the HF config.json of its architecture
    c = CONFIGS[name]
    hf = c.to_hf()
    assert hf["architectures"] == [c.hf_architecture]
    assert Config.from_hf(hf) == dataclasses.replace(c, name=Config.from_hf(hf).name)


def _smallest_per_architecture() -> list[Config]:
    best: dict[str, Config] = {}
    for c in CONFIGS.values():
        if c.hf_architecture not in best or c.num_parameters() < best[c.hf_architecture].num_parameters():
            best[c.hf_architecture] = c
    return list(best.values())


@pytest.mark.parametrize("config", _smallest_per_architecture(), ids=lambda c: c.name)
def test_transformers_builds_the_same_parameter_count(config):
    transformers = pytest.importorskip("transformers")
    hf = config.to_hf()
    hf_config = transformers.AutoConfig.for_model(**hf)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    assert type(model).__name__ == config.hf_architecture
    assert sum(p.numel() for p in model.parameters()) == config.num_parameters()


def test_family_specific_fields():
    g = get_config("gemma-2-9b")
    # query_pre_attn_scalar 256 == head_size: the default scale, stored as None (as from_hf reads it)
    assert (g.sliding_window, g.sliding_window_pattern, g.head_size, g.attn_scale_base) == (4096, 2, 256, None)
    assert [g.layer_uses_sliding_window(i) for i in range(4)] == [True, False, True, False]
    assert (g.attn_logit_softcap, g.final_logit_softcap) == (50.0, 30.0)
    assert g.norm_unit_offset and g.scale_embeddings and g.post_norm and g.activation == "gelu_tanh"
    assert get_config("gemma-2-27b").attn_scale_base == 144.0  # d / n_head, not head_size 128
    assert get_config("Llama-3.1-8B").rope_scaling == {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert get_config("Llama-3.2-1B").rope_scaling["factor"] == 32.0
    assert get_config("Llama-3-8B").rope_scaling is None
    o = get_config("OLMo-2-1124-7B")
    assert (o.pre_norm, o.post_norm, o.qk_norm) == (False, True, "full")
    assert get_config("Qwen3-8B").qk_norm == "head" and get_config("Qwen2.5-7B").attn_bias
    p = get_config("phi-2")
    assert p.parallel_residual and p.shared_attention_norm and p.lm_head_bias and p.rope_n_elem == 32
    py = get_config("pythia-1b")
    assert py.parallel_residual and not py.shared_attention_norm and py.rope_n_elem == 64
    assert (py.vocab_size, get_config("gpt2").vocab_size) == (50304, 50257)
    m = get_config("Mixtral-8x7B-v0.1")
    assert (m.mlp_class, m.n_expert, m.n_expert_per_token) == ("moe", 8, 2)
    assert get_config("Llama-3.1-8B-Instruct").eos_ids == [128001, 128008, 128009]
    assert get_config("SmolLM2-135M-Instruct").eos_ids == [2]


# ---- lookup and overrides ----------------------------------------------------------------------
def test_lookup_is_case_insensitive_and_knows_aliases():
    assert get_config("GPT2-MEDIUM").name == "gpt2-medium"
    assert get_config("Meta-Llama-3-8B").name == "Llama-3-8B"
    assert get_config("olmo-2-7b").name == "OLMo-2-1124-7B"
    assert Config.from_name("smollm2-135m-instruct") == CONFIGS["SmolLM2-135M-Instruct"]
    assert all(target in CONFIGS for target in ALIASES.values())


def test_unknown_name_is_one_line_with_a_suggestion():
    with pytest.raises(ConfigError) as e:
        get_config("Lama-2-7b-hf")
    msg = str(e.value)
    assert "\n" not in msg and "'Lama-2-7b-hf'" in msg and "did you mean 'Llama-2-7b-hf'" in msg


def test_overrides_apply_and_registry_stays_untouched():
    c = get_config("pythia-160m", n_layer=2, block_size=128)
    assert (c.n_layer, c.block_size, c.n_embd) == (2, 128, 768)
    assert c.num_parameters() < CONFIGS["pythia-160m"].num_parameters()
    c.rope_scaling = {"mutated": True}
    d = get_config("Llama-3.1-8B")
    d.rope_scaling["factor"] = 1.0
    assert CONFIGS["Llama-3.1-8B"].rope_scaling["factor"] == 8.0
    assert list_configs()[0] is not CONFIGS["gpt2"]


def test_override_rederives_what_the_named_config_derived():
    c = get_config("gpt2", n_embd=128, n_head=4)
    assert (c.head_size, c.n_query_groups, c.intermediate_size) == (32, 4, 512)
    assert get_config("gemma-2-27b", n_embd=128).head_size == 128  # explicit (4608 != 32 * 128): kept
    llama = get_config("Llama-2-7b-hf", n_embd=256)
    assert (llama.head_size, llama.intermediate_size) == (8, 11008)  # 11008 was never 4 * n_embd: kept


def test_unknown_override_is_one_line_naming_it():
    with pytest.raises(ConfigError) as e:
        get_config("gpt2", n_layers=2)
    msg = str(e.value)
    assert "\n" not in msg and "'n_layers'" in msg and "'n_layer'" in msg


def test_inconsistent_override_is_a_config_error():
    with pytest.raises(ConfigError, match="n_query_groups"):
        get_config("Llama-3-8B", n_query_groups=5)  # 5 kv heads cannot serve 32 query heads


# the shape fields (the ones re-derived on override), `name` (a field too) and an unknown key
_OVERRIDE_KEYS = ["name", "vocab_size", "n_layer", "n_embd", "n_head", "n_query_groups", "head_size",
                  "intermediate_size", "block_size", "sliding_window", "n_layers"]


@settings(max_examples=200, derandomize=True, deadline=None)
@given(name=st.sampled_from(sorted(CONFIGS)), overrides=st.dictionaries(
    st.sampled_from(_OVERRIDE_KEYS),
    st.integers(-2, 9) | st.none() | st.booleans() | st.floats(-2, 2, allow_nan=False) | st.text(max_size=5),
    max_size=3))
def test_any_overrides_give_a_buildable_config_or_one_line_error(name, overrides):
    try:
        config = get_config(name, **overrides)
    except ConfigError as e:
        assert "\n" not in str(e), str(e)
        return
    try:
        with torch.device("meta"):
            model = GPT(config)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, ZeroDivisionError) as e:
        pytest.fail(f"get_config({name!r}, **{overrides}) was accepted but GPT fails: {e!r}")
    assert sum(p.numel() for p in model.parameters()) == config.num_parameters()


@pytest.mark.parametrize("family", FAMILY_MODULES)
def test_every_family_runs_when_shrunk(family):
    name = next(n for n, f in FAMILY.items() if f == family)
    c = get_config(name, n_layer=2, n_embd=64, n_head=4, n_query_groups=2, head_size=16,
                   intermediate_size=96, vocab_size=128, block_size=64)
    torch.manual_seed(0)
    model = GPT(c)
    model.init_weights()
    logits = model(torch.randint(0, 128, (2, 10)))
    assert logits.shape == (2, 10, 128) and torch.isfinite(logits).all()


# ---- `lmforge models` ----------------------------------------------------------------------------
def test_cli_lists_every_config(capsys):
    cli_main(["models"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["name", "family", "architecture"]
    listed = {line.split()[0] for line in lines[1:] if line.strip()}
    assert set(CONFIGS) <= listed
    row = next(line for line in lines if line.startswith("gpt2 "))
    assert row.split() == ["gpt2", "gpt2", "GPT2LMHeadModel", "124.4M", "124,439,808", "12", "768", "12/12", "1024"]
    assert f"{len(CONFIGS)} of {len(CONFIGS)} named configs" in out


def test_cli_filter(capsys):
    cli_main(["models", "--filter", "QWEN3"])
    out = capsys.readouterr().out
    names = {line.split()[0] for line in out.splitlines()[1:] if line.strip() and not line[0].isdigit()}
    assert names == {n for n in CONFIGS if n.startswith("Qwen3-")}
    assert "Llama-3.1-405B-Instruct" in _names_for("405b", capsys)


def _names_for(needle: str, capsys) -> set[str]:
    models(filter=needle)
    return {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:] if line.strip()}


def test_cli_filter_without_match_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["models", "--filter", "no-such-model"])
    assert "no named model config matches 'no-such-model'" in str(e.value.code)


def test_short_count():
    assert [short_count(n) for n in (999, 14_067_712, 124_439_808, 6_738_415_616, 405_853_388_800)] == [
        "999", "14.1M", "124.4M", "6.74B", "405.9B"]


def test_listing_models_does_not_import_torch():
    code = ("import sys, lmforge.cli; lmforge.cli.main(['models']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Llama-3.1-405B" in done.stdout


# ---- layering (#12) ------------------------------------------------------------------------------
_CONFIG_LAYER = {"lmforge.config", "lmforge.hf_config", "lmforge.model_registry", "lmforge.errors", "lmforge._io",
                 "lmforge.gemm"}  # the matrix-product back-end choice: imports only torch


def test_config_imports_its_data_and_nothing_imports_config_back():
    # every import counts, those inside functions too; only `if TYPE_CHECKING:` ones are left out
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("lmforge", exclude_type_checking_imports=True, cache_dir=None)
    for data in ("lmforge.hf_config", "lmforge.model_registry"):
        back = graph.find_shortest_chains(importer=data, imported="lmforge.config", as_packages=True)
        assert not back, f"{data} imports lmforge.config: {sorted(back)}"
        assert graph.find_shortest_chains(importer=data, imported="lmforge.model", as_packages=True) == set()
    # the model reaches the config layer and nothing above it
    assert graph.find_upstream_modules("lmforge.model") <= _CONFIG_LAYER
