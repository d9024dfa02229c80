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

import copy
import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from mixkit import distributed as mdist
from mixkit.errors import DataError
from mixkit.models import LanguageModel, build_model
from mixkit.moe import update_router_biases
from mixkit.moe.parallel import full_optimizer_state, gathered_experts, shard_optimizer_state
from mixkit.train import distributed as tdist
from mixkit.train.checkpoint import Checkpoint, save_checkpoint
from mixkit.train.config import RunConfig
from mixkit.train.data import TrainBatches, eval_batches
from mixkit.train.optim import lr_at, make_optimizer
from mixkit.train.plots import plot_run
from mixkit.train.runlog import JsonlLog, NoLog, TrainResult
from mixkit.train.setup import resolve_run

__all__ = ["Callback", "TrainResult", "Trainer", "evaluate", "lr_at", "train"]


class Callback(Protocol):
    """Hooks for progress display and tests. Subclass it and override what you need (the others
    do nothing), or pass any object that has all five methods."""

    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_step(self, step: int) -> None: ...  # after optimizer step `step` (1-based)
    def on_log(self, record: dict[str, Any]) -> None: ...
    def on_eval(self, record: dict[str, Any]) -> None: ...
    def on_end(self, result: TrainResult) -> None: ...


@torch.no_grad()
def evaluate(
    model: LanguageModel,
    tokens: torch.Tensor,
    batch_size: int,
    seq_len: int,
    max_batches: int,
    device: torch.device | None = None,
) -> float:
    """Mean next-token cross-entropy (nats) over the first windows of a split."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x_BT, y_BT in eval_batches(tokens, batch_size, seq_len, max_batches):
        if device is not None:
            x_BT, y_BT = x_BT.to(device), y_BT.to(device)
        logits_BTV = model(x_BT)
        total += F.cross_entropy(logits_BTV.flatten(0, 1), y_BT.flatten(), reduction="sum").item()
        count += y_BT.numel()
    model.train(was_training)
    return total / count


def _balance(load_by_layer: dict[str, torch.Tensor]) -> float | None:
    """Worst layer's max/mean expert load (1.0 = perfectly even)."""
    ratios = [float(v.max() / v.mean()) for v in load_by_layer.values() if v.sum() > 0]
    return max(ratios) if ratios else None


