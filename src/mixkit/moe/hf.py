"""mixkit's experts as a transformers experts backend: `experts_implementation="mixkit"`.

    import mixkit.moe.hf  # registers "mixkit" with transformers' ExpertsInterface
    model = AutoModelForCausalLM.from_pretrained(path, experts_implementation="mixkit")
    model = AutoModelForCausalLM.from_config(config, experts_implementation="mixkit")
    model.set_experts_implementation("mixkit")  # on a model already built

Only the experts change. HF's router still picks each token's experts and their weights (so the
top-k indices, the router logits that `output_router_logits` records and the aux loss are HF's
own), and HF's shared experts (Qwen2-MoE, DeepSeek-V3) run as before.

Training: the experts run as mixkit's own MoE layer runs them (dispatch.py, grouped.py). mixkit's
local dispatcher sorts each token's k assignments by expert with gathers, not scatter-adds; the
fused grouped SwiGLU (one autograd Function, weight gradients written into stacked buffers) runs
them on the CPU, and torch._grouped_mm for bf16 on CUDA, as mixkit's layer does; combine sums each
token's k slots. The fused Function takes (E, D, H) and (E, H, D) matrices; HF keeps gate and up
in one `gate_up_proj` (E, 2H, D) and `down_proj` as (E, D, H), so it gets transposed views of
them, no copies (see _ExpertViews).

Inference (no gradient needed) with few rows per expert on the CPU (decoding, short prompts), and
bf16 on CUDA: a shorter path, one sort, torch._grouped_mm, one un-sort (see _infer and FEW_ROWS:
it measured fastest there); with many rows per expert, the fused Function as in training.
Training with few rows per expert on the CPU (TRAIN_FEW_ROWS) runs the dispatched rows through
torch._grouped_mm with autograd's backward, as on CUDA: the fused Function's fixed costs showed
there (Mixtral-shaped, 64 rows per expert: 1.17x HF's grouped_mm, against 0.94x).

Supported: experts registered with `@use_experts_implementation` with the default layout (gate and
up concatenated, not transposed, no biases, no post-expert norm) and a SiLU-gated FFN: Mixtral,
Qwen2-MoE, Qwen3-MoE, OLMoE and DeepSeek-V3 among others. Anything else (GPT-OSS's biased,
clamped SwiGLU with interleaved gate/up columns, another activation, integer weights,
transformers' own expert parallelism) is a ConfigError naming what does not fit, at the first
forward (transformers gives a backend no earlier hook), never a silent fallback.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.torch_version import TorchVersion
from torch.utils.weak import WeakIdKeyDictionary

from mixkit.errors import ConfigError
from mixkit.moe.buffers import gradients
from mixkit.moe.dispatch import LocalDispatcher
from mixkit.moe.experts import _grouped_mm_ok
from mixkit.moe.grouped import GroupedSwiGLUFFN
from mixkit.moe.routing import RoutingDecision

try:
    from transformers.activations import SiLUActivation
    from transformers.integrations.moe import ExpertsInterface, _default_apply_gate
except ImportError as e:  # the hf extra is optional; say how to get it
    raise ImportError(
        f"mixkit.moe.hf needs transformers 5 (pip install 'mixkit[hf]'): {e}"
    ) from None

NAME = "mixkit"
__all__ = ["NAME", "experts_forward", "check_experts", "register"]


def check_experts(experts: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate_up_proj, down_proj) of experts mixkit can run; otherwise a ConfigError naming what
    keeps it from running them."""
    name = type(experts).__name__
    why = _unsupported(experts)
    if why:
        raise ConfigError(
            f'experts_implementation="mixkit" cannot run {name}: {why}. mixkit runs SiLU-gated '
            "experts with gate and up concatenated in gate_up_proj (E, 2H, D), down_proj (E, D, H), "
            'no biases; use experts_implementation="grouped_mm" (or "eager") for this model'
        )
    return experts.gate_up_proj, experts.down_proj  # type: ignore[return-value]  # checked above


