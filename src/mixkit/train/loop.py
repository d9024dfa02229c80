"""The training loop: AdamW, warmup + cosine, clipping, MoE aux loss, eval, logs, checkpoints.

    result = train(load_config("tiny"), out_dir="runs/tiny")            # a fresh run
    result = train(None, out_dir="runs/tiny", resume=True)              # continue it exactly

Exact resume: the model is rebuilt from the same seed, then weights, optimizer state and the torch
RNG state come from the checkpoint; batches are a pure function of the step (see data.py) and the
learning rate is a pure function of the step. So N straight steps and N/2 + kill + resume end
with the same bits, on the same machine and thread count.

Legend: B batch, T time, V vocabulary.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mixkit.errors import ConfigError, DataError
from mixkit.models import LanguageModel, build_model
from mixkit.train.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from mixkit.train.config import OptimConfig, RunConfig, config_from_dict
from mixkit.train.data import Corpus, TrainBatches, eval_batches, prepare_corpus


class Callback:
    """Hooks for progress display and tests; every method is optional."""

    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_step(self, step: int) -> None: ...  # after optimizer step `step` (1-based)
    def on_log(self, record: dict[str, Any]) -> None: ...
    def on_eval(self, record: dict[str, Any]) -> None: ...
    def on_end(self, result: TrainResult) -> None: ...


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


# --- pure pieces -----------------------------------------------------------------------------
def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.min_lr at total_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    # nanoGPT's rule: decay matrices (incl. stacked expert weights), not biases or norm gains.
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=False)


@torch.no_grad()
def evaluate(model: LanguageModel, tokens, batch_size: int, seq_len: int, max_batches: int) -> float:
    """Mean next-token cross-entropy (nats) over the first windows of a split."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x_BT, y_BT in eval_batches(tokens, batch_size, seq_len, max_batches):
        logits_BTV = model(x_BT)
        total += F.cross_entropy(logits_BTV.flatten(0, 1), y_BT.flatten(), reduction="sum").item()
        count += y_BT.numel()
    model.train(was_training)
    return total / count


def resolve(cfg: RunConfig, corpus: Corpus) -> RunConfig:
    """Fill what the data decides: vocab_size (and a transformer's block_size)."""
    update: dict[str, Any] = {"vocab_size": corpus.tokenizer.vocab_size}
    if cfg.model.arch == "transformer" and cfg.model.block_size == 0:
        update["block_size"] = cfg.train.seq_len
    return cfg.model_copy(update={"model": cfg.model.model_copy(update=update)})


def _balance(load_by_layer: dict[str, torch.Tensor]) -> float | None:
    """Worst layer's max/mean expert load (1.0 = perfectly even)."""
    ratios = [float(v.max() / v.mean()) for v in load_by_layer.values() if v.sum() > 0]
    return max(ratios) if ratios else None


class _JsonlLog:
    def __init__(self, path: Path, keep_until_step: int | None):
        self.path = path
        if keep_until_step is not None and path.exists():
            # Drop what a killed run logged after its last checkpoint: those steps are redone.
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


