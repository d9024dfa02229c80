"""The mixtures a server offers: every built-in preset plus the user's configs, by name.

Each is built once at start-up (`MoA(...)` checks agents and keys but touches no network and
loads no model), so a bad config fails `mixkit serve` before it listens, not a request later.
"""

from __future__ import annotations

from pathlib import Path

from mixkit.errors import ConfigError
from mixkit.moa import MoA, MoAConfig, list_presets, load_config, load_preset
from mixkit.serve.errors import APIError


class Mixtures:
    """Name -> MoA. A user's config may shadow a preset of the same name."""

    def __init__(self, configs: list[MoAConfig], *, presets: bool = True, log: bool = True):
        self.configs: dict[str, MoAConfig] = {}
        if presets:
            for name in list_presets():
                self.configs[name] = load_preset(name)
        for cfg in configs:
            self.configs[cfg.name] = cfg
        self._moas = {name: MoA(cfg, log=log) for name, cfg in self.configs.items()}

    @classmethod
    def from_files(cls, paths: list[Path], **kwargs) -> Mixtures:
        return cls([load_config(p) for p in paths], **kwargs)

    def names(self) -> list[str]:
        return list(self.configs)

    def get(self, name: str) -> MoA:
        """The mixture called `name`, or a 404 listing the known ones."""
        try:
            return self._moas[name]
        except KeyError:
            known = ", ".join(self.configs)
            raise APIError(
                404,
                f"the model '{name[:100]}' does not exist (this server has: {known})",
                param="model",
                code="model_not_found",
            ) from None


def check_unique(configs: list[MoAConfig]) -> None:
    """Two --config files with one name would shadow each other silently: refuse."""
    seen: set[str] = set()
    for cfg in configs:
        if cfg.name in seen:
            raise ConfigError(f"two configs are both named '{cfg.name}' (rename one file)")
        seen.add(cfg.name)
