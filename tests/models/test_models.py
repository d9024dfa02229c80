"""Language models: shapes, cost accounting checked against an independent counter, sampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mixkit.models import (
    LSTMLM,
    LSTMLMConfig,
    MoESpec,
    TransformerLM,
    TransformerLMConfig,
)
from mixkit.models.ffn import build_ffn
from mixkit.models.transformer_lm import KVCache
from mixkit.moe import HierarchicalMoE, MoE

V = 97


def lstm(moe=None, **kw):
    torch.manual_seed(0)
    return LSTMLM(LSTMLMConfig(vocab_size=V, d_model=32, ffn_hidden=64, moe=moe, dropout=0.0, **kw))


def transformer(moe=None, **kw):
    torch.manual_seed(0)
    cfg = dict(
        vocab_size=V, d_model=32, n_layers=4, n_heads=4, block_size=16, ffn_hidden=64, moe=moe
    )
    cfg.update(kw)
    return TransformerLM(TransformerLMConfig(**cfg))


def mm_macs_per_token(model, x_BT) -> dict[str, float]:
    """Multiply-adds per token of the matmuls under each module, counted by torch itself."""
    with FlopCounterMode(display=False) as counter:
        model(x_BT)
    return {k: sum(v.values()) / 2 / x_BT.numel() for k, v in counter.get_flop_counts().items()}


@pytest.mark.parametrize("make", [lstm, transformer])
@pytest.mark.parametrize(
    "moe",
    [
        None,
        MoESpec(num_experts=4, k=2, d_hidden=32),
        MoESpec(num_experts=16, k=2, d_hidden=32, groups=4, k_groups=2),  # the paper's hierarchical
    ],
    ids=["dense", "moe", "hierarchical"],
)
def test_forward_shapes_and_gradients(make, moe):
    model = make(moe)
    x_BT = torch.randint(0, V, (3, 16))
    logits_BTV = model(x_BT)
    assert logits_BTV.shape == (3, 16, V)
    loss = F.cross_entropy(logits_BTV.flatten(0, 1), x_BT.flatten()) + model.aux_loss()
    loss.backward()
    # every parameter, experts and router included, receives a gradient
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []


def test_dense_ffn_and_softmax_macs_match_torch_flop_counter():
    model = lstm()
    x_BT = torch.randint(0, V, (2, 8))
    counted = mm_macs_per_token(model, x_BT)
    parts = model.macs_breakdown()
    assert parts["ffn"] == counted["LSTMLM.ffns.0"]
    assert parts["softmax"] == counted["LSTMLM.lm_head"]
    # torch does not count the fused LSTM kernel: each LSTM weight is used once per token
    lstm_weights = sum(
        p.numel() for n, p in model.named_parameters() if n.startswith("lstm") and "weight" in n
    )
    assert parts["lstm"] == lstm_weights


def test_transformer_projection_macs_match_torch_flop_counter():
    model = transformer()
    x_BT = torch.randint(0, V, (2, 16))  # full block: the attention term assumes block_size
    counted = mm_macs_per_token(model, x_BT)
    c = model.cfg
    attention_scores = c.n_layers * 2 * c.block_size * c.d_model  # QK^T and AV, not matmuls here
    total_mm = counted["Global"]
    assert model.active_macs_per_token() - attention_scores == total_mm


def test_moe_costs_follow_k_not_num_experts():
    """More experts: more parameters, same active compute except the router's d_model * E."""
    small = lstm(MoESpec(num_experts=4, k=2, d_hidden=32))
    large = lstm(MoESpec(num_experts=16, k=2, d_hidden=32))
    dense = lstm()  # ffn_hidden 64 = k * d_hidden: the compute-matched baseline
    d = 32
    assert large.num_parameters() > small.num_parameters() > dense.num_parameters()
    assert large.active_macs_per_token() - small.active_macs_per_token() == d * (16 - 4)
    assert small.active_macs_per_token() - dense.active_macs_per_token() == d * 4


