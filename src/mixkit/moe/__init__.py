"""mixkit.moe: sparsely-gated Mixture-of-Experts layers (tensors only; never imports mixkit.moa)."""

from mixkit.moe.balance import cv_squared
from mixkit.moe.config import ROUTERS, HierarchicalConfig, MoEConfig
from mixkit.moe.experts import Experts
from mixkit.moe.hierarchical import HierarchicalMoE
from mixkit.moe.layer import MoE
from mixkit.moe.routing import RoutingDecision, update_router_biases
from mixkit.moe.stats import MoEStats

__all__ = [
    "MoE",
    "HierarchicalMoE",
    "MoEConfig",
    "HierarchicalConfig",
    "MoEStats",
    "Experts",
    "RoutingDecision",
    "ROUTERS",
    "cv_squared",
    "update_router_biases",
]
