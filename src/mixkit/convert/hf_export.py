"""A mixkit transformer LM as a Hugging Face `transformers` folder in its closest architecture.

The mapping (any other combination is a ConfigError naming the field that has no twin):

    mixkit block                          FFNs                               HF architecture
    layernorm + learned positions         dense ReLU                         GPT-2 (biases zero)
    rmsnorm + rope                        dense SwiGLU                       Llama (Qwen2 with qkv_bias)
    rmsnorm + rope                        MoE, SwiGLU experts, top-k         Mixtral when every block
                                          renormalised, k >= 2               is MoE and no qkv_bias
    rmsnorm + rope                        MoE, SwiGLU experts, any other     Qwen2-MoE (no shared expert,
                                          top-k/switch/noisy_topk            norm_topk_prob, sparse step)
    rmsnorm + rope                        MoE, SwiGLU experts, sigmoid_bias  GLM-4-MoE (one group, full
                                          (+ shared experts), every block    rotary, no dense blocks)

noisy_topk maps for inference only: HF has no noisy gate, so its noise weights are dropped (at
eval time mixkit's noisy_topk is the renormalised top-k of the clean logits, which is exact).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    Glm4MoeConfig,
    GPT2Config,
    LlamaConfig,
    MixtralConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen2MoeConfig,
)

from mixkit.convert.runs import MixkitRun, staged
from mixkit.convert.vocab import hf_tokenizer_json
from mixkit.errors import ConfigError
from mixkit.models import DenseFFN, TransformerLM, TransformerLMConfig
from mixkit.moe import MoE, MoEConfig

NO_TOKENS = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}


def block_family(c: TransformerLMConfig) -> str:
    """ "gpt2" or "llama": the HF block family a mixkit block matches exactly, or a ConfigError."""
    if (c.norm, c.pos) == ("layernorm", "learned"):
        if c.moe is not None:
            raise ConfigError(
                "model.moe with model.norm 'layernorm' and model.pos 'learned' (GPT-2's block): no "
                "Hugging Face MoE architecture has that block; train MoE models to export with "
                "model.norm = 'rmsnorm' and model.pos = 'rope'"
            )
        if c.expert != "relu":
            raise ConfigError(
                "model.expert 'swiglu' with GPT-2's block (layernorm, learned positions): GPT-2's "
                "FFN is not gated; use model.norm = 'rmsnorm' and model.pos = 'rope' (Llama)"
            )
        if c.kv_heads != c.n_heads:
            raise ConfigError("model.n_kv_heads: GPT-2 has no grouped-query attention")
        return "gpt2"
    if (c.norm, c.pos) == ("rmsnorm", "rope"):
        if c.expert != "swiglu":
            raise ConfigError(
                "model.expert 'relu' with model.norm 'rmsnorm': Llama-family FFNs and experts "
                "are SwiGLU; train with model.expert = 'swiglu'"
            )
        return "llama"
    raise ConfigError(
        f"model.norm {c.norm!r} with model.pos {c.pos!r}: no Hugging Face architecture has this "
        "block; use layernorm + learned (GPT-2) or rmsnorm + rope (Llama and its MoEs)"
    )


def moe_routing(c: TransformerLMConfig) -> tuple[MoEConfig, bool]:
    """(the MoE layer config, whether its top-k weights are renormalised), or a ConfigError
    naming the option that HF's top-k MoE blocks cannot express."""
    assert c.moe is not None
    if c.moe.groups is not None:
        raise ConfigError("model.moe.groups: the hierarchical MoE has no Hugging Face twin")
    lc = c.moe.layer_config(c.d_model)
    assert isinstance(lc, MoEConfig)
    if lc.router == "expert_choice":
        raise ConfigError(
            "model.moe.router 'expert_choice': experts choose tokens over the whole batch (not "
            "causal); no Hugging Face architecture routes that way"
        )
    if lc.router == "sigmoid_bias" and c.moe_every != 1:
        raise ConfigError(
            f"model.moe.router 'sigmoid_bias' with model.moe_every ({c.moe_every}): its HF twin, "
            "GLM-4-MoE, puts its dense blocks first (first_k_dense_replace), not every n-th"
        )
    if lc.capacity_factor is not None:
        raise ConfigError(
            f"model.moe.capacity_factor ({lc.capacity_factor}): Hugging Face MoE layers are "
            "dropless; only dropless (capacity_factor unset) models export"
        )
    if lc.num_shared_experts and lc.router != "sigmoid_bias":
        raise ConfigError(
            f"model.moe.num_shared_experts ({lc.num_shared_experts}) with router {lc.router!r}: "
            "Qwen2-MoE's shared expert is scaled by a learned sigmoid gate, mixkit's are not "
            "(with router 'sigmoid_bias' they export, to GLM-4-MoE)"
        )
    renorm = lc.k > 1 and (lc.renormalize or lc.router in ("noisy_topk", "sigmoid_bias"))
    return lc, renorm