def _unsupported(experts: nn.Module) -> str | None:
    flags = {  # set by transformers' @use_experts_implementation(...)
        "has_bias": "its experts have biases",
        "has_post_expert_norm": "it normalises each expert's output",
        "is_transposed": "its expert weights are stored transposed (E, D, 2H)",
        "_is_expert_parallel": "transformers' own expert parallelism is on (sentinel expert ids)",
    }
    found = [why for attr, why in flags.items() if getattr(experts, attr, False)]
    if not getattr(experts, "has_gate", True):
        found.append("its experts are not gated (up_proj only)")
    if not getattr(experts, "is_concatenated", True):
        found.append("its gate and up columns are interleaved in gate_up_proj")
    act = getattr(experts, "act_fn", None)
    if getattr(type(experts), "_apply_gate", _default_apply_gate) is not _default_apply_gate:
        found.append(f"it has its own gated activation ({type(experts).__name__}._apply_gate)")
    elif not isinstance(act, SiLUActivation | nn.SiLU):
        found.append(f"its activation is {type(act).__name__}, and mixkit's fused path is SiLU's")
    if found:
        return "; ".join(found)
    w = getattr(experts, "gate_up_proj", None)
    down = getattr(experts, "down_proj", None)
    if not isinstance(w, torch.Tensor) or not isinstance(down, torch.Tensor):
        return "it has no gate_up_proj and down_proj tensors"
    if w.dim() != 3 or down.dim() != 3 or w.shape[1] != 2 * down.shape[2]:
        return f"gate_up_proj {tuple(w.shape)} and down_proj {tuple(down.shape)} are not (E, 2H, D), (E, D, H)"
    if not (w.dtype.is_floating_point and down.dtype == w.dtype):
        return f"its expert weights are {w.dtype} and {down.dtype}; mixkit needs one floating dtype"
    return None


