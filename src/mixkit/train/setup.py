"""Deciding what a run is before it starts: the config, the checkpoint it continues, the data.

    plan = plan_run("tiny", overrides=["train.steps=500"], resume=True, out="runs/tiny")
    train(plan.cfg, plan.out_dir, resume=plan.resume, steps=plan.extend_to)

`plan_run` holds the rules `mixkit train` follows for its options (so the CLI only parses and
renders); `resolve_run` holds the rules for continuing a run from its checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mixkit.errors import ConfigError, DataError
from mixkit.train.checkpoint import Checkpoint, find_checkpoint, load_checkpoint
from mixkit.train.config import RunConfig, config_from_dict, load_config
from mixkit.train.data import Corpus, prepare_corpus


@dataclass
class RunPlan:
    """What `mixkit train` was asked to do."""

    cfg: RunConfig | None  # None: continue the stored run as it is
    out_dir: Path
    resume: bool
    extend_to: int | None  # `--resume --steps N` alone: extend the stored run to N steps
    as_shipped: bool  # a preset with nothing changed: its expected loss applies


def plan_run(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    data: str | Path | None = None,
    steps: int | None = None,
    resume: bool = False,
    out: str | Path | None = None,
) -> RunPlan:
    """The run that `mixkit train`'s options describe.

    `data` and `steps` are shorthands for `--set data.path=...` and `--set train.steps=N`, except
    that `resume` with `steps` and nothing else extends the stored run (its config unchanged but
    for the new end). Any other config given with `resume` must equal the stored one.
    """
    sets = list(overrides)
    if data is not None:
        sets.append(f"data.path={str(Path(data).expanduser().resolve())!r}")
    alone = preset is None and config_file is None and not sets
    extend_to = steps if resume and alone else None
    if steps is not None and extend_to is None:
        sets.append(f"train.steps={steps}")
    given = preset is not None or config_file is not None or bool(sets)
    cfg = load_config(preset, config_file, sets) if given or not resume else None
    if out is None:
        if cfg is None:
            raise ConfigError("--resume needs --out DIR (the run to continue)")
        out = Path("runs") / (preset or (Path(config_file).stem if config_file else cfg.name))
    return RunPlan(cfg, Path(out), resume, extend_to, as_shipped=not sets and config_file is None)


def fill_from_data(cfg: RunConfig, corpus: Corpus) -> RunConfig:
    """Fill what the data decides: vocab_size (and a transformer's block_size)."""
    update: dict[str, Any] = {"vocab_size": corpus.tokenizer.vocab_size}
    if cfg.model.arch == "transformer" and cfg.model.block_size == 0:
        update["block_size"] = cfg.train.seq_len
    return cfg.model_copy(update={"model": cfg.model.model_copy(update=update)})


@dataclass
class Resolved:
    """A run about to start: its final config, its data, and the checkpoint it continues."""

    cfg: RunConfig
    corpus: Corpus
    ckpt: Checkpoint | None


def resolve_run(
    cfg: RunConfig | None, out_dir: Path, resume: bool, steps: int | None, default_threads: int
) -> Resolved:
    """The config to train with, the data, and the checkpoint to continue (when resuming).

    A fresh run refuses a folder that holds one; a resumed run uses its stored config, which a
    given `cfg` must equal (after the data fills in vocab_size), and its data must be unchanged.
    """
    found = find_checkpoint(out_dir) is not None
    ckpt = load_checkpoint(out_dir) if resume and found else None
    if found and not resume:
        raise ConfigError(
            f"{str(out_dir)!r} already holds a run; pass --resume to continue it or choose "
            "another --out"
        )
    stored = config_from_dict(ckpt.config, f"stored in {out_dir}/checkpoint") if ckpt else None
    run_cfg = cfg or stored
    if run_cfg is None:
        raise ConfigError(f"nothing to resume in {str(out_dir)!r}; pass --preset or --config")
    torch.set_num_threads(run_cfg.train.threads or default_threads)
    corpus = prepare_corpus(run_cfg.data)
    run_cfg = fill_from_data(run_cfg, corpus)
    if ckpt is not None and stored is not None:
        if cfg is not None and run_cfg != stored:
            raise ConfigError(
                f"--resume continues the run in {str(out_dir)!r} with its stored config, which "
                "differs from the one given; drop --preset/--config/--set or use another --out"
            )
        run_cfg = _extended(stored, ckpt, steps, out_dir)
        if ckpt.train_state.get("data_fingerprint") != corpus.fingerprint:
            raise DataError(
                f"the data changed since the checkpoint in {str(out_dir)!r} was written "
                "(different text, tokenizer or split); resume needs the same --data"
            )
    return Resolved(run_cfg, corpus, ckpt)


def _extended(stored: RunConfig, ckpt: Checkpoint, steps: int | None, out_dir: Path) -> RunConfig:
    """The stored config, stretched to `steps` when a finished run is extended."""
    if steps is None or steps == stored.train.steps:
        return stored
    if steps < ckpt.step:
        raise ConfigError(
            f"--steps {steps} is before the checkpoint in {str(out_dir)!r} (step "
            f"{ckpt.step}); give a larger number to extend the run"
        )
    # the cosine schedule stretches to the new end
    return stored.model_copy(update={"train": stored.train.model_copy(update={"steps": steps})})