def _llama_common(c: TransformerLMConfig) -> dict[str, Any]:
    """The config fields every Llama-family architecture shares."""
    return dict(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.kv_heads,
        max_position_embeddings=c.block_size,
        rms_norm_eps=c.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        tie_word_embeddings=c.tie_embeddings,
        hidden_act="silu",
        attention_dropout=0.0,
        **NO_TOKENS,
    )


def hf_config(c: TransformerLMConfig) -> PretrainedConfig:
    """The HF config of the architecture that computes what `c` computes."""
    if block_family(c) == "gpt2":
        return GPT2Config(
            vocab_size=c.vocab_size,
            n_positions=c.block_size,
            n_embd=c.d_model,
            n_layer=c.n_layers,
            n_head=c.n_heads,
            n_inner=c.ffn_hidden,
            activation_function="relu",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            layer_norm_epsilon=c.norm_eps,
            tie_word_embeddings=c.tie_embeddings,
            **NO_TOKENS,
        )
    common = _llama_common(c)
    if c.moe is None:
        if c.qkv_bias:
            return Qwen2Config(intermediate_size=c.ffn_hidden, **common)
        return LlamaConfig(intermediate_size=c.ffn_hidden, head_dim=c.head_dim, **common)
    lc, renorm = moe_routing(c)
    moe: dict[str, Any] = dict(num_experts_per_tok=lc.k, router_aux_loss_coef=lc.w_switch)
    if lc.router == "sigmoid_bias":
        return _glm4_moe_config(c, lc, common)
    if renorm and c.moe_every == 1 and not c.qkv_bias:
        return MixtralConfig(
            intermediate_size=lc.d_hidden,
            num_local_experts=lc.num_experts,
            head_dim=c.head_dim,
            router_jitter_noise=0.0,
            sliding_window=None,
            **moe,
            **common,
        )
    return Qwen2MoeConfig(
        intermediate_size=c.ffn_hidden,
        moe_intermediate_size=lc.d_hidden,
        shared_expert_intermediate_size=0,
        num_experts=lc.num_experts,
        norm_topk_prob=renorm,
        decoder_sparse_step=c.moe_every,
        mlp_only_layers=[],
        qkv_bias=c.qkv_bias,
        use_sliding_window=False,
        **moe,
        **common,
    )


def _glm4_moe_config(c: TransformerLMConfig, lc: MoEConfig, common: dict[str, Any]) -> Any:
    """DeepSeek-V3's routing (sigmoid scores, a selection-only bias, ungated shared experts)
    with standard attention: GLM-4-MoE, one expert group, rotary on the whole head."""
    common["rope_parameters"]["partial_rotary_factor"] = 1.0
    return Glm4MoeConfig(
        intermediate_size=c.ffn_hidden,
        moe_intermediate_size=lc.d_hidden,
        n_routed_experts=lc.num_experts,
        num_experts_per_tok=lc.k,
        n_shared_experts=lc.num_shared_experts,
        first_k_dense_replace=0,
        n_group=1,
        topk_group=1,
        norm_topk_prob=lc.k > 1,
        routed_scaling_factor=lc.route_scale,
        attention_bias=c.qkv_bias,
        use_qk_norm=False,
        head_dim=c.head_dim,
        partial_rotary_factor=1.0,
        **common,
    )


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


def _llama_state_dict(model: TransformerLM, arch: str) -> dict[str, torch.Tensor]:
    sd, c = model.state_dict(), model.cfg
    D, kv = c.d_model, c.kv_heads * c.head_dim
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"]}
    for i, block in enumerate(model.blocks):
        p, m = f"model.layers.{i}.", f"blocks.{i}."
        names = ("q_proj", "k_proj", "v_proj")
        for name, w in zip(names, sd[m + "attn.qkv.weight"].split([D, kv, kv]), strict=True):
            out[f"{p}self_attn.{name}.weight"] = w
        if c.qkv_bias:
            for name, b in zip(names, sd[m + "attn.qkv.bias"].split([D, kv, kv]), strict=True):
                out[f"{p}self_attn.{name}.bias"] = b
        out[p + "self_attn.o_proj.weight"] = sd[m + "attn.proj.weight"]
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