# --- the loop --------------------------------------------------------------------------------
def train(
    cfg: RunConfig | None,
    out_dir: str | Path,
    resume: bool = False,
    callbacks: Iterable[Callback] = (),
    plots: bool = True,
) -> TrainResult:
    """Train the model `cfg` describes, writing checkpoints, log.jsonl and plots under out_dir.

    resume=True continues from out_dir's checkpoint (cfg may then be None, or must match the
    stored config); with no checkpoint yet it starts fresh from cfg.
    """
    out_dir = Path(out_dir)
    callbacks = list(callbacks)
    ckpt = None
    if resume and find_checkpoint(out_dir) is not None:
        ckpt = load_checkpoint(out_dir)
        stored = config_from_dict(ckpt.config, f"stored in {out_dir}/checkpoint")
    elif not resume and find_checkpoint(out_dir) is not None:
        raise ConfigError(
            f"{str(out_dir)!r} already holds a run; pass --resume to continue it or choose another --out"
        )
    if cfg is None and ckpt is None:
        raise ConfigError(f"nothing to resume in {str(out_dir)!r}; pass --preset or --config")

    run_cfg = cfg if cfg is not None else stored
    loop = run_cfg.train
    torch.set_num_threads(loop.threads or min(2, os.cpu_count() or 1))
    corpus = prepare_corpus(run_cfg.data)
    run_cfg = resolve(run_cfg, corpus)
    if ckpt is not None:
        if cfg is not None and resolve(cfg, corpus) != stored:
            raise ConfigError(
                f"--resume continues the run in {str(out_dir)!r} with its stored config, which "
                "differs from the one given; drop --preset/--config/--set or use another --out"
            )
        run_cfg = stored
        if ckpt.train_state.get("data_fingerprint") != corpus.fingerprint:
            raise DataError(
                f"the data changed since the checkpoint in {str(out_dir)!r} was written "
                "(different text, tokenizer or split); resume needs the same --data"
            )
    out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(loop.seed)
    model = build_model(run_cfg.model)
    optimizer = make_optimizer(model, run_cfg.optim)
    start = 0
    if ckpt is not None:
        ckpt.load_weights(model)
        optimizer.load_state_dict(ckpt.train_state["optimizer"])
        torch.set_rng_state(ckpt.train_state["torch_rng"])
        start = ckpt.step
    batches = TrainBatches(corpus.splits["train"], loop.batch_size, loop.seq_len, loop.seed)
    log = _JsonlLog(out_dir / "log.jsonl", keep_until_step=start if ckpt is not None else None)
    config_dict = run_cfg.to_dict()

    params = model.num_parameters()
    macs = model.active_macs_per_token()
    info = {
        "event": "start",
        "step": start,
        "name": run_cfg.name,
        "params": params,
        "params_excluding_embeddings": model.num_parameters(exclude_embeddings=True),
        "active_macs_per_token": macs,
        "macs_breakdown": model.macs_breakdown(),
        "moe_layers": [name for name, _ in model.moe_layers()],
        "total_steps": loop.steps,
        "resumed": ckpt is not None,
        "threads": torch.get_num_threads(),
        "tokens": {k: int(len(v)) for k, v in corpus.splits.items()},
        "config": config_dict,
    }
    log.write(info)
    for cb in callbacks:
        cb.on_start(info)

    try:
        from mixkit.moe import update_router_biases
    except ImportError:  # pragma: no cover
        update_router_biases = None

    def checkpoint(done: int) -> None:
        state = {
            "step": done,
            "data_position": batches.position(done),
            "data_fingerprint": corpus.fingerprint,
        }
        save_checkpoint(out_dir, model, optimizer, state, config_dict, corpus.tokenizer_path)
        log.write({"event": "checkpoint", "step": done})

    def run_eval(done: int) -> float:
        val = evaluate(model, corpus.splits["val"], loop.batch_size, loop.seq_len, loop.eval_batches)
        rec = {"event": "eval", "step": done, "val_loss": val, "val_ppl": math.exp(min(val, 50))}
        log.write(rec)
        for cb in callbacks:
            cb.on_eval(rec)
        return val

    model.train()
    window_loss, window_aux, window_n, window_time = 0.0, 0.0, 0, 0.0
    window_load: dict[str, torch.Tensor] = {}
    last_train_loss, val_loss, tok_per_s = float("nan"), float("nan"), 0.0
    tokens_per_step = loop.batch_size * loop.seq_len
    for step in range(start, loop.steps):
        t0 = time.perf_counter()
        lr = lr_at(step, loop.steps, run_cfg.optim)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x_BT, y_BT = batches.get(step)
        logits_BTV = model(x_BT)
        loss = F.cross_entropy(logits_BTV.flatten(0, 1), y_BT.flatten())
        aux = model.aux_loss()
        optimizer.zero_grad(set_to_none=True)
        (loss + aux).backward()
        if run_cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), run_cfg.optim.grad_clip)
        optimizer.step()
        if update_router_biases is not None:
            update_router_biases(model)  # aux-loss-free balancing lives outside forward
        window_time += time.perf_counter() - t0

        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise DataError(
                f"loss became {loss_value} at step {step + 1}; lower optim.lr or raise optim.warmup_steps"
            )
        window_loss += loss_value
        window_aux += aux.detach().item()
        window_n += 1
        for name, tpe in model.expert_load().items():
            window_load[name] = window_load.get(name, 0) + tpe
        done = step + 1
        for cb in callbacks:
            cb.on_step(done)

        if done % loop.log_every == 0 or done == loop.steps:
            last_train_loss = window_loss / window_n
            tok_per_s = window_n * tokens_per_step / max(window_time, 1e-9)
            rec = {
                "event": "train",
                "step": done,
                "loss": last_train_loss,
                "aux_loss": window_aux / window_n,
                "lr": lr,
                "tokens_per_s": tok_per_s,
                "tokens_seen": done * tokens_per_step,
                "expert_load": {k: (v / v.sum()).tolist() for k, v in window_load.items()},
                "balance": _balance(window_load),
            }
            log.write(rec)
            for cb in callbacks:
                cb.on_log(rec)
            window_loss, window_aux, window_n, window_time, window_load = 0.0, 0.0, 0, 0.0, {}
        if done % loop.eval_every == 0 or done == loop.steps:
            val_loss = run_eval(done)
        if done % loop.checkpoint_every == 0 or done == loop.steps:
            checkpoint(done)

    if start >= loop.steps:  # resumed a finished run: report it without training
        val_loss = run_eval(loop.steps)
    test_loss = None
    if len(corpus.splits["test"]) > loop.seq_len + 1:
        test_loss = evaluate(model, corpus.splits["test"], loop.batch_size, loop.seq_len, loop.eval_batches)
    expect = run_cfg.expect.val_loss_below
    result = TrainResult(
        out_dir=out_dir,
        steps=loop.steps,
        train_loss=last_train_loss,
        val_loss=val_loss,
        test_loss=test_loss,
        params=params,
        active_macs_per_token=macs,
        tokens_per_s=tok_per_s,
        expect_met=None if expect is None else bool(val_loss < expect),
    )
    if plots:
        from mixkit.train.plots import plot_run

        result.plots = plot_run(out_dir)
    log.write({"event": "end", **result.as_dict()})
    (out_dir / "summary.json").write_text(json.dumps(result.as_dict(), indent=2), "utf-8")
    for cb in callbacks:
        cb.on_end(result)
    return result
