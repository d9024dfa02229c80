"""Checkpoints: a folder that is replaced atomically, so a SIGKILL at any moment leaves a usable one.

    <out>/checkpoint/
        model.safetensors   weights (bit-exact; tied weights stored once)
        train_state.pt      optimizer state, torch RNG state, step, data position
        config.json         the full run config (model incl. vocab_size, data, optim, loop)
        tokenizer.json      the tokenizer, so `mixkit generate` needs nothing else
        manifest.json       sha256 of each file above; written last, checked on load

A new checkpoint is written to `checkpoint.tmp/`, the old one is renamed `checkpoint.old/`, the new
one renamed into place, and the old one deleted. A kill between the two renames leaves only
`checkpoint.old/`, which `find_checkpoint` falls back to.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from mixkit.errors import DataError

FILES = ("model.safetensors", "train_state.pt", "config.json", "tokenizer.json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # not every filesystem lets a directory be fsynced
        pass


def save_checkpoint(
    out_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | dict | None,
    train_state: dict[str, Any],
    config: dict[str, Any],
    tokenizer_path: Path,
) -> Path:
    """Write `out_dir/checkpoint/` atomically; returns its path."""

    out_dir = Path(out_dir)
    final, tmp, old = out_dir / "checkpoint", out_dir / "checkpoint.tmp", out_dir / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    state = dict(train_state)
    if isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.state_dict()
    state["optimizer"] = optimizer  # a state dict (expert parallel runs pass a gathered one)
    state["torch_rng"] = torch.get_rng_state()
    torch.save(state, tmp / "train_state.pt")
    (tmp / "config.json").write_text(json.dumps(config, indent=2), "utf-8")
    shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
    manifest = {name: _sha256(tmp / name) for name in FILES}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), "utf-8")
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    _fsync_dir(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(path: Path) -> Path | None:
    """The checkpoint folder for a run folder or a checkpoint folder; None when there is none."""
    path = Path(path)
    if (path / "manifest.json").exists() or (path / "model.safetensors").exists():
        return path
    for name in ("checkpoint", "checkpoint.old"):
        if (path / name).is_dir():
            return path / name
    return None


@dataclass
class Checkpoint:
    path: Path
    config: dict[str, Any]
    train_state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.train_state["step"])

    def load_weights(self, model: torch.nn.Module) -> None:
        """Load the weights into `model` (same architecture), bit for bit."""
        try:
            missing, unexpected = load_model(
                model, str(self.path / "model.safetensors"), strict=False
            )
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise DataError(f"checkpoint {str(self.path)!r} has unreadable weights: {e}") from None
        if missing or unexpected:
            raise DataError(
                f"checkpoint {str(self.path)!r} does not match the model "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
            )


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and verify a checkpoint (a run folder or the checkpoint folder itself).

    Raises DataError naming the problem when it is missing, incomplete or corrupt.
    """
    found = find_checkpoint(Path(path))
    if found is None:
        raise DataError(
            f"no checkpoint in {str(path)!r} (expected {str(Path(path) / 'checkpoint')!r}); "
            "pass the --out folder of a `mixkit train` run"
        )
    hint = "it is corrupt; delete it and retrain, or restore a copy"
    try:
        manifest = json.loads((found / "manifest.json").read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(
            f"checkpoint {str(found)!r} has no readable manifest.json ({e}); {hint}"
        ) from None
    for name in FILES:
        file = found / name
        if not file.exists():
            raise DataError(f"checkpoint {str(found)!r} is missing {name}; {hint}")
        if manifest.get(name) != _sha256(file):
            raise DataError(f"checkpoint {str(found)!r}: {name} fails its checksum; {hint}")
    try:
        config = json.loads((found / "config.json").read_text("utf-8"))
        train_state = torch.load(found / "train_state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # json/zip/unpickling errors
        raise DataError(f"checkpoint {str(found)!r} cannot be read ({e}); {hint}") from None
    return Checkpoint(found, config, train_state)
