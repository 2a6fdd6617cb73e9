"""lmforge checkpoint directories: save/load round trip, SOURCE detection, one-line errors."""

import json

import pytest
import torch

from lmforge.api import LLM
from lmforge.checkpoint import detect_source, load_source, save_checkpoint
from lmforge.config import Config
from lmforge.errors import LmforgeError
from lmforge.model import GPT


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    cfg = Config(n_layer=2, n_embd=32, n_head=4, n_query_groups=2, vocab_size=50, tie_embeddings=True, eos_token_id=1)
    model = GPT(cfg)
    model.init_weights()
    save_checkpoint(tmp_path / "ck", model, cfg)
    return tmp_path / "ck", model


def test_round_trip_keeps_logits_and_config(ckpt):
    path, model = ckpt
    assert {p.name for p in path.iterdir()} >= {"model.safetensors", "config.json", "generation_config.json"}
    llm = LLM.load(path)
    x = torch.randint(0, 50, (2, 7))
    assert torch.equal(llm.model(x), model.eval()(x))
    assert llm.config == model.config
    assert llm.model.lm_head.weight is llm.model.embed_tokens.weight  # tie survives the round trip
    json.loads((path / "config.json").read_text())["lmforge_config_version"]


def test_load_in_bfloat16(ckpt):
    model, _, _ = load_source(ckpt[0], dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert model.inv_freq.dtype == torch.float32  # rotary frequencies stay precise


def test_detect_source(ckpt, tmp_path):
    assert detect_source(ckpt[0]) == "lmforge"
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "llama"}')
    assert detect_source(tmp_path / "hf") == "hf"
    assert detect_source("HuggingFaceTB/SmolLM2-135M") == "repo"


def test_bad_sources_give_one_line_errors(ckpt, tmp_path):
    with pytest.raises(LmforgeError, match="no such file or directory"):
        LLM.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmforgeError, match="empty: not a model directory"):
        LLM.load(tmp_path / "empty")
    path = ckpt[0]
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LmforgeError, match=r"model.safetensors: truncated or corrupt") as e:
        LLM.load(path)
    assert "\n" not in str(e.value)


def test_weights_not_matching_config(ckpt):
    path, _ = ckpt
    cfg = json.loads((path / "config.json").read_text())
    cfg["n_layer"] = 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LmforgeError, match="missing.*layers.2"):
        LLM.load(path)


def test_config_typo_in_checkpoint(ckpt):
    path, _ = ckpt
    cfg = json.loads((path / "config.json").read_text())
    cfg["n_embed"] = cfg.pop("n_embd")
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LmforgeError, match="unknown config key 'n_embed'.*n_embd"):
        LLM.load(path)


def test_hub_download_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path))
    with pytest.raises(LmforgeError, match="could not download 'no-such-org/no-such-model'") as e:
        LLM.load("no-such-org/no-such-model")
    assert "\n" not in str(e.value)