def test_transformer_places_moe_every_nth_block():
    model = transformer(MoESpec(num_experts=4, k=2, d_hidden=32), moe_every=2)
    kinds = [hasattr(block.ffn, "aux_loss") for block in model.blocks]
    assert kinds == [False, True, False, True]
    assert [name for name, _ in model.moe_layers()] == ["ffn1", "ffn3"]
    model(torch.randint(0, V, (2, 16)))
    load = model.expert_load()
    assert set(load) == {"ffn1", "ffn3"}
    assert all(float(v.sum()) == 2 * 16 * 2 for v in load.values())  # T tokens x k assignments


def test_transformer_is_causal():
    model = transformer(MoESpec(num_experts=4, k=2, d_hidden=32)).eval()
    x_BT = torch.randint(0, V, (1, 16))
    y_BT = x_BT.clone()
    y_BT[0, 10:] = (y_BT[0, 10:] + 1) % V
    torch.testing.assert_close(model(x_BT)[:, :10], model(y_BT)[:, :10])


def test_lstm_incremental_sampling_matches_full_forward():
    """The LSTM carries its state while sampling; it must equal recomputing from scratch."""
    model = lstm(MoESpec(num_experts=4, k=2, d_hidden=32)).eval()
    x_BT = torch.randint(0, V, (2, 12))
    logits, cache = model._next_logits(x_BT[:, :7], None, x_BT[:, :7])
    for t in range(7, 12):
        logits, cache = model._next_logits(x_BT[:, t : t + 1], cache, x_BT[:, : t + 1])
    torch.testing.assert_close(logits, model(x_BT)[:, -1])


@pytest.mark.parametrize("make", [lstm, transformer])
def test_generate_appends_tokens_and_greedy_is_deterministic(make):
    model = make(MoESpec(num_experts=4, k=2, d_hidden=32))
    prompt = torch.randint(0, V, (1, 5))
    out = model.generate(prompt, 20, temperature=0)  # longer than block_size for the transformer
    assert out.shape == (1, 25) and torch.equal(out[:, :5], prompt)
    assert torch.equal(out, model.generate(prompt, 20, temperature=0))
    g = torch.Generator().manual_seed(0)
    sampled = model.generate(prompt, 20, temperature=1.0, top_k=1, generator=g)
    assert torch.equal(sampled, out)  # top-1 sampling is greedy


def test_tied_embeddings_counted_once():
    tied, untied = lstm(), lstm(tie_embeddings=False)
    assert untied.num_parameters() - tied.num_parameters() == V * 32
    assert tied.num_parameters(exclude_embeddings=True) == untied.num_parameters(
        exclude_embeddings=True
    )


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="k \\(5\\) must be <= num_experts \\(4\\)"):
        MoESpec(num_experts=4, k=5, d_hidden=8)
    with pytest.raises(ValueError, match="divisible by n_heads"):
        TransformerLMConfig(d_model=30, n_heads=4)
    # the layer's own checks (MoEConfig) run when the config is loaded, options included
    with pytest.raises(ValueError, match="k \\(2\\) must be 1 for router 'switch'"):
        MoESpec(router="switch", k=2, d_hidden=8)
    with pytest.raises(ValueError, match="unknown option\\(s\\) 'bogus'"):
        MoESpec(d_hidden=8, options={"bogus": 1})
    with pytest.raises(ValueError, match="noise_eps \\('x'\\) must be a finite number"):
        MoESpec(d_hidden=8, options={"noise_eps": "x"})


@pytest.mark.parametrize(
    "moe",
    [
        None,
        MoESpec(num_experts=4, k=2, d_hidden=32),
        MoESpec(num_experts=4, k=1, router="switch", d_hidden=32),
    ],
)
def test_transformer_kv_cache_matches_recomputing(moe):
    """Sampling with the KV cache gives the logits of a full forward at every step, across the
    block_size boundary (where the window slides and the cache is dropped)."""
    model = transformer(moe).eval()
    assert model.can_cache()
    x_BT = torch.randint(0, V, (2, 24))  # block_size is 16
    logits, cache = model._next_logits(x_BT[:, :5], None, x_BT[:, :5])
    for t in range(5, 24):
        assert (cache is not None) == (t <= 16)  # cached while the context fits
        logits, cache = model._next_logits(x_BT[:, t : t + 1], cache, x_BT[:, : t + 1])
        window = x_BT[:, max(0, t + 1 - 16) : t + 1]
        torch.testing.assert_close(logits, model(window)[:, -1], rtol=1e-5, atol=1e-5)
    # a multi-token continuation of the cache is causal too
    cache = [KVCache() for _ in model.blocks]
    model(x_BT[:, :6], cache)
    torch.testing.assert_close(
        model(x_BT[:, 6:10], cache), model(x_BT[:, :10])[:, 6:10], rtol=1e-5, atol=1e-5
    )


