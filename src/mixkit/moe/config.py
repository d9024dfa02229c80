"""MoEConfig: every knob of an MoE layer, validated in one place.

Validation errors are `ConfigError` (a `ValueError`) and name the field and the values, e.g.
`moe.k (9) must be <= moe.num_experts (8)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from mixkit.errors import ConfigError

ROUTERS = ("noisy_topk", "topk", "switch", "expert_choice", "sigmoid_bias")
EXPERTS = ("relu", "swiglu")

# Balancing-loss weights each router gets when the user leaves them as None. The paper's language
# model used 0.1/0.1 for importance/load with noisy top-k. Routers without noise have no smooth load
# estimator, so they default to the Switch/GShard loss; expert choice is balanced by construction and
# sigmoid_bias balances with its bias instead of a loss (DeepSeek-V3's "aux-loss-free").
DEFAULT_LOSS_WEIGHTS = {
    "noisy_topk": {"w_importance": 0.1, "w_load": 0.1, "w_switch": 0.0},
    "topk": {"w_importance": 0.0, "w_load": 0.0, "w_switch": 0.01},
    "switch": {"w_importance": 0.0, "w_load": 0.0, "w_switch": 0.01},
    "expert_choice": {"w_importance": 0.0, "w_load": 0.0, "w_switch": 0.0},
    "sigmoid_bias": {"w_importance": 0.0, "w_load": 0.0, "w_switch": 0.0},
}
# The hierarchical MoE balances all its experts with the paper's hierarchical importance and load
# losses (appendix B), whatever its gates are; these are their weights when left as None.
HIERARCHICAL_LOSS_WEIGHTS = {
    name: DEFAULT_LOSS_WEIGHTS["noisy_topk"][name] for name in ("w_importance", "w_load")
}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ceil(value: float) -> int:
    # 2 * 4096 * 1.1 / 8 is 1126.4000000000001 in floats; round first so exact quotients stay exact.
    return math.ceil(round(value, 6))


@dataclass
class MoEConfig:
    """Configuration of one MoE layer. Loss weights left as None take the router's defaults."""

    d_model: int
    d_hidden: int
    num_experts: int
    k: int = 2
    router: str = "noisy_topk"
    capacity_factor: float | None = None  # None: dropless
    expert: str = "relu"
    # balancing losses (None -> DEFAULT_LOSS_WEIGHTS[router])
    w_importance: float | None = None
    w_load: float | None = None
    w_switch: float | None = None
    w_zloss: float = 0.0
    # router options
    # topk: renormalise the kept k probabilities (Mixtral); ignored for k=1
    renormalize: bool = True
    noise_eps: float = 1e-2  # noisy_topk: floor on the noise std, keeps the load estimator finite
    bias_update_rate: float = 1e-3  # sigmoid_bias: gamma in b_i += gamma * sign(mean_load - load_i)
    route_scale: float = 1.0  # sigmoid_bias: scale applied to the normalised gate weights
    # sigmoid_bias (or any router): always-on dense experts, DeepSeek style
    num_shared_experts: int = 0
    name: str = field(default="moe", repr=False)  # prefix used in error messages

    def __post_init__(self) -> None:
        defaults = DEFAULT_LOSS_WEIGHTS.get(self.router, {})
        for key, value in defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.validate()

    @classmethod
    def from_options(
        cls, d_model: int, d_hidden: int, num_experts: int, **options: Any
    ) -> MoEConfig:
        """MoEConfig(...) whose unknown keywords are a ConfigError naming them and the options."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            name = options.get("name", "moe")
            raise ConfigError(
                f"{name + ': ' if name else ''}unknown option(s) {', '.join(map(repr, unknown))}; "
                f"the options are {', '.join(n for n in known[3:] if n != 'name')}"
            )
        return cls(d_model, d_hidden, num_experts, **options)

    def _err(self, msg: str) -> ConfigError:
        return ConfigError(f"{self.name}.{msg}" if self.name else msg)

    def validate(self) -> None:
        for name in ("d_model", "d_hidden", "num_experts", "k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise self._err(f"{name} ({value!r}) must be a positive integer")
        if self.router not in ROUTERS:
            raise self._err(
                f"router ({self.router!r}) is unknown; choose one of {', '.join(ROUTERS)}"
            )
        if self.expert not in EXPERTS:
            raise self._err(
                f"expert ({self.expert!r}) is unknown; choose one of {', '.join(EXPERTS)}"
            )
        if self.k > self.num_experts:
            raise self._err(f"k ({self.k}) must be <= num_experts ({self.num_experts})")
        if self.router == "switch" and self.k != 1:
            raise self._err(f"k ({self.k}) must be 1 for router 'switch' (it is top-1); pass k=1")
        if self.capacity_factor is not None:
            cf = self.capacity_factor
            if (
                isinstance(cf, bool)
                or not isinstance(cf, (int, float))
                or not math.isfinite(cf)
                or cf <= 0
            ):
                raise self._err(
                    f"capacity_factor ({cf!r}) must be a positive number, or None for dropless routing"
                )
        for name in ("w_importance", "w_load", "w_switch", "w_zloss"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise self._err(f"{name} ({value!r}) must be a finite number >= 0")
        for name in ("noise_eps", "bias_update_rate", "route_scale"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise self._err(f"{name} ({value!r}) must be a finite number >= 0")
        if not isinstance(self.renormalize, bool):
            raise self._err(f"renormalize ({self.renormalize!r}) must be true or false")
        if not isinstance(self.num_shared_experts, int) or self.num_shared_experts < 0:
            raise self._err(
                f"num_shared_experts ({self.num_shared_experts!r}) must be an integer >= 0"
            )

    def capacity(self, num_tokens: int) -> int | None:
        """Assignments each expert may hold for `num_tokens` tokens; None when dropless.

        Token-choice: ceil(k * T * capacity_factor / E). The factor k matters: without it top-2 at
        capacity factor 1.25 silently drops 37.5% of assignments (a bug we found in peers).
        Expert choice: each expert takes C = ceil(k * T * (capacity_factor or 1) / E) tokens, at most T.
        """
        if self.router == "expert_choice":
            cf = 1.0 if self.capacity_factor is None else self.capacity_factor
            return max(1, min(num_tokens, _ceil(self.k * num_tokens * cf / self.num_experts)))
        if self.capacity_factor is None:
            return None
        return max(1, _ceil(self.k * num_tokens * self.capacity_factor / self.num_experts))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}


@dataclass
class HierarchicalConfig:
    """Configuration of the paper's two-level MoE: a primary gate over num_groups groups, each an
    MoE over experts_per_group experts. `options` are the groups' MoEConfig options (router,
    capacity_factor, expert, router options); the loss weights apply to the whole hierarchy."""

    d_model: int
    d_hidden: int
    num_groups: int
    experts_per_group: int
    k_primary: int = 2
    k_secondary: int = 2
    w_importance: float | None = None  # None -> HIERARCHICAL_LOSS_WEIGHTS
    w_load: float | None = None
    w_zloss: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)
    name: str = field(default="hierarchical_moe", repr=False)

    def __post_init__(self) -> None:
        for key, value in HIERARCHICAL_LOSS_WEIGHTS.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        for name in ("w_importance", "w_load", "w_zloss"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise self._err(f"{name} ({value!r}) must be a finite number >= 0")
        for name, k, n, what in (
            ("k_primary", self.k_primary, self.num_groups, "num_groups"),
            ("k_secondary", self.k_secondary, self.experts_per_group, "experts per group"),
        ):
            if isinstance(k, int) and isinstance(n, int) and k > n:
                raise self._err(f"{name} ({k}) must be <= {what} ({n})")
        clash = sorted(set(self.options) & {"k", "name", "d_model", "d_hidden", "num_experts"})
        if clash:
            raise self._err(
                f"option(s) {', '.join(map(repr, clash))} are set by the hierarchy itself "
                "(k_primary, k_secondary and the sizes); remove them"
            )
        if self.options.get("router") == "expert_choice":
            raise self._err(
                "router 'expert_choice' is not supported by a hierarchical MoE; "
                "use a token-choice router"
            )
        if self.options.get("w_switch"):
            raise self._err(
                "w_switch is not used by a hierarchical MoE (it balances with w_importance "
                "and w_load)"
            )
        self.primary(), self.group(0)  # the sizes, k_primary/k_secondary and every option

    def _err(self, msg: str) -> ConfigError:
        return ConfigError(f"{self.name}.{msg}" if self.name else msg)

    def _layer(self, num_experts: int, k: int, name: str) -> MoEConfig:
        # The hierarchy computes its own losses, so no layer inside it weighs any.
        unweighted = dict(self.options, w_importance=0.0, w_load=0.0, w_switch=0.0, w_zloss=0.0)
        full_name = f"{self.name}.{name}" if self.name else name
        return MoEConfig.from_options(
            self.d_model, self.d_hidden, num_experts, k=k, name=full_name, **unweighted
        )

    def primary(self) -> MoEConfig:
        """The primary gate's config (only its router fields are used)."""
        return self._layer(self.num_groups, self.k_primary, "primary")

    def group(self, g: int) -> MoEConfig:
        """Group g's MoE config."""
        return self._layer(self.experts_per_group, self.k_secondary, f"groups.{g}")
