"""The feed-forward slot of a language model: a dense FFN (the baseline) or a mixkit MoE layer.

Both take x_BTD and return y_BTD, and both report their active multiply-adds per token, so a
dense model and an MoE model can be matched on compute (the paper's "ops/timestep").

Legend: B batch, T time, D d_model, H hidden width of one FFN/expert, E experts.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from mixkit.errors import ConfigError
from mixkit.moe import HierarchicalMoE, MoE, MoEConfig

ExpertKind = Literal["relu", "swiglu"]
RouterKind = Literal["noisy_topk", "topk", "switch", "expert_choice", "sigmoid_bias"]


class MoESpec(BaseModel):
    """The MoE layer put in a model's FFN slot; fields are forwarded to `mixkit.moe.MoE`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_experts: int = Field(16, ge=1)
    k: int = Field(2, ge=1)
    d_hidden: int = Field(..., ge=1, description="hidden width of ONE expert")
    router: RouterKind = "noisy_topk"
    capacity_factor: float | None = Field(None, gt=0)
    # Balancing-loss weights; None takes the router's default (0.1/0.1 importance/load for
    # noisy_topk as in the paper, the Switch loss for topk/switch, none for the others).
    w_importance: float | None = Field(None, ge=0)
    w_load: float | None = Field(None, ge=0)
    w_switch: float | None = Field(None, ge=0)
    w_zloss: float = Field(0.0, ge=0)
    # The paper's hierarchical MoE: a primary gate picks k_groups of `groups` groups, each an MoE
    # over num_experts / groups experts that picks k of them. None: one flat MoE.
    groups: int | None = Field(None, ge=1)
    k_groups: int = Field(2, ge=1)
    # Anything else MoE(...) accepts (noise settings, shared experts, ...), passed through as is.
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid_layer(self) -> MoESpec:
        """The layer's own validation (MoEConfig, the one definition of its options) at load time,
        so a bad value or an unknown key in `options` is a config error naming it."""
        if self.groups is not None and self.num_experts % self.groups:
            raise ValueError(
                f"num_experts ({self.num_experts}) must be divisible by groups ({self.groups})"
            )
        if self.groups is not None and self.k > self.num_experts // self.groups:
            raise ValueError(
                f"k ({self.k}) must be <= experts per group ({self.num_experts // self.groups})"
            )
        try:
            MoEConfig.from_options(
                1,  # d_model belongs to the model, not to this table
                self.d_hidden,
                self.num_experts if self.groups is None else self.num_experts // self.groups,
                **self.layer_options(),
                name="",
            )
        except ConfigError as e:
            raise ValueError(str(e)) from None
        except TypeError as e:  # an option that is also a field of this table, e.g. options.k
            raise ValueError(f"options: {e}") from None
        if self.groups is not None:
            if self.k_groups > self.groups:
                raise ValueError(f"k_groups ({self.k_groups}) must be <= groups ({self.groups})")
            if self.router == "expert_choice" or self.w_switch:
                raise ValueError(
                    "a hierarchical MoE (groups) takes a token-choice router and no w_switch"
                )
        return self

    def layer_options(self) -> dict[str, Any]:
        """The keywords of mixkit.moe.MoE this table sets (None: the layer's default)."""
        fixed = dict(k=self.k, router=self.router, capacity_factor=self.capacity_factor)
        weights = dict(
            w_importance=self.w_importance,
            w_load=self.w_load,
            w_switch=self.w_switch,
            w_zloss=self.w_zloss,
        )
        return {**fixed, **{n: v for n, v in weights.items() if v is not None}, **self.options}


class DenseFFN(nn.Module):
    """Position-wise FFN: ReLU (D->H->D) or SwiGLU (D->2H gate/up, H->D). The dense baseline."""

    def __init__(self, d_model: int, d_hidden: int, expert: ExpertKind = "relu"):
        super().__init__()
        self.d_model, self.d_hidden, self.expert = d_model, d_hidden, expert
        n_in = 2 * d_hidden if expert == "swiglu" else d_hidden
        self.w_in = nn.Linear(d_model, n_in, bias=False)
        self.w_out = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        h = self.w_in(x_BTD)  # (B, T, H) or (B, T, 2H)
        if self.expert == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up  # (B, T, H)
        else:
            h = F.relu(h)
        return self.w_out(h)  # (B, T, D)

    def active_macs_per_token(self) -> int:
        return self.w_in.weight.numel() + self.w_out.weight.numel()


def build_ffn(d_model: int, ffn_hidden: int, expert: ExpertKind, moe: MoESpec | None) -> nn.Module:
    """A dense FFN when `moe` is None, else a `mixkit.moe.MoE` (or HierarchicalMoE) layer."""
    if moe is None:
        return DenseFFN(d_model, ffn_hidden, expert)
    if moe.groups is not None:
        return HierarchicalMoE(
            d_model,
            moe.d_hidden,
            num_groups=moe.groups,
            experts_per_group=moe.num_experts // moe.groups,
            k_primary=moe.k_groups,
            k_secondary=moe.k,
            router=moe.router,
            capacity_factor=moe.capacity_factor,
            expert=expert,
            w_importance=0.1 if moe.w_importance is None else moe.w_importance,
            w_load=0.1 if moe.w_load is None else moe.w_load,
            w_zloss=moe.w_zloss,
            **moe.options,
        )
    # so that the layer's own validation errors name the config field
    return MoE(
        d_model,
        moe.d_hidden,
        moe.num_experts,
        expert=expert,
        name="model.moe",
        **moe.layer_options(),
    )


def ffn_macs_per_token(ffn: nn.Module) -> int:
    """Active multiply-adds per token of a dense FFN or an MoE layer (router + k experts)."""
    return int(ffn.active_macs_per_token())
