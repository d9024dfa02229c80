"""Fixtures: a small text and tiny runs trained on it for a few dozen steps (about a second)."""

from __future__ import annotations

import pytest
import torch
import transformers

from tests.convert.helpers import LLAMA, MOE, train_run, write_text

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


def pytest_configure(config):
    # Qwen2-MoE without a shared expert (what mixkit exports) initialises empty tensors
    config.addinivalue_line("filterwarnings", "ignore:Initializing zero-element tensors")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def text(tmp_path_factory):
    return write_text(tmp_path_factory.mktemp("data") / "text.txt")


@pytest.fixture(scope="session")
def moe_run(tmp_path_factory, text):
    """A Mixtral-shaped mixkit MoE (every block, top-2 renormalised, GQA), byte tokenizer."""
    model = {**LLAMA, "moe": MOE, "moe_every": 1, "n_kv_heads": 2, "block_size": 64}
    return train_run(tmp_path_factory.mktemp("runs") / "moe", text, model, steps=60)


@pytest.fixture(scope="session")
def dense_run(tmp_path_factory, text):
    """A Llama-shaped dense mixkit LM with a BPE tokenizer."""
    model = {**LLAMA, "block_size": 64}
    return train_run(tmp_path_factory.mktemp("runs") / "dense", text, model, 60, tokenizer="bpe")


@pytest.fixture(scope="session")
def gpt2_run(tmp_path_factory, text):
    """mixkit's default block (GPT-2's), dense ReLU."""
    return train_run(tmp_path_factory.mktemp("runs") / "gpt2", text, {"block_size": 32}, steps=10)


@pytest.fixture(scope="session")
def qwen3_moe_run(tmp_path_factory, text):
    """Qwen3-MoE-shaped: q/k norms, heads wider than d_model / n_heads, GQA, byte tokenizer."""
    model = {**LLAMA, "moe": MOE, "moe_every": 1, "n_kv_heads": 2, "block_size": 64}
    model.update(qk_norm=True, head_dim=12)
    return train_run(tmp_path_factory.mktemp("runs") / "qwen3moe", text, model, steps=60)
