"""Tiny mixkit runs (a few steps on a small generated text) and tiny models for the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Glm4MoeConfig,
    LlamaConfig,
    MixtralConfig,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
)

from mixkit.models import MoESpec, TransformerLM, TransformerLMConfig
from mixkit.train.config import config_from_dict
from mixkit.train.loop import Trainer

V = 61  # the vocabulary of the freshly built models
LLAMA = {"norm": "rmsnorm", "pos": "rope", "expert": "swiglu"}
MOE = {"num_experts": 4, "d_hidden": 24, "k": 2, "router": "topk"}
WORDS = (
    "the king and queen of mixtures route every token to two experts while dense ones wait".split()
)


def write_text(path: Path, chars: int = 30_000) -> Path:
    """A deterministic English-like text of about `chars` characters."""
    g = torch.Generator().manual_seed(0)
    lines = []
    while sum(len(x) for x in lines) < chars:
        idx = torch.randint(
            0, len(WORDS), (int(torch.randint(4, 12, (1,), generator=g)),), generator=g
        )
        lines.append(" ".join(WORDS[i] for i in idx.tolist()) + ".\n")
    path.write_text("".join(lines), "utf-8")
    return path


def run_config(data: Path, model: dict[str, Any], steps: int = 4, tokenizer: str = "byte"):
    raw = {
        "name": "tiny",
        "model": {
            "arch": "transformer",
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 4,
            "ffn_hidden": 48,
            **model,
        },
        "data": {"path": str(data), "tokenizer": tokenizer, "vocab_size": 300},
        "optim": {"lr": 1e-2, "warmup_steps": 1},
        "train": {
            "steps": steps,
            "batch_size": 4,
            "seq_len": 16,
            "threads": 1,
            "eval_every": 1000,
            "eval_batches": 1,
            "checkpoint_every": 1000,
        },
    }
    return config_from_dict(raw, "test")


def train_run(out: Path, data: Path, model: dict[str, Any], steps: int = 4, **kw) -> Path:
    """A run folder trained `steps` steps (plots off: they are slow)."""
    trainer = Trainer(run_config(data, model, steps, **kw), out)
    while not trainer.finished:
        trainer.step()  # the last step writes the checkpoint
    return out


def bpe_tokenizer(text, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.read_text().splitlines(keepends=True), trainer=trainer)
    return tok


SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
HF_MODELS = {
    "llama": lambda v: LlamaConfig(vocab_size=v, intermediate_size=48, **SMALL),
    "qwen2": lambda v: Qwen2Config(vocab_size=v, intermediate_size=48, **SMALL),
    "mixtral": lambda v: MixtralConfig(
        vocab_size=v, intermediate_size=24, num_local_experts=4, num_experts_per_tok=2, **SMALL
    ),
    "qwen2_moe": lambda v: Qwen2MoeConfig(
        vocab_size=v,
        intermediate_size=48,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=0,
        num_experts=4,
        num_experts_per_tok=2,
        decoder_sparse_step=2,
        **SMALL,
    ),
    "qwen3-head-dim-12": lambda v: Qwen3Config(
        vocab_size=v, intermediate_size=48, head_dim=12, attention_bias=True, **SMALL
    ),
    "qwen3_moe": lambda v: Qwen3MoeConfig(
        vocab_size=v,
        intermediate_size=48,
        moe_intermediate_size=24,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        decoder_sparse_step=2,
        **SMALL,
    ),
    "glm4_moe": lambda v: Glm4MoeConfig(
        vocab_size=v,
        intermediate_size=48,
        moe_intermediate_size=24,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_shared_experts=1,
        first_k_dense_replace=0,
        n_group=1,
        topk_group=1,
        attention_bias=True,
        use_qk_norm=True,
        partial_rotary_factor=1.0,
        head_dim=8,
        **SMALL,
    ),
}


def hf_folder(path, config, text):
    """An HF checkpoint built from a config (random weights, biases and norms not trivial) with
    a BPE tokenizer.json trained on `text`."""
    tok = bpe_tokenizer(text, 300)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config(tok.get_vocab_size())).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 1 and "o_proj" not in name:  # (mixkit's o_proj has no bias)
                # norms at 1 and biases at 0 would hide a wrong mapping
                p.add_(torch.randn_like(p) * 0.1)
            elif "gate.weight" in name:  # spread the router so top-k choices are clear
                p.normal_(std=0.5)
        for name, b in hf.named_buffers():
            if "e_score_correction_bias" in name:  # GLM-4-MoE's selection bias
                b.normal_(std=0.3)
    hf.save_pretrained(path)
    tok.save(str(path / "tokenizer.json"))
    return hf


def fresh(**kw) -> TransformerLM:
    """A freshly initialised tiny model whose norms are not all ones (so they are checked)."""
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, block_size=16, ffn_hidden=48)
    model = TransformerLM(TransformerLMConfig(**{**cfg, **kw})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def moe(**kw) -> MoESpec:
    return MoESpec(**{"num_experts": 4, "d_hidden": 24, "k": 2, "router": "topk", **kw})
