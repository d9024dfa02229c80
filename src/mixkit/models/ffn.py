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
from mixkit.moe import HierarchicalConfig, HierarchicalMoE, MoE, MoEConfig

ExpertKind = Literal["relu", "swiglu"]


class MoESpec(BaseModel):
    """The MoE layer put in a model's FFN slot.

    It declares only what belongs to the model: the sizes and the hierarchy. Every other key of
    the table (k, router, capacity_factor, loss weights, router options...) is an option of
    `mixkit.moe.MoEConfig` (or `HierarchicalConfig` with groups), passed through and validated
    there, the one definition of those options, when the config is loaded.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    num_experts: int = Field(16, ge=1)
    d_hidden: int = Field(..., ge=1, description="hidden width of ONE expert")
    # The paper's hierarchical MoE: a primary gate picks k_groups of `groups` groups, each an MoE
    # over num_experts / groups experts that picks k of them. None: one flat MoE.
    groups: int | None = Field(None, ge=1)
    k_groups: int = Field(2, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _lift_options(cls, data: Any) -> Any:
        """Configs and checkpoints written before the options were flat kept them in an
        `options` table; they load unchanged."""
        if isinstance(data, dict) and isinstance(data.get("options"), dict):
            data = dict(data)
            options = data.pop("options")
            twice = sorted(set(options) & set(data))
            if twice:
                raise ValueError(f"{', '.join(twice)} set both in the table and in its options")
            data.update(options)
        return data

    @model_validator(mode="after")
    def _valid_layer(self) -> MoESpec:
        if self.groups is not None and self.num_experts % self.groups:
            raise ValueError(
                f"num_experts ({self.num_experts}) must be divisible by groups ({self.groups})"
            )
        if "expert" in self.options:
            raise ValueError("expert is the model's choice: set model.expert, not model.moe.expert")
        if self.groups is not None and self.k_groups > self.groups:
            raise ValueError(f"k_groups ({self.k_groups}) must be <= groups ({self.groups})")
        try:
            self.layer_config(1)  # d_model belongs to the model, not to this table
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return self

    @property
    def options(self) -> dict[str, Any]:
        """The table's keys that are options of the layer."""
        return dict(self.model_extra or {})

    @property
    def k(self) -> int:
        """Experts per token (per group, with groups)."""
        return int(self.options.get("k", MoEConfig.k))

    def layer_config(self, d_model: int) -> MoEConfig | HierarchicalConfig:
        """The validated config of the layer this table builds (defaults filled in)."""
        if self.groups is None:
            return MoEConfig.from_options(
                d_model, self.d_hidden, self.num_experts, **self.options, name=""
            )
        options = self.options
        k = options.pop("k", MoEConfig.k)
        weights = {n: options.pop(n) for n in ("w_importance", "w_load", "w_zloss") if n in options}
        return HierarchicalConfig(
            d_model,
            self.d_hidden,
            self.groups,
            self.num_experts // self.groups,
            k_primary=self.k_groups,
            k_secondary=k,
            **weights,
            options=options,
            name="",
        )


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
    cfg = moe.layer_config(d_model)
    if isinstance(cfg, HierarchicalConfig):
        cfg.options["expert"] = expert
        return HierarchicalMoE.from_config(cfg)
    cfg.expert, cfg.name = expert, "model.moe"  # so the layer's own errors name the config field
    return MoE.from_config(cfg)


def ffn_macs_per_token(ffn: nn.Module) -> int:
    """Active multiply-adds per token of a dense FFN or an MoE layer (router + k experts)."""
    return int(ffn.active_macs_per_token())
