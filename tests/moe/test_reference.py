"""Forward and backward of every router and mode against the plain per-expert loop reference."""

import pytest
import torch

from .conftest import ALL_ROUTERS, make_layer
from .reference import reference_moe

MODES = [
    pytest.param(dict(capacity_factor=None), id="dropless"),
    pytest.param(dict(capacity_factor=0.75), id="capacity0.75"),
    pytest.param(dict(expert="swiglu"), id="swiglu"),
    pytest.param(dict(num_shared_experts=1), id="shared"),
    pytest.param(
        dict(k=3, w_zloss=0.01, w_switch=0.05, w_importance=0.2, w_load=0.3), id="k3-all-losses"
    ),
]


def _grads(layer, x, y, aux):
    layer.zero_grad()
    x.grad = None
    target = torch.randn_like(y, generator=torch.Generator().manual_seed(7))
    ((y * target).sum() + aux).backward()
    grads = {name: p.grad.clone() for name, p in layer.named_parameters() if p.grad is not None}
    return x.grad.clone(), grads


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("router", ALL_ROUTERS)
def test_matches_reference(router, mode):
    layer = make_layer(router, dtype=torch.float64, **mode)
    layer.train()
    x = torch.randn(3, 7, 8, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(21, 6, dtype=torch.float64)

    y = layer(x, router_noise=noise)
    gx, gp = _grads(layer, x, y, layer.aux_loss)
    stats = layer.last_stats

    ref = reference_moe(layer, x, router_noise=noise)
    rgx, rgp = _grads(layer, x, ref["y"], ref["aux_loss"])

    torch.testing.assert_close(y, ref["y"])
    torch.testing.assert_close(layer.aux_loss.detach(), ref["aux_loss"].detach())
    for name, value in ref["losses"].items():
        torch.testing.assert_close(stats.losses[name], value.detach(), msg=name)
    assert stats.tokens_per_expert.tolist() == [float(c) for c in ref["counts"]]
    if router != "expert_choice":
        assert float(stats.dropped_fraction) == pytest.approx(
            ref["num_dropped"] / (21 * layer.cfg.k)
        )
    torch.testing.assert_close(gx, rgx)
    assert gp.keys() == rgp.keys()
    for name in gp:
        torch.testing.assert_close(gp[name], rgp[name], msg=name)


def test_capacity_mode_actually_drops():
    """Guard the parametrisation above: capacity 0.75 must drop something, or the test is vacuous."""
    layer = make_layer("topk", capacity_factor=0.75)
    layer(torch.randn(21, 8))
    assert float(layer.last_stats.dropped_fraction) > 0


def _step(layer, x: torch.Tensor) -> tuple:
    """One forward and backward with a fixed, position-dependent upstream gradient: the output,
    the input's gradient and every parameter's."""
    xx = x.clone().requires_grad_(True)
    layer.zero_grad()
    y = layer(xx)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
    return y.detach(), xx.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}


def _assert_same(a: tuple, b: tuple, rtol: float, atol: float) -> None:
    (y0, gx0, gp0), (y1, gx1, gp1) = a, b
    torch.testing.assert_close(y0, y1, rtol=rtol, atol=atol)
    torch.testing.assert_close(gx0, gx1, rtol=rtol, atol=atol)
    for n in gp0:
        torch.testing.assert_close(gp0[n], gp1[n], rtol=rtol, atol=atol, msg=n)


@pytest.mark.parametrize("impl", ["loop", "grouped_mm"])
@pytest.mark.parametrize("expert", ["relu", "swiglu"])
def test_expert_paths_agree_with_the_fused_default(expert, impl):
    """The fused autograd Function (the CPU default) against plain autograd and _grouped_mm,
    forward and backward, with an expert that gets no tokens."""
    if impl == "grouped_mm" and not hasattr(torch, "_grouped_mm"):
        pytest.skip(f"torch {torch.__version__} has no _grouped_mm")
    layer = make_layer("topk", expert=expert, E=6)
    with torch.no_grad():
        layer.router.w_gate.abs_()
        layer.router.w_gate[:, 5] = -5.0  # with positive inputs expert 5 is never chosen
    x = torch.rand(40, 8) + 0.1
    results = {}
    for name in ("fused", impl):
        layer.expert_impl = name
        results[name] = _step(layer, x)
    assert layer.last_stats.tokens_per_expert[5] == 0
    _assert_same(results["fused"], results[impl], rtol=1e-4, atol=1e-5)
    w_in_grad = results["fused"][2]["experts.w_in"]
    assert torch.equal(w_in_grad[5], torch.zeros_like(w_in_grad[5]))


@pytest.mark.parametrize("expert", ["relu", "swiglu"])
def test_small_experts_side_by_side_match_one_at_a_time(expert, monkeypatch):
    """The fused path runs small experts in a thread pool (one intra-op thread each): same
    results, forward and backward, as one expert at a time; the caller's thread count survives."""
    from mixkit.moe import grouped

    layer = make_layer("topk", expert=expert, E=6, dtype=torch.float64)
    x = torch.randn(60, 8, dtype=torch.float64)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    pools = []
    real_pool = grouped._thread_pool
    monkeypatch.setattr(grouped, "_thread_pool", lambda n: pools.append(n) or real_pool(n))
    monkeypatch.setattr(grouped, "SIDE_BY_SIDE_MIN_WEIGHT", 0)  # this test's experts are tiny
    try:
        results = []
        for max_rows in (grouped.SIDE_BY_SIDE_MAX_ROWS, 0):  # 0: never side by side
            monkeypatch.setattr(grouped, "SIDE_BY_SIDE_MAX_ROWS", max_rows)
            used = len(pools)
            results.append(_step(layer, x))
            assert (len(pools) > used) == (max_rows > 0)  # forward and backward both used the pool
            assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    _assert_same(*results, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("expert", ["relu", "swiglu"])
def test_fused_path_with_few_experts_used_matches_the_loop(expert):
    """Three tokens over 16 experts (the decoding case): the fused path makes views for the
    experts with rows only; forward and every gradient as plain autograd."""
    layer = make_layer("topk", expert=expert, E=16, dtype=torch.float64)
    x = torch.randn(3, 8, dtype=torch.float64)
    results = []
    for impl in ("fused", "loop"):
        layer.expert_impl = impl
        results.append(_step(layer, x))
    assert int((layer.last_stats.tokens_per_expert > 0).sum()) * 2 < 16  # the few-experts path
    _assert_same(*results, rtol=1e-12, atol=1e-12)
