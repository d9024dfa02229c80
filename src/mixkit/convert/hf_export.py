"""A mixkit transformer LM as a Hugging Face `transformers` folder, in the architecture hf_arch
chooses: its config, its weights in that architecture's names, and the tokenizer files.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from mixkit.convert.hf_arch import hf_config
from mixkit.convert.runs import MixkitRun, staged
from mixkit.convert.vocab import hf_tokenizer_json
from mixkit.models import DenseFFN, TransformerLM, TransformerLMConfig
from mixkit.moe import MoE

NO_TOKENS = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}


def _gpt2_state_dict(model: TransformerLM) -> dict[str, torch.Tensor]:
    sd, c = model.state_dict(), model.cfg
    zeros = torch.zeros
    out = {
        "transformer.wte.weight": sd["tok_emb.weight"],
        "transformer.wpe.weight": sd["pos_emb.weight"],
        "transformer.ln_f.weight": sd["ln_f.weight"],
        "transformer.ln_f.bias": sd["ln_f.bias"],
        "lm_head.weight": sd["lm_head.weight"],
    }
    D, H = c.d_model, c.ffn_hidden
    for i in range(c.n_layers):
        p, m = f"transformer.h.{i}.", f"blocks.{i}."
        for hf, mk in (("ln_1", "ln1"), ("ln_2", "ln2")):
            out[f"{p}{hf}.weight"], out[f"{p}{hf}.bias"] = (
                sd[m + mk + ".weight"],
                sd[m + mk + ".bias"],
            )
        # GPT-2's Conv1D stores (in, out): the transpose of nn.Linear's weight
        out[p + "attn.c_attn.weight"] = sd[m + "attn.qkv.weight"].t()
        out[p + "attn.c_attn.bias"] = sd.get(m + "attn.qkv.bias", zeros(3 * D))
        out[p + "attn.c_proj.weight"] = sd[m + "attn.proj.weight"].t()
        out[p + "attn.c_proj.bias"] = zeros(D)
        out[p + "mlp.c_fc.weight"] = sd[m + "ffn.w_in.weight"].t()
        out[p + "mlp.c_fc.bias"] = zeros(H)
        out[p + "mlp.c_proj.weight"] = sd[m + "ffn.w_out.weight"].t()
        out[p + "mlp.c_proj.bias"] = zeros(D)
    return out


def _ffn_state_dict(ffn: Any, prefix: str, arch: str) -> dict[str, torch.Tensor]:
    """A block's FFN in Llama's (dense) or Mixtral's/Qwen2-MoE's (MoE) names."""
    if isinstance(ffn, DenseFFN):
        gate, up = ffn.w_in.weight.detach().chunk(2, dim=0)
        return {
            prefix + "gate_proj.weight": gate,
            prefix + "up_proj.weight": up,
            prefix + "down_proj.weight": ffn.w_out.weight.detach(),
        }
    assert isinstance(ffn, MoE)
    ex = ffn.experts
    assert ex.w_gate is not None
    out = {
        prefix + "gate.weight": ffn.router.w_gate.detach().t(),  # (E, D)
        # (E, 2H, D): the gate projections' rows first, then the up projections'
        prefix + "experts.gate_up_proj": torch.cat([ex.w_gate, ex.w_in], dim=2)
        .transpose(1, 2)
        .detach(),
        prefix + "experts.down_proj": ex.w_out.detach().transpose(1, 2),  # (E, D, H)
    }
    if arch == "glm4_moe":
        out[prefix + "gate.e_score_correction_bias"] = ffn.router.bias.detach()
        out.update(_shared_state_dict(ffn, prefix + "shared_experts."))
    if arch == "qwen2_moe":  # Qwen2-MoE always has a shared expert: an empty one adds exactly 0
        D = ffn.cfg.d_model
        out[prefix + "shared_expert.gate_proj.weight"] = torch.zeros(0, D)
        out[prefix + "shared_expert.up_proj.weight"] = torch.zeros(0, D)
        out[prefix + "shared_expert.down_proj.weight"] = torch.zeros(D, 0)
        out[prefix + "shared_expert_gate.weight"] = torch.zeros(1, D)
    return out


def _shared_state_dict(ffn: MoE, prefix: str) -> dict[str, torch.Tensor]:
    """S shared experts of width H, summed, as one MLP of width S * H."""
    D = ffn.cfg.d_model
    sh = ffn.shared_experts
    if sh is None:  # GLM-4-MoE with n_shared_experts = 0: an empty MLP
        w_gate = w_in = w_out = torch.zeros(0, D)
    else:
        assert sh.w_gate is not None
        w_gate, w_in = (w.detach().transpose(1, 2).flatten(0, 1) for w in (sh.w_gate, sh.w_in))
        w_out = sh.w_out.detach().flatten(0, 1)  # (S * H, D)
    return {
        prefix + "gate_proj.weight": w_gate,
        prefix + "up_proj.weight": w_in,
        prefix + "down_proj.weight": w_out.t(),
    }


def _attention_state_dict(sd: dict, c: TransformerLMConfig, p: str, m: str, arch: str) -> dict:
    """One block's attention in Llama's names (q/k/v split, Qwen3's q/k norms and o_proj bias)."""
    q, kv = c.n_heads * c.dh, c.kv_heads * c.dh
    names, out = ("q_proj", "k_proj", "v_proj"), {}
    for name, w in zip(names, sd[m + "attn.qkv.weight"].split([q, kv, kv]), strict=True):
        out[f"{p}self_attn.{name}.weight"] = w
    if c.qkv_bias:
        for name, b in zip(names, sd[m + "attn.qkv.bias"].split([q, kv, kv]), strict=True):
            out[f"{p}self_attn.{name}.bias"] = b
        if arch in ("qwen3", "qwen3_moe"):  # Qwen3's attention_bias biases o_proj too
            out[p + "self_attn.o_proj.bias"] = torch.zeros(c.d_model)
    if c.qk_norm:
        out[p + "self_attn.q_norm.weight"] = sd[m + "attn.q_norm.weight"]
        out[p + "self_attn.k_norm.weight"] = sd[m + "attn.k_norm.weight"]
    out[p + "self_attn.o_proj.weight"] = sd[m + "attn.proj.weight"]
    return out


def _llama_state_dict(model: TransformerLM, arch: str) -> dict[str, torch.Tensor]:
    sd, c = model.state_dict(), model.cfg
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"]}
    for i, block in enumerate(model.blocks):
        p, m = f"model.layers.{i}.", f"blocks.{i}."
        out.update(_attention_state_dict(sd, c, p, m, arch))
        out[p + "input_layernorm.weight"] = sd[m + "ln1.weight"]
        out[p + "post_attention_layernorm.weight"] = sd[m + "ln2.weight"]
        out.update(_ffn_state_dict(block.ffn, p + "mlp.", arch))
    out["model.norm.weight"] = sd["ln_f.weight"]
    out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def hf_model(model: TransformerLM) -> Any:
    """The HF model (float32, eval mode) that computes what `model` computes."""
    cfg = hf_config(model.cfg)
    if cfg.model_type == "gpt2":
        sd = _gpt2_state_dict(model)
    else:
        sd = _llama_state_dict(model, cfg.model_type)
    with warnings.catch_warnings():  # Qwen2-MoE's empty shared expert: nothing to initialise
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    hf.load_state_dict({k: v.detach().float().contiguous() for k, v in sd.items()}, strict=True)
    return hf.eval()


def export_hf(run: MixkitRun, out: Path) -> str:
    """Write `run` as an HF folder at `out` (config.json, model.safetensors, tokenizer files);
    returns the architecture's model_type."""
    hf = hf_model(run.model)
    tok_json, is_byte = hf_tokenizer_json(run.tokenizer_path)
    with staged(out) as tmp:
        hf.save_pretrained(tmp)
        (tmp / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False), "utf-8")
        tok_config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": run.model.cfg.block_size,
            "clean_up_tokenization_spaces": False,
        }
        if is_byte:  # so that importing it back gives mixkit's byte tokenizer again
            tok_config["mixkit_tokenizer"] = "byte"
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2), "utf-8")
    return str(hf.config.model_type)
