"""Which Hugging Face architecture computes exactly what a mixkit transformer config computes.

The mapping (any other combination is a ConfigError naming the field that has no twin):

    mixkit block                          FFNs                               HF architecture
    layernorm + learned positions         dense ReLU                         GPT-2 (biases zero)
    rmsnorm + rope                        dense SwiGLU                       Llama; Qwen2 with qkv_bias;
                                                                             Qwen3 with qk_norm
    rmsnorm + rope                        MoE, SwiGLU experts, top-k         Mixtral when every block
                                          renormalised, k >= 2               is MoE, no qkv_bias/qk_norm
    rmsnorm + rope                        MoE, SwiGLU experts, any other     Qwen2-MoE (no shared expert,
                                          top-k/switch/noisy_topk            norm_topk_prob, sparse step);
                                                                             Qwen3-MoE with qk_norm
    rmsnorm + rope                        MoE, SwiGLU experts, sigmoid_bias  GLM-4-MoE (one group, full
                                          (+ shared experts), every block    rotary, no dense blocks)

noisy_topk maps for inference only: HF has no noisy gate, so its noise weights are dropped (at
eval time mixkit's noisy_topk is the renormalised top-k of the clean logits, which is exact).
"""

from __future__ import annotations

from typing import Any

from transformers import (
    Glm4MoeConfig,
    GPT2Config,
    LlamaConfig,
    MixtralConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
)

from mixkit.errors import ConfigError
from mixkit.models import TransformerLMConfig
from mixkit.moe import MoEConfig

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
        options = {
            "n_kv_heads": c.kv_heads != c.n_heads,
            "qk_norm": c.qk_norm,
            "head_dim": c.dh * c.n_heads != c.d_model,
        }
        for name in (name for name, used in options.items() if used):
            raise ConfigError(f"model.{name}: GPT-2's attention has no such option")
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
        head_dim=c.dh,
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
        if c.qk_norm:  # Qwen3's attention_bias biases o_proj too: exported as zeros
            return Qwen3Config(intermediate_size=c.ffn_hidden, attention_bias=c.qkv_bias, **common)
        if c.qkv_bias:
            return Qwen2Config(intermediate_size=c.ffn_hidden, **common)
        return LlamaConfig(intermediate_size=c.ffn_hidden, **common)
    lc, renorm = moe_routing(c)
    if lc.router == "sigmoid_bias":
        return _glm4_moe_config(c, lc, common)
    moe: dict[str, Any] = dict(num_experts_per_tok=lc.k, router_aux_loss_coef=lc.w_switch)
    if renorm and c.moe_every == 1 and not c.qkv_bias and not c.qk_norm:
        return MixtralConfig(
            intermediate_size=lc.d_hidden,
            num_local_experts=lc.num_experts,
            router_jitter_noise=0.0,
            sliding_window=None,
            **moe,
            **common,
        )
    sparse: dict[str, Any] = dict(
        intermediate_size=c.ffn_hidden,
        moe_intermediate_size=lc.d_hidden,
        num_experts=lc.num_experts,
        norm_topk_prob=renorm,
        decoder_sparse_step=c.moe_every,
        mlp_only_layers=[],
        use_sliding_window=False,
        **moe,
        **common,
    )
    if c.qk_norm:
        return Qwen3MoeConfig(attention_bias=c.qkv_bias, **sparse)
    return Qwen2MoeConfig(shared_expert_intermediate_size=0, qkv_bias=c.qkv_bias, **sparse)


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
        use_qk_norm=c.qk_norm,
        partial_rotary_factor=1.0,
        **common,
    )
