"""Routing invariants, the load estimator against Monte Carlo, balancing hooks, bad arguments."""

import math

import pytest
import torch

from mixkit.moe import HierarchicalMoE, MoE, cv_squared, update_router_biases
from mixkit.moe.balance import switch_loss
from mixkit.moe.routing import RoutingDecision, smooth_load

from .conftest import TOKEN_CHOICE, make_layer


@pytest.mark.parametrize("router", TOKEN_CHOICE)
def test_single_token_gives_gradient_to_exactly_k_experts(router):
    layer = make_layer(router, E=8, k=3)
    layer.train()
    x = torch.randn(1, 8)
    layer(x).pow(2).sum().backward()
    with_grad = [e for e in range(8) if layer.experts.w_in.grad[e].abs().sum() > 0]
    assert len(with_grad) == layer.cfg.k
    assert sorted(with_grad) == sorted(layer.last_decision.expert_idx_A.tolist())
    # the router learns through the output as well (no zero-gradient softmax over one logit)
    assert layer.router.w_gate.grad.abs().sum() > 0


def test_top1_routers_still_train_the_gate_without_aux_losses():
    for router in ["switch", "topk", "noisy_topk", "sigmoid_bias"]:
        layer = make_layer(router, k=1, w_importance=0.0, w_load=0.0, w_switch=0.0)
        layer(torch.randn(16, 8)).pow(2).sum().backward()
        assert layer.router.w_gate.grad.abs().sum() > 0, router


@pytest.mark.parametrize("T,E,k", [(24, 6, 2), (64, 8, 1), (10, 4, 3)])
def test_expert_choice_gives_each_expert_exactly_c_tokens(T, E, k):
    layer = make_layer("expert_choice", E=E, k=k)
    layer(torch.randn(T, 8))
    C = math.ceil(k * T / E)
    assert layer.last_stats.tokens_per_expert.tolist() == [float(C)] * E
    d = layer.last_decision
    for e in range(E):
        tokens = d.token_idx_A[d.expert_idx_A == e]
        assert tokens.numel() == C and tokens.unique().numel() == C


@pytest.mark.parametrize("capacity_factor", [0.5, 1.0, 1.25, 2.0])
@pytest.mark.parametrize("k", [1, 2])
def test_dropped_fraction_matches_capacity_formula(k, capacity_factor):
    T, E = 40, 4
    layer = make_layer("topk", E=E, k=k, capacity_factor=capacity_factor)
    layer(torch.randn(T, 8))
    C = math.ceil(k * T * capacity_factor / E)
    counts = torch.bincount(layer.last_decision.expert_idx_A, minlength=E)
    expected = sum(max(0, int(n) - C) for n in counts) / (T * k)
    assert float(layer.last_stats.dropped_fraction) == pytest.approx(expected)
    assert layer.last_stats.tokens_per_expert.tolist() == [float(min(int(n), C)) for n in counts]


def test_capacity_is_multiplied_by_k():
    """All tokens collapse onto experts 0 and 1: top-2 at cf=1.0 keeps C = 2T/E per expert."""
    T, E = 32, 4
    layer = MoE(8, 12, E, k=2, router="topk", capacity_factor=1.0)
    with torch.no_grad():
        layer.router.w_gate.zero_()
        layer.router.w_gate[:, 0] = 10.0
        layer.router.w_gate[:, 1] = 5.0
    layer(torch.rand(T, 8) + 0.1)  # positive inputs: expert 0 then 1 for every token
    assert layer.last_stats.tokens_per_expert.tolist() == [16.0, 16.0, 0.0, 0.0]
    assert float(layer.last_stats.dropped_fraction) == pytest.approx(0.5)


def test_first_choices_win_capacity_over_second_choices():
    """Tokens 0-3 prefer expert 1, tokens 4-7 prefer expert 0; C = 4 per expert. Token-order
    priority would fill expert 0 with the second choices of tokens 0-3 and drop the first choices
    of tokens 4-7; slot-major priority keeps every token's first choice."""
    T, E = 8, 2
    layer = MoE(2, 6, E, k=2, router="topk", capacity_factor=0.5)  # C = ceil(2*8*0.5/2) = 4
    with torch.no_grad():
        layer.router.w_gate.copy_(torch.tensor([[0.0, 3.0], [3.0, 0.0]]))
    x = torch.zeros(T, 2)
    x[:4, 0] = 1.0  # prefers expert 1
    x[4:, 1] = 1.0  # prefers expert 0
    y = layer(x)
    probs = torch.softmax(x @ layer.router.w_gate, dim=-1)
    first = probs.argmax(-1)
    expected = torch.stack(
        [
            probs[t, first[t]] * layer.experts.forward_dense(x[t : t + 1], int(first[t]))[0]
            for t in range(T)
        ]
    )
    torch.testing.assert_close(y, expected)
    assert float(layer.last_stats.dropped_fraction) == pytest.approx(0.5)


def test_noisy_topk_is_deterministic_in_eval_and_noisy_in_training():
    layer = make_layer("noisy_topk", E=8)
    x = torch.randn(32, 8)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