def test_transformer_with_batch_dependent_routing_does_not_cache():
    for moe in (
        MoESpec(num_experts=4, k=2, router="expert_choice", d_hidden=32),
        MoESpec(num_experts=4, k=2, capacity_factor=1.0, d_hidden=32),
    ):
        model = transformer(moe).eval()
        assert not model.can_cache()
        x_BT = torch.randint(0, V, (1, 8))
        logits, cache = model._next_logits(x_BT, None, x_BT)
        assert cache is None
        torch.testing.assert_close(logits, model(x_BT)[:, -1])


def test_hierarchical_moe_from_config():
    model = transformer(MoESpec(num_experts=16, k=2, d_hidden=32, groups=4, k_groups=2))
    layers = [f for f in model.ffns if isinstance(f, HierarchicalMoE)]
    assert len(layers) == 2 and all(len(h.groups) == 4 for h in layers)
    model(torch.randint(0, V, (2, 8)))
    assert all(v.numel() == 16 for v in model.expert_load().values())
    for bad, field in [
        (dict(num_experts=6, groups=4), "divisible by groups"),
        (dict(num_experts=8, groups=4, k=3), "experts per group"),
        (dict(num_experts=8, groups=2, k_groups=3), "k_groups (3) must be <= groups (2)"),
        (dict(num_experts=8, groups=2, router="expert_choice"), "token-choice router"),
    ]:
        with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(")", r"\)")):
            MoESpec(d_hidden=8, **{"k": 2, **bad})


def test_moe_table_passes_its_options_to_the_layer_flat_or_in_options():
    """Every key of [model.moe] that is not a size is a layer option, defined once (MoEConfig):
    flat keys and the older `options` table build the same layer, and defaults come from it."""
    flat = MoESpec(num_experts=4, d_hidden=8, router="topk", noise_eps=0.5, w_switch=0.2)
    nested = MoESpec.model_validate(
        dict(num_experts=4, d_hidden=8, router="topk", options=dict(noise_eps=0.5, w_switch=0.2))
    )
    assert flat == nested
    layers = [build_ffn(6, 12, "swiglu", spec) for spec in (flat, nested)]
    for layer in layers:
        assert isinstance(layer, MoE)
        assert (layer.cfg.router, layer.cfg.noise_eps, layer.cfg.w_switch) == ("topk", 0.5, 0.2)
        assert (layer.cfg.expert, layer.cfg.k) == ("swiglu", 2)
    # a round trip through a checkpoint's dict keeps the options
    assert MoESpec.model_validate(flat.model_dump()) == flat
    with pytest.raises(ValueError, match="noise_eps set both"):
        MoESpec.model_validate(dict(d_hidden=8, noise_eps=0.1, options=dict(noise_eps=0.2)))
    with pytest.raises(ValueError, match="unknown option\\(s\\) 'bogus'"):
        MoESpec(d_hidden=8, bogus=1)
    with pytest.raises(ValueError, match="set model.expert"):
        MoESpec(d_hidden=8, expert="relu")


def test_hierarchical_table_sets_the_layer_loss_weights():
    """The hierarchy's loss weights come from the table, else the paper's (0.1, 0.1); the aux loss
    is their weighted sum of the hierarchical importance and load losses."""
    for weights, expected in [({}, (0.1, 0.1)), ({"w_importance": 0.3, "w_load": 0.0}, (0.3, 0.0))]:
        spec = MoESpec(num_experts=8, d_hidden=8, groups=2, router="noisy_topk", **weights)
        layer = build_ffn(6, 12, "relu", spec)
        assert isinstance(layer, HierarchicalMoE)
        layer(torch.randn(32, 6))
        losses = layer.last_stats.losses
        torch.testing.assert_close(
            layer.aux_loss,
            expected[0] * losses["importance_loss"] + expected[1] * losses["load_loss"],
        )
        assert all(float(g.aux_loss) == 0.0 for g in layer.groups)  # the groups weigh none
