"""What a training run reports: log.jsonl records, and the TrainResult it ends with."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    train_loss: float
    val_loss: float
    test_loss: float | None
    params: int
    active_macs_per_token: int
    tokens_per_s: float
    expect_met: bool | None  # None: the config states no expectation
    plots: list[Path] = field(default_factory=list)

    @property
    def val_ppl(self) -> float:
        return math.exp(min(self.val_loss, 50.0))

    def as_dict(self) -> dict[str, Any]:
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        d["plots"] = [str(p) for p in self.plots]
        d["val_ppl"] = self.val_ppl
        return d


class NoLog:
    """What ranks other than 0 log: nothing."""

    def write(self, record: dict[str, Any]) -> None:
        pass


class JsonlLog:
    """log.jsonl: one JSON record per line. On resume, what a killed run logged after its last
    checkpoint is dropped (those steps are redone); a fresh run starts an empty file."""

    def __init__(self, path: Path, keep_until_step: int | None):
        self.path = path
        if keep_until_step is not None and path.exists():
            kept = []
            for line in path.read_text("utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a half-written last line
                if rec.get("step", 0) <= keep_until_step:
                    kept.append(line)
            path.write_text("".join(k + "\n" for k in kept), "utf-8")
        elif keep_until_step is None:
            path.write_text("", "utf-8")

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
