"""Sparse upcycling: experts copy the dense FFN, so at step 0 the MoE computes the dense model
exactly for every router whose gate weights sum to 1; training then goes on from it."""

from __future__ import annotations

import pytest
import torch

from mixkit.convert import keeps_dense_output, load_run, upcycle
from mixkit.errors import ConfigError
from mixkit.moe import MoE
from mixkit.train.loop import Trainer, evaluate
from tests.convert.helpers import HF_MODELS, hf_folder

ROUTERS = [
    ({"router": "topk", "k": 2}, True),
    ({"router": "noisy_topk", "k": 2}, True),
    ({"router": "sigmoid_bias", "k": 2}, True),
    ({"router": "topk", "k": 2, "renormalize": False}, False),
    ({"router": "topk", "k": 1}, False),
    ({"router": "switch", "k": 1}, False),
    ({"router": "expert_choice", "k": 2}, False),
]


@pytest.mark.parametrize(("options", "exact"), ROUTERS, ids=lambda v: str(v))
def test_step_0_logits_equal_the_dense_model_s_exactly_when_gate_weights_sum_to_1(
    options, exact, dense_run, tmp_path
):
    dense = load_run(dense_run)
    run, said_exact = upcycle(dense_run, tmp_path / "up", experts=4, every=1, options=options)
    assert said_exact == exact
    assert keeps_dense_output(run.model.blocks[0].ffn.cfg) == exact
    x_BT = torch.randint(0, dense.cfg.model.vocab_size, (2, 32))
    with torch.no_grad():
        diff = (run.model(x_BT) - dense.model(x_BT)).abs().max().item()
    assert (diff < 1e-5) == exact, diff


def test_gpt2_block_relu_experts_upcycle_exactly(gpt2_run, tmp_path):
    dense = load_run(gpt2_run)
    run, exact = upcycle(gpt2_run, tmp_path / "up", experts=3, every=2)
    assert exact and run.model.cfg.moe.num_experts == 3 and run.model.cfg.expert == "relu"
    x_BT = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(run.model(x_BT), dense.model(x_BT), atol=1e-5, rtol=0)


def test_every_nth_block_and_noise(dense_run, tmp_path):
    dense = load_run(dense_run)
    run, exact = upcycle(dense_run, tmp_path / "up", experts=4, every=2, noise=0.01)
    assert not exact
    kinds = [isinstance(b.ffn, MoE) for b in run.model.blocks]
    assert kinds == [False, True]
    experts = run.model.blocks[1].ffn.experts
    w_out = dense.model.blocks[1].ffn.w_out.weight.t()
    assert not torch.equal(experts.w_out[0], experts.w_out[1])  # the noise broke the symmetry
    torch.testing.assert_close(experts.w_out[0], w_out, atol=0.05 * w_out.std().item(), rtol=0)


def test_training_continues_from_the_upcycled_model_and_lowers_the_loss(dense_run, tmp_path):
    upcycle(dense_run, tmp_path / "up", experts=4, options={"router": "topk", "k": 2})
    trainer = Trainer(None, tmp_path / "up", resume=True, steps=30)  # `mixkit train --resume`
    assert trainer.start == 0 and len(trainer.model.moe_layers()) == 2
    val = trainer.corpus.splits["val"]

    def val_loss() -> float:
        return evaluate(trainer.model, val, 4, 16, 4)

    before = val_loss()
    trainer.run(plots=False)
    assert trainer.done == 30
    assert val_loss() < before


def test_an_hf_llama_upcycles_with_its_tokenizer(text, tmp_path):
    hf = hf_folder(tmp_path / "hf", HF_MODELS["llama"], text)
    run, exact = upcycle(
        tmp_path / "hf", tmp_path / "up", experts=4, data=str(text), sets=["train.threads=1"]
    )
    assert exact and run.cfg.data.tokenizer_file == str(tmp_path / "up" / "tokenizer.json")
    x_BT = torch.randint(0, hf.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(run.model(x_BT), hf(x_BT).logits, atol=1e-5, rtol=0)
    Trainer(None, tmp_path / "up", resume=True, steps=1).run(plots=False)


def test_upcycle_refuses_an_moe_and_bad_options(moe_run, dense_run, tmp_path):
    with pytest.raises(ConfigError, match="already an MoE"):
        upcycle(moe_run, tmp_path / "a", experts=4)
    with pytest.raises(ConfigError, match="k \\(2\\) must be 1 for router 'switch'"):
        upcycle(dense_run, tmp_path / "b", experts=4, options={"router": "switch", "k": 2})
    with pytest.raises(ConfigError, match="--every"):
        upcycle(dense_run, tmp_path / "c", experts=4, every=0)
    with pytest.raises(ConfigError, match="not model"):
        upcycle(dense_run, tmp_path / "d", experts=4, sets=["model.d_model=64"])
    assert not any(tmp_path.iterdir())
