"""The Llama-style transformer block (rmsnorm, rope, grouped-query attention, qkv bias) that the
conversions rely on: sampling with its KV cache equals recomputing, its multiply-add count is the
one torch counts, and a converted run trains under expert parallelism."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mixkit.convert import export_hf, import_hf, load_run
from mixkit.models import MoESpec, TransformerLM, TransformerLMConfig
from mixkit.models.transformer_lm import KVCache
from mixkit.train.checkpoint import load_checkpoint
from tests.convert.helpers import LLAMA

V = 53


def llama_block(**kw) -> TransformerLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, block_size=16, ffn_hidden=48)
    return TransformerLM(TransformerLMConfig(**{**cfg, **LLAMA, "n_kv_heads": 2, **kw})).eval()


@pytest.mark.parametrize("moe", [None, MoESpec(num_experts=4, k=2, router="topk", d_hidden=24)])
def test_kv_cache_with_rope_and_grouped_query_attention_matches_recomputing(moe):
    model = llama_block(moe=moe, qkv_bias=True)
    x_BT = torch.randint(0, V, (2, 24))
    logits, cache = model._next_logits(x_BT[:, :5], None, x_BT[:, :5])
    for t in range(5, 24):
        logits, cache = model._next_logits(x_BT[:, t : t + 1], cache, x_BT[:, : t + 1])
        window = x_BT[:, max(0, t + 1 - 16) : t + 1]
        torch.testing.assert_close(logits, model(window)[:, -1], rtol=1e-5, atol=1e-5)
    cache = [KVCache() for _ in model.blocks]
    model(x_BT[:, :6], cache)
    torch.testing.assert_close(
        model(x_BT[:, 6:10], cache), model(x_BT[:, :10])[:, 6:10], rtol=1e-5, atol=1e-5
    )


def test_grouped_query_attention_multiply_adds_match_torch_s_count():
    model = llama_block()
    assert model.blocks[0].attn.qkv.weight.shape == (32 + 2 * 2 * 8, 32)  # q + k, v of 2 heads
    x_BT = torch.randint(0, V, (2, 16))
    with FlopCounterMode(display=False) as counter:
        model(x_BT)
    matmuls = sum(counter.get_flop_counts()["Global"].values()) / 2 / x_BT.numel()
    c = model.cfg
    attention_scores = c.n_layers * 2 * c.block_size * c.d_model  # QK^T and AV: sdpa, not mm
    assert model.active_macs_per_token() - attention_scores == matmuls


def test_a_converted_run_trains_under_expert_parallelism(moe_run, text, tmp_path):
    export_hf(load_run(moe_run), tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "run", str(text), ["train.threads=1"])
    env = dict(os.environ, OMP_NUM_THREADS="1", MIXKIT_DIST_TIMEOUT="60")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = ["-m", "mixkit", "train", "--resume", "--out", str(tmp_path / "run"), "--steps", "2"]
    r = subprocess.run(
        [*cmd, *args, "--expert-parallel", "2", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_checkpoint(tmp_path / "run").step == 2
