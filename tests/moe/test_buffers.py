"""The fused path's weight-gradient pool: reuse memory only when nothing else holds it."""

import torch

from mixkit.moe import buffers

from .conftest import make_layer

EXPERT_WEIGHTS = ("experts.w_gate", "experts.w_in", "experts.w_out")


def _grads(layer, x):
    y = layer(x)
    (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    return {n: p.grad for n, p in layer.named_parameters() if n in EXPERT_WEIGHTS}


def _skip_expert_5(layer):
    with torch.no_grad():
        layer.router.w_gate.abs_()
        layer.router.w_gate[:, 5] = -5.0  # with positive inputs expert 5 is never chosen


def test_dropped_gradients_are_reused_and_an_idle_expert_gets_zeros():
    """After zero_grad(set_to_none), the next backward writes into the same memory; an expert
    that had rows last step and none now gets an exact zero, not last step's values."""
    layer = make_layer("topk", expert="swiglu", E=6)
    _skip_expert_5(layer)
    mixed = torch.randn(40, 8)  # some of these pick expert 5
    first = _grads(layer, mixed)
    assert all(float(g[5].abs().sum()) > 0 for g in first.values())
    ptrs = {n: g.data_ptr() for n, g in first.items()}
    del first
    layer.zero_grad(set_to_none=True)
    x = torch.rand(40, 8) + 0.1
    got = {n: g.clone() for n, g in _grads(layer, x).items()}
    assert {n: p.grad.data_ptr() for n, p in layer.named_parameters() if n in ptrs} == ptrs
    layer.zero_grad(set_to_none=True)
    layer.expert_impl = "loop"  # plain autograd, no pool
    expected = _grads(layer, x)
    for n in EXPERT_WEIGHTS:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-5, atol=1e-6, msg=n)
        assert torch.equal(got[n][5], torch.zeros_like(got[n][5])), n


def test_a_gradient_still_held_is_never_overwritten():
    layer = make_layer("topk", expert="swiglu", E=6)
    x = torch.randn(40, 8)
    held = _grads(layer, x)  # the caller keeps these tensors
    kept = {n: g.clone() for n, g in held.items()}
    layer.zero_grad(set_to_none=True)
    again = _grads(layer, 2 * x)
    for n in EXPERT_WEIGHTS:
        assert torch.equal(held[n], kept[n]), n
        assert again[n].data_ptr() != held[n].data_ptr(), n


def test_gradients_accumulate_across_backwards_without_zeroing():
    """zero_grad(set_to_none=False) / gradient accumulation: the pool's buffer is added into the
    existing .grad, never aliased with it."""
    layer = make_layer("topk", expert="swiglu", E=6)
    x = torch.randn(40, 8)
    once = {n: g.clone() for n, g in _grads(layer, x).items()}
    for _ in range(2):
        twice = _grads(layer, x)
    for n in EXPERT_WEIGHTS:
        torch.testing.assert_close(twice[n], 3 * once[n], rtol=1e-5, atol=1e-6, msg=n)


def test_release_lets_go_of_idle_buffers():
    layer = make_layer("topk", expert="swiglu", E=6)
    x = torch.randn(40, 8)
    first = _grads(layer, x)["experts.w_in"].data_ptr()
    layer.zero_grad(set_to_none=True)
    assert _grads(layer, x)["experts.w_in"].data_ptr() == first  # reused while pooled
    layer.zero_grad(set_to_none=True)
    assert buffers.gradients._kept[layer.experts.w_in]
    buffers.gradients.release()
    assert layer.experts.w_in not in buffers.gradients._kept


def test_pooled_scratch_buffers_give_the_loop_path_results_step_after_step(monkeypatch):
    """Every large buffer of the fused path comes from buffers.scratch (all sizes here), reused
    from step to step: forward and gradients stay those of plain autograd at every step."""
    monkeypatch.setattr(buffers.scratch, "MIN_BYTES", 0)
    layer = make_layer("topk", expert="swiglu", E=6, dtype=torch.float64)
    for step in range(3):
        x = torch.randn(40, 8, dtype=torch.float64)
        results = []
        for impl in ("fused", "loop"):
            layer.expert_impl = impl
            xx = x.clone().requires_grad_(True)
            layer.zero_grad(set_to_none=True)
            y = layer(xx)
            (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
            grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
            results.append((y.detach().clone(), xx.grad.clone(), grads))
        (y0, gx0, gp0), (y1, gx1, gp1) = results
        torch.testing.assert_close(y0, y1, rtol=1e-12, atol=1e-12, msg=f"step {step}")
        torch.testing.assert_close(gx0, gx1, rtol=1e-12, atol=1e-12, msg=f"step {step}")
        for n in gp0:
            torch.testing.assert_close(gp0[n], gp1[n], rtol=1e-12, atol=1e-12, msg=n)
    assert buffers.scratch._kept  # the pool was used


def test_an_output_still_held_is_never_overwritten_by_later_steps(monkeypatch):
    monkeypatch.setattr(buffers.scratch, "MIN_BYTES", 0)
    layer = make_layer("topk", expert="swiglu", E=6)
    kept = layer(torch.randn(40, 8))  # held, like a logged output or an unreleased graph
    copy = kept.detach().clone()
    for _ in range(2):
        layer.zero_grad(set_to_none=True)
        layer(torch.randn(40, 8)).pow(2).sum().backward()
    assert torch.equal(kept.detach(), copy)