def test_load_estimator_matches_monte_carlo():
    """E_noise[P_smooth(x, i)] = P(expert i in top-k): compare with counting over noise draws."""
    torch.manual_seed(0)
    T, E, k, S = 3, 6, 2, 20000
    clean = torch.randn(T, E) * 0.7
    std = torch.rand(T, E) * 0.8 + 0.3
    noisy = clean.unsqueeze(0) + torch.randn(S, T, E) * std  # (S, T, E)
    topk = noisy.topk(k, dim=-1).indices
    in_topk = torch.zeros(S, T, E).scatter_(2, topk, 1.0)
    mc = in_topk.mean(0)
    est = (
        smooth_load(
            clean.expand(S, T, E).reshape(S * T, E),
            noisy.reshape(S * T, E),
            std.expand(S, T, E).reshape(S * T, E),
            k,
        )
        .reshape(S, T, E)
        .mean(0)
    )
    assert (est - mc).abs().max() < 0.02
    assert est.sum(-1).sub(k).abs().max() < 0.05  # k experts are selected per token


def test_switch_loss_is_one_at_perfect_balance_for_every_k():
    for k in (1, 2, 4):
        T, E = 8, 4
        expert_idx = torch.arange(T * k) % E
        d = RoutingDecision(
            token_idx_A=torch.arange(T).repeat(k),
            expert_idx_A=expert_idx,
            weight_A=torch.ones(T * k),
            logits_TE=torch.zeros(T, E),
            probs_TE=torch.full((T, E), 1.0 / E),
            num_tokens=T,
        )
        assert float(switch_loss(d, E)) == pytest.approx(1.0)


def test_sigmoid_bias_update_moves_load_toward_balance():
    torch.manual_seed(0)
    layer = MoE(8, 12, 4, k=1, router="sigmoid_bias", bias_update_rate=0.02)
    with torch.no_grad():
        layer.router.w_gate.normal_(0, 0.3)
        layer.router.w_gate[:, 0] += 0.5  # expert 0 is preferred by most tokens
    x = torch.randn(256, 8) + 0.5
    layer.train()
    layer(x)
    before = layer.last_stats.tokens_per_expert.clone()
    for _ in range(60):
        update_router_biases(layer)
        layer(x)
    after = layer.last_stats.tokens_per_expert
    assert int(before.argmax()) == 0
    # only the bias moved (no optimizer here), and it moved against the overloaded expert
    assert layer.router.bias[0] < layer.router.bias[1:].min()
    assert float(cv_squared(after)) < 0.25 * float(cv_squared(before))
    update_router_biases(layer)
    assert layer.router.load_accum.sum() == 0  # consumed by the hook


def test_hierarchical_matches_per_token_reference_and_paper_losses():
    torch.manual_seed(0)
    layer = HierarchicalMoE(
        6, 8, num_groups=3, experts_per_group=4, k_primary=2, k_secondary=2, router="topk"
    )
    layer.eval()
    x = torch.randn(10, 6)
    y = layer(x)
    probs = torch.softmax(x @ layer.primary.w_gate, dim=-1)
    expected = torch.zeros_like(x)
    importance = torch.zeros(3, 4)
    for t in range(10):
        top = probs[t].topk(2)
        w = top.values / top.values.sum()
        for wg, g in zip(w, top.indices.tolist(), strict=True):
            group = layer.groups[g]
            expected[t] += wg * group(x[t : t + 1])[0]
            d = group.last_decision
            for e, gw in zip(d.expert_idx_A.tolist(), d.weight_A, strict=True):
                importance[g, e] += wg * gw
    layer(x)
    torch.testing.assert_close(y, expected)
    imp = importance.flatten()
    cv2 = imp.var(correction=0) / imp.mean() ** 2
    torch.testing.assert_close(layer.last_stats.losses["importance_loss"], cv2.detach())


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(k=9), "k (9) must be <= num_experts (8)"),
        (dict(router="nope"), "router ('nope') is unknown"),
        (dict(capacity_factor=0.0), "capacity_factor (0.0) must be a positive number"),
        (dict(capacity_factor=-1), "capacity_factor (-1) must be a positive number"),
        (dict(expert="gelu"), "expert ('gelu') is unknown"),
        (dict(router="switch", k=2), "must be 1 for router 'switch'"),
        (dict(w_load=-0.1), "w_load (-0.1) must be a finite number >= 0"),
        (dict(bogus=1), "bogus"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_problem(kwargs, needle):
    args = dict(k=2)
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        MoE(16, 32, 8, **args)
    assert needle in str(info.value)


def test_wrong_last_dimension_is_named():
    layer = MoE(16, 32, 8)
    with pytest.raises(ValueError, match=r"last dimension must be d_model=16, got shape \(4, 15\)"):
        layer(torch.randn(4, 15))


def test_stats_and_costs_are_reported():
    layer = MoE(16, 32, 8, k=2, router="noisy_topk")
    layer(torch.randn(5, 7, 16))
    s = layer.last_stats.as_dict()
    assert sum(s["tokens_per_expert"]) == 5 * 7 * 2
    assert 0.0 <= s["router_entropy"] <= math.log(8) + 1e-6
    assert {"importance_loss", "load_loss", "switch_loss", "z_loss"} <= s.keys()
    assert layer.active_macs_per_token() == 16 * 8 + 2 * (2 * 16 * 32)
    assert layer.num_parameters() == 2 * 16 * 8 + 8 * 2 * 16 * 32
