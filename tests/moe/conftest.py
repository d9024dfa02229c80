import pytest
import torch

from mixkit.moe import MoE

TOKEN_CHOICE = ["noisy_topk", "topk", "switch", "sigmoid_bias"]
ALL_ROUTERS = TOKEN_CHOICE + ["expert_choice"]


def make_layer(router: str, *, d=8, h=12, E=6, k=2, dtype=torch.float32, seed=0, **kw) -> MoE:
    """A layer whose router weights are random (noisy_topk starts at zero, which makes ties)."""
    torch.manual_seed(seed)
    if router == "switch":
        k = 1
    layer = MoE(d, h, E, k=k, router=router, **kw).to(dtype)
    with torch.no_grad():
        layer.router.w_gate.normal_(0, 1.0)
        if router == "noisy_topk":
            layer.router.w_noise.normal_(0, 0.5)
        if router == "sigmoid_bias":
            layer.router.bias.normal_(0, 0.3)
    return layer


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
