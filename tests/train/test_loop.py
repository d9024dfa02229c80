"""The training loop: it learns, logs, checkpoints bit-exactly and states its golden loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mixkit.errors import ConfigError, DataError
from mixkit.models import build_model
from mixkit.train import Trainer, generate_text, load_checkpoint, load_config, lr_at, train
from mixkit.train.config import OptimConfig
from mixkit.train.loop import evaluate
from tests.train.helpers import tiny_config


def read_log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_lr_schedule_warms_up_then_decays_to_min():
    cfg = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=10)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10], strict=True))
    assert lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))
    assert lr_at(100, 100, cfg) == pytest.approx(0.1)


def test_tiny_run_lowers_the_loss(corpus, tmp_path):
    cfg = tiny_config(corpus, train__steps=60, train__eval_every=30)
    trainer = Trainer(cfg, tmp_path / "run")
    untrained = evaluate(trainer.model, trainer.corpus.splits["val"], 16, 64, 4)
    result = trainer.run(plots=True)
    assert math.log(256) * 0.8 < untrained < math.log(256) * 1.2  # starts near uniform
    assert result.val_loss < untrained - 1.0  # ~1 nat better after 60 steps
    log = read_log(tmp_path / "run")
    train_losses = [r["loss"] for r in log if r["event"] == "train"]
    assert train_losses[-1] < train_losses[0]
    evals = [r for r in log if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [30, 60]
    assert evals[-1]["val_ppl"] == pytest.approx(math.exp(evals[-1]["val_loss"]))
    # expert load is logged per MoE layer and sums to one; plots exist
    load = [r["expert_load"]["ffn0"] for r in log if r["event"] == "train"]
    assert all(len(x) == 4 and sum(x) == pytest.approx(1.0) for x in load)
    assert {p.name for p in result.plots} == {"loss.png", "expert_load.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in result.plots)


def test_checkpoint_round_trips_to_bit_identical_weights(corpus, tmp_path):
    trainer = Trainer(tiny_config(corpus, train__steps=5), tmp_path / "run")
    trainer.run(plots=False)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.step == 5
    torch.manual_seed(123)  # a differently initialised model
    fresh = build_model(trainer.cfg.model)
    ckpt.load_weights(fresh)
    trained = trainer.model.state_dict()
    restored = fresh.state_dict()
    assert trained.keys() == restored.keys()
    for name, tensor in trained.items():
        assert tensor.dtype == restored[name].dtype
        assert torch.equal(tensor, restored[name]), name
    # tied weights stay tied after loading
    assert fresh.lm_head.weight.data_ptr() == fresh.tok_emb.weight.data_ptr()


def test_generation_produces_text_from_a_checkpoint(corpus, tmp_path):
    train(tiny_config(corpus, train__steps=40), tmp_path / "run", plots=False)
    text = generate_text(tmp_path / "run", prompt="ROMEO:", max_new_tokens=80, seed=1)
    assert text.startswith("ROMEO:") and len(text.encode()) >= len("ROMEO:") + 60
    assert text == generate_text(tmp_path / "run" / "checkpoint", "ROMEO:", 80, seed=1)
    assert text != generate_text(tmp_path / "run", "ROMEO:", 80, seed=2)
    # greedy continuation is the model's argmax at every step
    greedy = generate_text(tmp_path / "run", "ROMEO:", 20, temperature=0)
    assert greedy == generate_text(tmp_path / "run", "ROMEO:", 20, temperature=0)


def test_corrupt_and_missing_checkpoints_are_data_errors(corpus, tmp_path):
    with pytest.raises(DataError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    train(tiny_config(corpus, train__steps=3), tmp_path / "run", plots=False)
    weights = tmp_path / "run" / "checkpoint" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte inside a tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(DataError, match="fails its checksum"):
        load_checkpoint(tmp_path / "run")
    weights.write_bytes(b"")
    with pytest.raises(DataError, match="checksum"):
        generate_text(tmp_path / "run", "x", 3)


def test_existing_run_needs_resume_and_resume_needs_the_same_config(corpus, tmp_path):
    cfg = tiny_config(corpus, train__steps=3)
    train(cfg, tmp_path / "run", plots=False)
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        train(cfg, tmp_path / "run", plots=False)
    with pytest.raises(ConfigError, match="differs from the one given"):
        train(tiny_config(corpus, train__steps=4), tmp_path / "run", resume=True, plots=False)
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(None, tmp_path / "empty", resume=True)


def test_resume_survives_a_kill_between_the_checkpoint_renames(corpus, tmp_path):
    """A kill after `checkpoint` was renamed to `checkpoint.old` but before the new one landed."""
    cfg = tiny_config(corpus, train__steps=6, train__checkpoint_every=3)
    train(cfg, tmp_path / "run", plots=False)
    straight = load_checkpoint(tmp_path / "run")
    t = Trainer(cfg, tmp_path / "run3")
    for _ in range(4):
        t.step()  # checkpoint at 3, then one more step
    (tmp_path / "run3" / "checkpoint").rename(tmp_path / "run3" / "checkpoint.old")
    (tmp_path / "run3" / "checkpoint.tmp").mkdir()  # a half-written new one
    train(cfg, tmp_path / "run3", resume=True, plots=False)
    resumed = load_checkpoint(tmp_path / "run3")
    assert not (tmp_path / "run3" / "checkpoint.old").exists()
    a = load_file(straight.path / "model.safetensors")
    b = load_file(resumed.path / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


GOLDEN = Path(__file__).with_name("golden_tiny.json")
# Measured run-to-run spread of the per-step losses: none between runs at 1 thread, at most
# 4.8e-7 between 1 and 2 threads (reduction order). 1e-5 is 20x that: float noise passes,
# any change to the numerics (init, data order, loss, optimizer, schedule) does not.
GOLDEN_TOLERANCE = 1e-5


def tiny_losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_log(out) if r["event"] == "train"]


def test_tiny_preset_matches_its_golden_per_step_losses(tmp_path):
    """Golden check: the deterministic tiny run on the default corpus, step by step (its log
    every step; logging does not change the numerics), and the loss its preset promises."""
    golden = json.loads(GOLDEN.read_text())
    cfg = load_config("tiny", overrides=["train.log_every=1"])
    result = train(cfg, tmp_path / "tiny", plots=False)
    losses = tiny_losses(tmp_path / "tiny")
    assert len(losses) == len(golden["losses"]) == cfg.train.steps
    worst = max(range(len(losses)), key=lambda i: abs(losses[i] - golden["losses"][i]))
    assert losses == pytest.approx(golden["losses"], abs=GOLDEN_TOLERANCE), (
        f"step {worst + 1}: {losses[worst]} vs golden {golden['losses'][worst]} "
        f"(golden measured on torch {golden['torch']}; if the numerics changed on purpose, "
        "regenerate with: python -m tests.train.test_loop)"
    )
    assert cfg.expect.val_loss_below is not None
    assert result.expect_met, f"val loss {result.val_loss:.4f} >= {cfg.expect.val_loss_below}"


def write_golden(out: Path) -> None:
    """Regenerate golden_tiny.json (only when the numerics change on purpose)."""
    cfg = load_config("tiny", overrides=["train.log_every=1"])
    train(cfg, out, plots=False)
    golden = json.loads(GOLDEN.read_text())
    golden.update(torch=torch.__version__, losses=tiny_losses(out))
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")


def test_transformer_with_bpe_trains_through_the_same_loop(corpus, tmp_path):
    cfg = tiny_config(
        corpus,
        model__arch="transformer",
        model__n_layers=2,
        model__moe_every=2,
        data__tokenizer="bpe",
        data__vocab_size=300,
        train__steps=40,
        train__eval_every=40,
    )
    trainer = Trainer(cfg, tmp_path / "run")
    untrained = evaluate(trainer.model, trainer.corpus.splits["val"], 16, 64, 4)
    result = trainer.run(plots=False)
    assert trainer.model.cfg.block_size == cfg.train.seq_len  # filled from the loop config
    assert [name for name, _ in trainer.model.moe_layers()] == ["ffn1"]
    assert result.val_loss < untrained - 1.0
    assert generate_text(tmp_path / "run", "ROMEO:", 10).startswith("ROMEO:")


def test_sigmoid_bias_router_is_balanced_by_the_post_step_hook(corpus, tmp_path):
    cfg = tiny_config(corpus, model__moe__router="sigmoid_bias", train__steps=20)
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.run(plots=False)
    bias = trainer.model.ffns[0].router.bias
    assert bias.abs().sum() > 0  # update_router_biases ran after optimizer steps
    saved = load_file(tmp_path / "run" / "checkpoint" / "model.safetensors")
    assert torch.equal(saved["ffns.0.router.bias"], bias)  # and it is part of the checkpoint


if __name__ == "__main__":
    import tempfile

    write_golden(Path(tempfile.mkdtemp()) / "tiny")
