"""Core GPT behaviour: KV-cached decoding equals a full forward, per-row positions, masks, errors."""

import pytest
import torch
from helpers import tiny_gpt

from lmforge.config import Config, ConfigError


def test_param_count_matches_module(family_model):
    _, model = family_model
    assert sum(p.numel() for p in model.parameters()) == model.config.num_parameters()


def test_kv_cache_decoding_equals_full_forward(family_model):
    _, model = family_model
    x = torch.randint(0, 96, (2, 13))
    with torch.no_grad():
        full = model(x)
        cache = model.new_kv_cache(2, 32)
        parts = [model(x[:, :6], torch.arange(6), cache)]
        parts += [model(x[:, t : t + 1], torch.tensor([t]), cache) for t in range(6, 13)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_rows_at_different_positions_share_one_cache():
    """Two prompts of different lengths decoded together equal each decoded alone (no left padding)."""
    model = tiny_gpt(sliding_window=4, n_query_groups=2)
    a, b = torch.randint(0, 96, (1, 9)), torch.randint(0, 96, (1, 5))
    with torch.no_grad():
        ref_a, ref_b = model(a)[0, -1], model(b)[0, -1]
        cache = model.new_kv_cache(2, 16)
        # prefill both rows right-padded to 9; row 1's padding writes slots that it will overwrite later
        batch = torch.cat([a, torch.cat([b, torch.zeros(1, 4, dtype=torch.long)], 1)])
        logits = model(batch, torch.arange(9).expand(2, 9), cache)
        torch.testing.assert_close(logits[0, -1], ref_a, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits[1, 4], ref_b, atol=1e-5, rtol=1e-5)
        # one decode step with each row at its own position
        nxt = torch.tensor([[3], [7]])
        step = model(nxt, torch.tensor([[9], [5]]), cache)
        torch.testing.assert_close(step[0, 0], model(torch.cat([a, nxt[:1]], 1))[0, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step[1, 0], model(torch.cat([b, nxt[1:]], 1))[0, -1], atol=1e-5, rtol=1e-5)


def test_sliding_window_limits_attention():
    """A token beyond the window no longer influences the last position."""
    model = tiny_gpt(sliding_window=3, n_layer=1)
    x = torch.randint(0, 96, (1, 8))
    y = x.clone()
    y[0, 0] = (x[0, 0] + 1) % 96
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0, -1], model(y)[0, -1])
        assert not torch.allclose(model(x)[0, 1], model(y)[0, 1])


def test_replaceable_head_and_logits_to_keep():
    model = tiny_gpt()
    model.lm_head = torch.nn.Linear(64, 2)
    out = model(torch.randint(0, 96, (3, 7)), logits_to_keep=1)
    assert out.shape == (3, 1, 2)


def test_errors():
    with pytest.raises(ConfigError, match="n_query_groups"):
        Config(n_head=4, n_query_groups=3)
    with pytest.raises(ConfigError, match="unknown config key 'n_layers'.*n_layer"):
        Config.from_dict({"n_layers": 2})
    with pytest.raises(ValueError, match="block_size"):
        tiny_gpt()(torch.zeros(1, 65, dtype=torch.long))
    model = tiny_gpt()
    with pytest.raises(ValueError, match="KV cache"):
        model(torch.zeros(1, 1, dtype=torch.long), torch.tensor([8]), model.new_kv_cache(1, 8))


def test_packed_documents_equal_each_alone(family_model):
    """Packing: no attention across documents and positions restarting per document, so each packed
    document's logits equal the document run alone (the packed loss is the unpacked one)."""
    _, model = family_model
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(0, 96, (n,), generator=g) for n in (5, 3, 9, 1)]
    packed = torch.cat(docs)[None]
    segments = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    with torch.no_grad():
        out = model(torch.cat([packed, packed.flip(1)]), segments=torch.cat([segments, segments.flip(1)]))
        start = 0
        for d in docs:
            torch.testing.assert_close(out[0, start:start + len(d)], model(d[None])[0], atol=1e-5, rtol=1e-5)
            start += len(d)
        torch.testing.assert_close(out[1, :1], model(docs[-1].flip(0)[None])[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="segments"):
        model(packed, input_pos=torch.arange(packed.size(1)), segments=segments)


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_gated_mlp_gradient_is_the_plain_expressions(activation):
    """The gated MLP keeps only gate and up for its backward (`_GatedActivation`): its values and
    gradients are those of autograd through `down(act(gate(x)) * up(x))`, and finite differences agree."""
    mlp = tiny_gpt("llama-gqa", activation=activation).layers[0].mlp.double()
    assert mlp.gated
    x = torch.randn(2, 3, mlp.up_proj.in_features, dtype=torch.float64, requires_grad=True)

    def plain(x):
        return mlp.down_proj(mlp.act(mlp.gate_proj(x)) * mlp.up_proj(x))

    torch.testing.assert_close(mlp(x), plain(x), rtol=0, atol=0)
    ours = torch.autograd.grad(mlp(x).sin().sum(), [x, *mlp.parameters()])
    theirs = torch.autograd.grad(plain(x).sin().sum(), [x, *mlp.parameters()])
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(mlp, (x[:1, :2],), eps=1e-6, atol=1e-7)