def _decision(top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> RoutingDecision:
    """HF's (T, k) choices as mixkit's flat, slot-major assignments (dispatch.py's input)."""
    T, k = top_k_index.shape
    token_A = torch.arange(T, device=top_k_index.device).repeat(k)
    expert_A = top_k_index.t().reshape(-1).long()
    weight_A = top_k_weights.t().reshape(-1)
    # logits are the router's business (HF records them); dispatch does not read them
    return RoutingDecision(token_A, expert_A, weight_A, logits_TE=top_k_weights.new_empty(T, 0))


class _ExpertViews(torch.autograd.Function):
    """HF's (E, 2H, D) gate_up_proj and (E, D, H) down_proj -> the gate, up (E, D, H) and down
    (E, H, D) matrices mixkit's kernels take: views, no copies.

    Backward writes the gate and up gradients into one (E, 2H, D) buffer and down's into one
    (E, D, H), both from buffers.gradients (memory last step's gradients used, once the optimizer
    has dropped them). Plain slicing would have autograd build a zero-filled (E, 2H, D) tensor per
    slice and add the two: 112 ms against 48 ms per layer and step (E=64, d=512, H=256, fp32)."""

    @staticmethod
    def forward(
        ctx: Any, gate_up: torch.Tensor, down: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(gate_up, down)
        H = down.shape[2]
        return gate_up[:, :H].mT, gate_up[:, H:].mT, down.mT

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, g_gate: torch.Tensor, g_up: torch.Tensor, g_down: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        gate_up, down = ctx.saved_tensors
        H = down.shape[2]
        g_gate_up = g_down_out = None
        if ctx.needs_input_grad[0]:
            g_gate_up = gradients.take(gate_up)
            g_gate_up[:, :H].copy_(g_gate.mT)
            g_gate_up[:, H:].copy_(g_up.mT)
        if ctx.needs_input_grad[1]:
            g_down_out = gradients.take(down).copy_(g_down.mT)
        return g_gate_up, g_down_out


# per gate_up_proj: the gradient-buffer lists of its gate, up and down views (see _views)
_POOLS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _views(gate_up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """_ExpertViews, with the fused Function's weight-gradient buffers reused from step to step.

    The Function takes each gradient buffer from buffers.gradients, which keeps memory per weight
    object; the views are new objects every step, so each step would map (and page-fault) fresh
    memory. Pointing each view at a list kept per parameter lets the pool hand back last step's
    buffers once idle (it reuses a block only when no tensor holds it): 8% of an experts
    forward+backward at E=8, k=2, d=512, H=1024, T=2048. GradientPool has no public call for
    this, hence its private `_kept`."""
    views = _ExpertViews.apply(gate_up, down)
    if torch.is_grad_enabled():
        kept = _POOLS.setdefault(gate_up, ([], [], []))
        with gradients._lock:
            for view, blocks in zip(views, kept, strict=True):
                gradients._kept[view] = blocks
    return views


def experts_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """The "mixkit" experts implementation: (T, D) hidden states and HF's (T, k) routing -> (T, D),
    the sum over each token's k experts of weight * down(silu(gate(x)) * up(x))."""
    gate_up, down = check_experts(self)
    x_TD = hidden_states.to(gate_up.dtype)  # as HF's grouped_mm does under autocast
    few_rows = top_k_index.numel() < FEW_ROWS * gate_up.shape[0]
    if _inference(x_TD, gate_up, down) and (
        _grouped_mm_ok(x_TD) or (few_rows and _cpu_grouped_mm_ok(x_TD))
    ):
        y_TD = _infer(x_TD, top_k_index, top_k_weights, gate_up, down)
        return y_TD.to(hidden_states.dtype)
    dispatcher = LocalDispatcher(gate_up.shape[0])
    x_SD, counts, plan = dispatcher.dispatch(x_TD, _decision(top_k_index, top_k_weights), None)
    weight_S = plan.weight_S.to(x_SD.dtype)
    if _grouped_mm_ok(x_SD) or (
        top_k_index.numel() < TRAIN_FEW_ROWS * gate_up.shape[0] and _cpu_grouped_mm_ok(x_SD)
    ):
        offs = torch.tensor(counts, device=x_SD.device).cumsum(0).to(torch.int32)
        out_SD = _grouped_swiglu(x_SD, offs, gate_up, down) * weight_S.unsqueeze(-1)
    else:
        w_gate, w_up, w_down = _views(gate_up, down)
        source = (x_TD, plan.token_idx_S)  # backward gathers from x_TD, not a k-times copy
        out_SD = GroupedSwiGLUFFN.apply(x_SD, weight_S, w_gate, w_up, w_down, counts, source)
    return dispatcher.combine(out_SD, plan).to(hidden_states.dtype)


def _inference(*tensors: torch.Tensor) -> bool:
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


# Inference on the CPU takes _infer below this many rows per expert on average, and the fused
# Function from there (measured: E=64, k=8, d=512, H=256, 1 thread: _infer 4 ms against 5 at 1
# row per expert, a tie at 16, 163 ms against 123 at 256; E=8, k=2, H=1024: 9 ms against 8 at 16).
FEW_ROWS = 16
# Training on the CPU takes torch._grouped_mm (autograd's own backward) below this many rows per
# expert on average, and the fused Function from there (measured, Mixtral-shaped E=8, k=2, d=512,
# H=1024, 1 thread, against HF's grouped_mm: 0.94x against 1.17x at 64 rows, 0.96x against 1.07x
# at 128; at 256 the fused Function was 1.01-1.10x and torch._grouped_mm 1.04-1.17x; even at 512).
TRAIN_FEW_ROWS = 192
# torch._grouped_mm runs on the CPU from torch 2.9 (before 2.11 only on 16-byte aligned tensors)
_CPU_GROUPED_MM = hasattr(torch, "_grouped_mm") and TorchVersion(torch.__version__) >= "2.11"


def _cpu_grouped_mm_ok(x: torch.Tensor) -> bool:
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    return _CPU_GROUPED_MM and x.device.type == "cpu" and x.dtype in dtypes


def _infer(
    x_TD: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
) -> torch.Tensor:
    """Inference (no gradient to keep): one stable sort of the T*k assignments by expert, one
    gather, torch._grouped_mm (one C++ loop over the experts) for gate/up and for down, one
    un-sort and a sum over each token's k rows. With nothing saved for backward and few rows per
    expert this measured faster than the fused Function and HF's grouped_mm on the CPU: one
    token (decoding) 0.83 ms against 1.01 and 0.89 ms (E=64, k=8, d=512, H=256)."""
    T, k = top_k_index.shape
    expert_A = top_k_index.reshape(-1)  # token-major: assignment a = t * k + slot
    order_A = torch.argsort(expert_A, stable=True)
    x_AD = x_TD.index_select(0, order_A // k)
    offs = torch.bincount(expert_A, minlength=gate_up.shape[0]).cumsum(0).to(torch.int32)
    out_AD = _grouped_swiglu(x_AD, offs, gate_up, down)
    out_AD.mul_(top_k_weights.reshape(-1).index_select(0, order_A).to(out_AD.dtype).unsqueeze(-1))
    return torch.empty_like(out_AD).index_copy_(0, order_A, out_AD).view(T, k, -1).sum(1)


def _grouped_swiglu(
    x_SD: torch.Tensor, offs: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor
) -> torch.Tensor:
    """Rows sorted by expert (offs: where each expert's rows end) -> their experts' SwiGLU: one
    torch._grouped_mm for gate and up together (HF's (E, 2H, D) read as (E, D, 2H)), one for down."""
    gate, up = torch._grouped_mm(x_SD, gate_up.mT, offs=offs).chunk(2, dim=-1)
    return torch._grouped_mm(torch.nn.functional.silu(gate) * up, down.mT, offs=offs)


def register() -> None:
    """Register `experts_forward` as "mixkit" (done on import; calling it again is harmless)."""
    ExpertsInterface.register(NAME, experts_forward)


register()