# --- the loop --------------------------------------------------------------------------------
class Trainer:
    """One training run. `run()` does all of it; `step()` does one optimizer step, so a benchmark
    can interleave several runs in one process and time them side by side.

    resume=True continues from out_dir's checkpoint (cfg may then be None, or must match the
    stored config); with no checkpoint yet it starts fresh from cfg.

    Under torchrun every rank builds a Trainer: dense weights are data parallel, and with
    expert_parallel=N each group of N ranks splits the experts (see mixkit.train.distributed).
    Rank 0 alone writes logs, checkpoints and plots, and runs the callbacks.
    """

    def __init__(
        self,
        cfg: RunConfig | None,
        out_dir: str | Path,
        resume: bool = False,
        callbacks: Iterable[Callback] = (),
        expert_parallel: int = 1,
        steps: int | None = None,
    ):
        self.out_dir = Path(out_dir)
        self.par = tdist.setup(expert_parallel)
        self.callbacks = list(callbacks) if self.par.is_main else []
        threads = (
            tdist.default_threads(self.par) if self.par.distributed else min(4, os.cpu_count() or 1)
        )
        # resolve: the config, the data, the checkpoint to continue (train/setup.py)
        resolved = resolve_run(cfg, self.out_dir, resume, steps, threads)
        self.cfg, self.loop, self.corpus = resolved.cfg, resolved.cfg.train, resolved.corpus
        self.config_dict = self.cfg.to_dict()
        tdist.check_same_config({**self.config_dict, "expert_parallel": self.par.ep_size}, self.par)
        self._build(resolved.ckpt)
        if resolved.ckpt is not None:
            self._restore(resolved.ckpt)
        if self.par.distributed:  # independent noise and dropout per rank, reproducible per step
            torch.manual_seed(self.loop.seed * 1_000_003 + 7919 * self.par.rank + self.start)
        self._announce(resumed=resolved.ckpt is not None)

    def _build(self, ckpt: Checkpoint | None) -> None:
        """The model (its weights from `ckpt` when resuming), sharded, on its device, and its
        optimizer, batches and log."""
        par, loop = self.par, self.loop
        if par.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(loop.seed)  # the same initial weights on every rank
        self.model = build_model(self.cfg.model)
        self.params = self.model.num_parameters()  # all experts, before any sharding
        self.params_excluding_embeddings = self.model.num_parameters(exclude_embeddings=True)
        self.macs = self.model.active_macs_per_token()
        self.start = ckpt.step if ckpt is not None else 0
        if ckpt is not None:
            ckpt.load_weights(self.model)  # a full checkpoint, whatever world size wrote it
        tdist.parallelize(self.model, par)
        self.device = mdist.device()
        self.model.to(self.device)
        self.optimizer = make_optimizer(self.model, self.cfg.optim)
        self.done = self.start  # optimizer steps completed
        # every rank reads its slice of a global batch of world x batch_size sequences
        self.batches = TrainBatches(
            self.corpus.splits["train"], loop.batch_size * par.world, loop.seq_len, loop.seed
        )
        keep = self.start if ckpt is not None else None
        self.log = JsonlLog(self.out_dir / "log.jsonl", keep) if par.is_main else NoLog()
        self._reset_window()
        self.train_loss, self.val_loss, self.tokens_per_s = float("nan"), float("nan"), 0.0
        self.train_time = 0.0  # seconds spent in training steps (not eval or checkpoints)

    def _restore(self, ckpt: Checkpoint) -> None:
        """Optimizer and RNG state from the checkpoint: the run continues with the same bits."""
        opt_state = ckpt.train_state["optimizer"]
        if self.par.ep_size > 1:
            opt_state = shard_optimizer_state(self.model, self.optimizer, opt_state)
        self.optimizer.load_state_dict(opt_state)
        torch.set_rng_state(ckpt.train_state["torch_rng"])

    def _announce(self, resumed: bool) -> None:
        """Log the start record and tell the callbacks."""
        info = {
            "event": "start",
            "step": self.start,
            "name": self.cfg.name,
            "params": self.params,
            "params_excluding_embeddings": self.params_excluding_embeddings,
            "active_macs_per_token": self.macs,
            "macs_breakdown": self.model.macs_breakdown(),
            "moe_layers": [name for name, _ in self.model.moe_layers()],
            "total_steps": self.loop.steps,
            "resumed": resumed,
            "threads": torch.get_num_threads(),
            "world_size": self.par.world,
            "expert_parallel": self.par.ep_size,
            "tokens": {k: int(len(v)) for k, v in self.corpus.splits.items()},
            "config": self.config_dict,
        }
        self.log.write(info)
        for cb in self.callbacks:
            cb.on_start(info)
        self.model.train()

    @property
    def finished(self) -> bool:
        return self.done >= self.loop.steps

    def _reset_window(self) -> None:
        self._w_loss, self._w_aux, self._w_n, self._w_time = 0.0, 0.0, 0, 0.0
        self._w_load: dict[str, torch.Tensor] = {}

    def step(self) -> None:
        """One optimizer step, then whatever logging, evaluation and checkpointing is due."""
        model, loop, step = self.model, self.loop, self.done
        t0 = time.perf_counter()
        lr = lr_at(step, loop.steps, self.cfg.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        par = self.par
        x_BT, y_BT = self.batches.get(step)
        if par.distributed:
            B = loop.batch_size
            x_BT, y_BT = (
                x_BT[par.rank * B : (par.rank + 1) * B],
                y_BT[par.rank * B : (par.rank + 1) * B],
            )
        x_BT, y_BT = x_BT.to(self.device), y_BT.to(self.device)
        logits_BTV = model(x_BT)
        loss = F.cross_entropy(logits_BTV.flatten(0, 1), y_BT.flatten())
        aux = model.aux_loss()  # weighted MoE balancing losses (0 for a dense model)
        self.optimizer.zero_grad(set_to_none=True)
        (loss + aux).backward()
        tdist.reduce_gradients(model, par)
        if self.cfg.optim.grad_clip > 0:
            tdist.clip_grad_norm(model, self.cfg.optim.grad_clip, par)
        self.optimizer.step()
        # aux-loss-free balancing lives outside forward; its loads are summed over every rank
        update_router_biases(model, torch.distributed.group.WORLD if par.distributed else None)
        loss_value, aux_value = tdist.mean_over_ranks([loss.item(), aux.detach().item()], par)
        elapsed = time.perf_counter() - t0
        self._w_time += elapsed
        self.train_time += elapsed

        if not math.isfinite(loss_value):
            raise DataError(
                f"loss became {loss_value} at step {step + 1}; lower optim.lr or raise "
                "optim.warmup_steps"
            )
        self._w_loss += loss_value
        self._w_aux += aux_value
        self._w_n += 1
        for name, tpe in model.expert_load().items():
            self._w_load[name] = self._w_load.get(name, 0) + tpe
        self.done = done = step + 1
        for cb in self.callbacks:
            cb.on_step(done)

        if done % loop.log_every == 0 or done == loop.steps:
            self._log_window(lr)
        if done % loop.eval_every == 0 or done == loop.steps:
            self.evaluate_val()
        if done % loop.checkpoint_every == 0 or done == loop.steps:
            self.checkpoint()

    def _log_window(self, lr: float) -> None:
        tokens_per_step = self.loop.batch_size * self.loop.seq_len * self.par.world
        self.train_loss = self._w_loss / self._w_n
        self.tokens_per_s = self._w_n * tokens_per_step / max(self._w_time, 1e-9)
        rec = {
            "event": "train",
            "step": self.done,
            "loss": self.train_loss,
            "aux_loss": self._w_aux / self._w_n,
            "lr": lr,
            "tokens_per_s": self.tokens_per_s,
            "tokens_seen": self.done * tokens_per_step,
            "expert_load": {k: (v / v.sum()).tolist() for k, v in self._w_load.items()},
            "balance": _balance(self._w_load),
        }
        self.log.write(rec)
        for cb in self.callbacks:
            cb.on_log(rec)
        self._reset_window()

    def evaluate_val(self) -> float:
        loop = self.loop
        # every rank evaluates the same windows (expert parallel layers need every rank anyway)
        val = evaluate(
            self.model,
            self.corpus.splits["val"],
            loop.batch_size,
            loop.seq_len,
            loop.eval_batches,
            self.device,
        )
        rec = {
            "event": "eval",
            "step": self.done,
            "val_loss": val,
            "val_ppl": math.exp(min(val, 50)),
        }
        self.log.write(rec)
        for cb in self.callbacks:
            cb.on_eval(rec)
        self.val_loss = val
        return val

    def checkpoint(self) -> Path:
        state = {
            "step": self.done,
            "data_position": self.batches.position(self.done),
            "data_fingerprint": self.corpus.fingerprint,
            "world_size": self.par.world,
            "expert_parallel": self.par.ep_size,
        }
        path = self.out_dir / "checkpoint"
        if self.par.ep_size > 1:  # gather the experts: a checkpoint always holds all of them
            opt_state = full_optimizer_state(self.model, self.optimizer)
            with gathered_experts(self.model):
                if self.par.is_main:
                    path = self._save(state, opt_state)
        elif self.par.is_main:
            path = self._save(state, self.optimizer)
        tdist.barrier(self.par)  # nobody runs ahead (or exits) before the checkpoint is on disk
        self.log.write({"event": "checkpoint", "step": self.done})
        return path

    def _save(self, state, optimizer) -> Path:
        model = self.model if self.device.type == "cpu" else _cpu_copy(self.model)
        return save_checkpoint(
            self.out_dir, model, optimizer, state, self.config_dict, self.corpus.tokenizer_path
        )

    def finish(self, plots: bool = True) -> TrainResult:
        """Test loss, plots, summary.json; call once `finished`."""
        loop, splits = self.loop, self.corpus.splits
        if self.start >= loop.steps:  # resumed a finished run: report it without training
            self.evaluate_val()
        test_loss = None
        if len(splits["test"]) > loop.seq_len + 1:
            test_loss = evaluate(
                self.model,
                splits["test"],
                loop.batch_size,
                loop.seq_len,
                loop.eval_batches,
                self.device,
            )
        expect = self.cfg.expect.val_loss_below
        result = TrainResult(
            out_dir=self.out_dir,
            steps=self.done,
            train_loss=self.train_loss,
            val_loss=self.val_loss,
            test_loss=test_loss,
            params=self.params,
            active_macs_per_token=self.macs,
            tokens_per_s=self.tokens_per_s,
            expect_met=None if expect is None else bool(self.val_loss < expect),
        )
        if not self.par.is_main:
            return result
        if plots:
            result.plots = plot_run(self.out_dir)
        self.log.write({"event": "end", "step": self.done, **result.as_dict()})
        (self.out_dir / "summary.json").write_text(json.dumps(result.as_dict(), indent=2), "utf-8")
        for cb in self.callbacks:
            cb.on_end(result)
        return result

    def run(self, plots: bool = True) -> TrainResult:
        while not self.finished:
            self.step()
        return self.finish(plots)


def _cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).to("cpu")


def train(
    cfg: RunConfig | None,
    out_dir: str | Path,
    resume: bool = False,
    callbacks: Iterable[Callback] = (),
    plots: bool = True,
    expert_parallel: int = 1,
    steps: int | None = None,
) -> TrainResult:
    """Train the model `cfg` describes, writing checkpoints, log.jsonl and plots under out_dir.

    resume=True continues from out_dir's checkpoint (cfg may then be None, or must match the
    stored config); with no checkpoint yet it starts fresh from cfg. `steps` with resume=True and
    cfg=None extends the stored run to that many steps. Under torchrun, each rank calls this;
    expert_parallel=N splits the experts over groups of N ranks.
    """
    trainer = Trainer(
        cfg,
        out_dir,
        resume=resume,
        callbacks=callbacks,
        expert_parallel=expert_parallel,
        steps=steps,
    )
    return trainer.run(plots)
