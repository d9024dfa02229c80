"""torch.autograd.gradcheck in float64 for every router (noise fixed) and every loss."""

import pytest
import torch
from torch.func import functional_call

from mixkit.moe import HierarchicalMoE

from .conftest import ALL_ROUTERS, make_layer

LOSSES = ["w_importance", "w_load", "w_switch", "w_zloss"]


def _check(layer, x, noise, with_output=True):
    names = [n for n, p in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in layer.parameters())

    def f(x, *ps):
        y = functional_call(layer, dict(zip(names, ps, strict=True)), (x,), {"router_noise": noise})
        return (y, layer.aux_loss) if with_output else layer.aux_loss

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("capacity_factor", [None, 0.75])
@pytest.mark.parametrize("router", ALL_ROUTERS)
def test_gradcheck_output_and_default_losses(router, capacity_factor):
    layer = make_layer(router, d=4, h=5, E=4, dtype=torch.float64, capacity_factor=capacity_factor)
    layer.train()
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    _check(layer, x, torch.randn(6, 4, dtype=torch.float64))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("router", ALL_ROUTERS)
def test_gradcheck_each_loss_alone(router, loss):
    weights = {name: (1.0 if name == loss else 0.0) for name in LOSSES}
    layer = make_layer(router, d=4, h=5, E=4, dtype=torch.float64, **weights)
    layer.train()
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    _check(layer, x, torch.randn(6, 4, dtype=torch.float64), with_output=False)


def test_gradcheck_swiglu_experts():
    layer = make_layer(
        "topk", d=4, h=5, E=4, dtype=torch.float64, expert="swiglu", num_shared_experts=1
    )
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    _check(layer, x, None)


def test_gradcheck_hierarchical():
    torch.manual_seed(0)
    layer = HierarchicalMoE(4, 5, num_groups=3, experts_per_group=3, router="noisy_topk").double()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "w_gate" in name or "w_noise" in name:
                p.normal_(0, 1.0)
    layer.eval()  # secondary gates draw their own noise in training; eval makes f deterministic
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    _check(layer, x, None)
