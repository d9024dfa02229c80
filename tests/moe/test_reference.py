"""Forward and backward of every router and mode against the plain per-expert loop reference."""

import pytest
import torch

from mixkit.moe.reference import reference_moe

from .conftest import ALL_ROUTERS, make_layer

MODES = [
    pytest.param(dict(capacity_factor=None), id="dropless"),
    pytest.param(dict(capacity_factor=0.75), id="capacity0.75"),
    pytest.param(dict(expert="swiglu"), id="swiglu"),
    pytest.param(dict(num_shared_experts=1), id="shared"),
    pytest.param(dict(k=3, w_zloss=0.01, w_switch=0.05, w_importance=0.2, w_load=0.3), id="k3-all-losses"),
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
        assert float(stats.dropped_fraction) == pytest.approx(ref["num_dropped"] / (21 * layer.cfg.k))
    torch.testing.assert_close(gx, rgx)
    assert gp.keys() == rgp.keys()
    for name in gp:
        torch.testing.assert_close(gp[name], rgp[name], msg=name)


def test_capacity_mode_actually_drops():
    """Guard the parametrisation above: capacity 0.75 must drop something, or the test is vacuous."""
    layer = make_layer("topk", capacity_factor=0.75)
    layer(torch.randn(21, 8))
    assert float(layer.last_stats.dropped_fraction) > 0


@pytest.mark.parametrize("expert", ["relu", "swiglu"])
def test_loop_and_grouped_paths_agree_when_available(expert):
    layer = make_layer("topk", expert=expert)
    x = torch.randn(40, 8, requires_grad=True)
    layer.expert_impl = "loop"
    y_loop = layer(x)
    try:
        layer.expert_impl = "grouped_mm"
        y_grouped = layer(x)
        y_grouped.sum().backward()
    except (RuntimeError, NotImplementedError, AttributeError) as e:
        pytest.skip(f"torch._grouped_mm unavailable for this device/dtype: {e}")
    torch.testing.assert_close(y_loop, y_grouped, rtol=1e-4, atol=1e-5)
