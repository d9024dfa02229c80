"""The layer in the modes users run it in: bf16 on the CPU, inference_mode, torch.compile."""

import copy

import pytest
import torch
from torch import nn

from mixkit.moe import MoE, grouped

from .conftest import make_layer


@pytest.mark.parametrize("expert", ["relu", "swiglu"])
@pytest.mark.parametrize("router", ["noisy_topk", "topk"])
def test_bf16_forward_and_backward_follow_fp32(router, expert):
    """bf16 weights and inputs: same routing as fp32 on the same (bf16-rounded) values, outputs
    and gradients within bf16 precision, every gradient bf16."""
    layer = make_layer(router, expert=expert, d=16, h=32, E=6)
    with torch.no_grad():
        layer.router.w_gate.mul_(3.0)  # well-separated logits: bf16 rounding does not flip a choice
        for p in layer.parameters():
            p.copy_(p.bfloat16().float())
    low = copy.deepcopy(layer).to(torch.bfloat16)
    x = torch.randn(40, 16).bfloat16()
    noise = torch.randn(40, 6).bfloat16()
    y = layer(x.float(), router_noise=noise.float())
    y_low = low(x, router_noise=noise)
    assert y_low.dtype == torch.bfloat16
    assert torch.equal(layer.last_decision.expert_idx_A, low.last_decision.expert_idx_A)
    torch.testing.assert_close(
        y_low.float(), y, rtol=4e-2, atol=4e-2 * float(y.detach().abs().max())
    )
    (y.pow(2).mean() + layer.aux_loss).backward()
    (y_low.float().pow(2).mean() + low.aux_loss.float()).backward()
    for (name, p), q in zip(layer.named_parameters(), low.parameters(), strict=True):
        assert q.grad.dtype == torch.bfloat16, name
        scale = float(p.grad.abs().max()) + 1e-6
        torch.testing.assert_close(q.grad.float(), p.grad, rtol=0, atol=6e-2 * scale, msg=name)


@pytest.mark.parametrize("expert", ["relu", "swiglu"])
def test_inference_mode_with_experts_side_by_side(expert, monkeypatch):
    """Worker threads write into tensors made under inference_mode (once an error)."""
    monkeypatch.setattr(grouped, "SIDE_BY_SIDE_MIN_WEIGHT", 0)
    layer = make_layer("topk", expert=expert, E=6).eval()
    x = torch.randn(60, 8)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            expected = layer(x)
        with torch.inference_mode():
            got = layer(x)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


class _Net(nn.Module):
    def __init__(self, router: str):
        super().__init__()
        self.inp = nn.Linear(16, 16)
        self.moe = MoE(16, 32, 4, k=2, router=router, expert="swiglu")
        self.out = nn.Linear(16, 1)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = h + self.moe(h)
        return self.out(h).squeeze(-1), self.moe.aux_loss


@pytest.mark.parametrize("router", ["noisy_topk", "topk"])
def test_compiled_model_trains_one_step_like_eager(router):
    """torch.compile of a model holding an MoE: same loss and same gradients as eager.
    aot_eager runs the compile stack (dynamo capture, AOT autograd) without generating kernels,
    which keeps the test fast; bench/moe_layer.py times the default inductor backend."""
    torch.manual_seed(0)
    net = _Net(router)
    with torch.no_grad():
        net.moe.router.w_gate.normal_()
    twin = copy.deepcopy(net)
    compiled = torch.compile(twin, backend="aot_eager")
    x, target = torch.randn(32, 16), torch.randn(32)
    losses = []
    for model in (net, compiled):
        torch.manual_seed(5)  # the same router noise in both
        out, aux = model(x)
        loss = ((out - target) ** 2).mean() + aux
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0])
    for (name, p), q in zip(net.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
