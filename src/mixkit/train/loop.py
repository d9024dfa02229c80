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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mixkit import distributed as mdist
from mixkit.errors import ConfigError, DataError
from mixkit.models import LanguageModel, build_model
from mixkit.train import distributed as tdist
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
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


@torch.no_grad()
def evaluate(
    model: LanguageModel, tokens, batch_size: int, seq_len: int, max_batches: int, device=None
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


class _NoLog:
    """What ranks other than 0 log: nothing."""

    def write(self, record: dict[str, Any]) -> None:
        pass


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
        out_dir = self.out_dir = Path(out_dir)
        par = self.par = tdist.setup(expert_parallel)
        self.callbacks = list(callbacks) if par.is_main else []
        ckpt = None
        if resume and find_checkpoint(out_dir) is not None:
            ckpt = load_checkpoint(out_dir)
            stored = config_from_dict(ckpt.config, f"stored in {out_dir}/checkpoint")
        elif not resume and find_checkpoint(out_dir) is not None:
            raise ConfigError(
                f"{str(out_dir)!r} already holds a run; pass --resume to continue it or choose "
                "another --out"
            )
        if cfg is None and ckpt is None:
            raise ConfigError(f"nothing to resume in {str(out_dir)!r}; pass --preset or --config")

        run_cfg = cfg if cfg is not None else stored
        default_threads = (
            tdist.default_threads(par) if par.distributed else min(4, os.cpu_count() or 1)
        )
        torch.set_num_threads(run_cfg.train.threads or default_threads)
        corpus = self.corpus = prepare_corpus(run_cfg.data)
        run_cfg = resolve(run_cfg, corpus)
        if ckpt is not None:
            if cfg is not None and resolve(cfg, corpus) != stored:
                raise ConfigError(
                    f"--resume continues the run in {str(out_dir)!r} with its stored config, which "
                    "differs from the one given; drop --preset/--config/--set or use another --out"
                )
            run_cfg = stored
            if steps is not None and steps != stored.train.steps:
                if steps < ckpt.step:
                    raise ConfigError(
                        f"--steps {steps} is before the checkpoint in {str(out_dir)!r} (step "
                        f"{ckpt.step}); give a larger number to extend the run"
                    )
                # extending a run: the cosine schedule stretches to the new end
                run_cfg = stored.model_copy(
                    update={"train": stored.train.model_copy(update={"steps": steps})}
                )
            if ckpt.train_state.get("data_fingerprint") != corpus.fingerprint:
                raise DataError(
                    f"the data changed since the checkpoint in {str(out_dir)!r} was written "
                    "(different text, tokenizer or split); resume needs the same --data"
                )
        tdist.check_same_config({**run_cfg.to_dict(), "expert_parallel": par.ep_size}, par)
        if par.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
        self.cfg, self.loop = run_cfg, run_cfg.train

        torch.manual_seed(self.loop.seed)  # the same initial weights on every rank
        self.model = build_model(run_cfg.model)
        self.params = self.model.num_parameters()  # all experts, before any sharding
        self.params_excluding_embeddings = self.model.num_parameters(exclude_embeddings=True)
        self.start = 0
        if ckpt is not None:
            ckpt.load_weights(self.model)  # a full checkpoint, whatever world size wrote it
            self.start = ckpt.step
        tdist.parallelize(self.model, par)
        self.device = mdist.device()
        self.model.to(self.device)
        self.optimizer = make_optimizer(self.model, run_cfg.optim)
        if ckpt is not None:
            opt_state = ckpt.train_state["optimizer"]
            if par.ep_size > 1:
                from mixkit.moe.parallel import shard_optimizer_state

                opt_state = shard_optimizer_state(self.model, self.optimizer, opt_state)
            self.optimizer.load_state_dict(opt_state)
            torch.set_rng_state(ckpt.train_state["torch_rng"])
        if par.distributed:  # independent noise and dropout per rank, reproducible per step
            torch.manual_seed(self.loop.seed * 1_000_003 + 7919 * par.rank + self.start)
        self.done = self.start  # optimizer steps completed
        # every rank reads its slice of a global batch of world x batch_size sequences
        self.batches = TrainBatches(
            corpus.splits["train"],
            self.loop.batch_size * par.world,
            self.loop.seq_len,
            self.loop.seed,
        )
        self.log = (
            _JsonlLog(out_dir / "log.jsonl", keep_until_step=self.start if ckpt else None)
            if par.is_main
            else _NoLog()
        )
        self.config_dict = run_cfg.to_dict()
        try:
            from mixkit.moe import update_router_biases
        except ImportError:  # pragma: no cover
            update_router_biases = None
        self._update_router_biases = update_router_biases

        self.macs = self.model.active_macs_per_token()
        info = {
            "event": "start",
            "step": self.start,
            "name": run_cfg.name,
            "params": self.params,
            "params_excluding_embeddings": self.params_excluding_embeddings,
            "active_macs_per_token": self.macs,
            "macs_breakdown": self.model.macs_breakdown(),
            "moe_layers": [name for name, _ in self.model.moe_layers()],
            "total_steps": self.loop.steps,
            "resumed": ckpt is not None,
            "threads": torch.get_num_threads(),
            "world_size": par.world,
            "expert_parallel": par.ep_size,
            "tokens": {k: int(len(v)) for k, v in corpus.splits.items()},
            "config": self.config_dict,
        }
        self.log.write(info)
        for cb in self.callbacks:
            cb.on_start(info)
        self.model.train()
        self._reset_window()
        self.train_loss, self.val_loss, self.tokens_per_s = float("nan"), float("nan"), 0.0
        self.train_time = 0.0  # seconds spent in training steps (not eval or checkpoints)

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
        if self._update_router_biases is not None:
            self._update_router_biases(model)  # aux-loss-free balancing lives outside forward
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
            from mixkit.moe.parallel import full_optimizer_state, gathered_experts

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
            from mixkit.train.plots import plot_run

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
    import copy

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
