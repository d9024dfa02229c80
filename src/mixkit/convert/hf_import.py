"""A Hugging Face checkpoint (Llama, Qwen2, Mixtral, Qwen2-MoE; GPT-2 as mixkit exports it) as a
mixkit transformer LM, written as a run that `mixkit train --resume` continues.

The inverse of hf_export's table. What mixkit's block cannot compute exactly is a ConfigError
naming the HF field (sliding windows, rope scaling, Qwen2-MoE's gated shared expert, q/k norms...).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from mixkit.config import apply_overrides
from mixkit.convert.runs import MixkitRun, require_exists, staged, write_run
from mixkit.convert.vocab import is_byte_tokenizer, read_json
from mixkit.errors import ConfigError, DataError
from mixkit.models import MoESpec, TransformerLM, TransformerLMConfig
from mixkit.train.config import RunConfig, config_from_dict
from mixkit.train.data import prepare_corpus

LLAMA_FAMILY = ("llama", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "glm4_moe")
MOES = ("mixtral", "qwen2_moe", "qwen3_moe", "glm4_moe")
QWEN3 = ("qwen3", "qwen3_moe")  # q/k norms per head; attention_bias biases o_proj too
NO_TWIN = {
    "olmoe": "its attention normalises the whole query and key projections (q_norm, k_norm)",
    "deepseek_v3": "it has multi-head latent attention",
    "gpt_oss": "its experts have biases and a clamped activation, and attention has sinks",
}
MAX_VOCAB = 65535  # mixkit keeps token ids as uint16


def _need(ok: bool, field: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"Hugging Face config {field}: {why}; mixkit has no exact twin")


def _rope_theta(h: PretrainedConfig) -> float:
    params = getattr(h, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    _need(kind == "default", "rope_parameters.rope_type", f"{kind!r} scaling")
    part = params.get("partial_rotary_factor", getattr(h, "partial_rotary_factor", 1.0))
    _need(part == 1.0, f"partial_rotary_factor ({part})", "rotary positions on part of a head")
    return float(params.get("rope_theta", getattr(h, "rope_theta", 10000.0)))


def _moe_spec(h: PretrainedConfig) -> tuple[MoESpec, int]:
    t, k = h.model_type, int(h.num_experts_per_tok)
    if t == "glm4_moe":
        return _glm4_spec(h), 1
    if t == "mixtral":
        _need(k > 1, "num_experts_per_tok (1)", "Mixtral renormalises a single weight to 1")
        experts, hidden, renorm, every = h.num_local_experts, h.intermediate_size, True, 1
    else:
        shared = getattr(h, "shared_expert_intermediate_size", 0)  # Qwen3-MoE has none
        _need(shared == 0, f"shared_expert_intermediate_size ({shared})", "a sigmoid-gated one")
        _need(not h.mlp_only_layers, "mlp_only_layers", "dense layers off the sparse step")
        renorm = bool(h.norm_topk_prob)
        _need(k > 1 or not renorm, "norm_topk_prob with k=1", "a top-1 weight of 1")
        experts, hidden, every = h.num_experts, h.moe_intermediate_size, h.decoder_sparse_step
    coef = float(getattr(h, "router_aux_loss_coef", 0.0) or 0.0)
    spec = MoESpec(
        num_experts=experts,
        d_hidden=hidden,
        k=k,
        router="topk",
        renormalize=renorm,
        w_switch=coef,
    )
    return spec, int(every)


def _glm4_spec(h: PretrainedConfig) -> MoESpec:
    """GLM-4-MoE's sigmoid routing as mixkit's sigmoid_bias router (with shared experts)."""
    k, groups = int(h.num_experts_per_tok), (h.n_group, h.topk_group)
    _need(h.first_k_dense_replace == 0, "first_k_dense_replace", "dense blocks first")
    _need(groups[0] == groups[1], f"n_group/topk_group {groups}", "group-limited routing")
    _need(bool(h.norm_topk_prob) == (k > 1), "norm_topk_prob", "mixkit normalises iff k > 1")
    return MoESpec(
        num_experts=h.n_routed_experts,
        d_hidden=h.moe_intermediate_size,
        k=k,
        router="sigmoid_bias",
        route_scale=float(h.routed_scaling_factor),
        num_shared_experts=h.n_shared_experts,
    )


def mixkit_config(h: PretrainedConfig) -> TransformerLMConfig:
    """The mixkit model config that computes what HF config `h` computes, or a ConfigError."""
    t = h.model_type
    if t in NO_TWIN:
        raise ConfigError(f"model_type {t!r}: {NO_TWIN[t]}, which mixkit's attention cannot do")
    if t not in (*LLAMA_FAMILY, "gpt2"):
        raise ConfigError(
            f"model_type {t!r} is not supported; mixkit converts "
            f"{', '.join((*LLAMA_FAMILY, 'gpt2'))}"
        )
    _need(h.vocab_size <= MAX_VOCAB, f"vocab_size ({h.vocab_size})", f"over {MAX_VOCAB}")
    common: dict[str, Any] = dict(vocab_size=h.vocab_size, dropout=0.0)
    common["tie_embeddings"] = bool(getattr(h, "tie_word_embeddings", True))
    if t == "gpt2":
        act = h.activation_function
        _need(act == "relu", f"activation_function ({act!r})", "mixkit's GPT-2 FFN is ReLU")
        D = h.n_embd
        return TransformerLMConfig(
            d_model=D,
            n_layers=h.n_layer,
            n_heads=h.n_head,
            block_size=h.n_positions,
            ffn_hidden=h.n_inner or 4 * D,
            expert="relu",
            norm_eps=h.layer_norm_epsilon,
            **common,
        )
    D, N = h.hidden_size, h.num_attention_heads
    head_dim = getattr(h, "head_dim", None) or D // N
    _need(h.hidden_act == "silu", f"hidden_act ({h.hidden_act!r})", "a non-SwiGLU FFN")
    _need(not getattr(h, "use_sliding_window", False), "use_sliding_window", "sliding windows")
    window = getattr(h, "sliding_window", None) if t == "mixtral" else None
    _need(window is None, f"sliding_window ({window})", "sliding windows")
    if t not in ("glm4_moe", *QWEN3):  # Llama's attention_bias biases o_proj too
        _need(not getattr(h, "attention_bias", False), "attention_bias", "a biased o_proj")
    _need(not getattr(h, "mlp_bias", False), "mlp_bias", "biased FFNs")
    kv = h.num_key_value_heads or N
    spec, every = _moe_spec(h) if t in MOES else (None, 2)
    return TransformerLMConfig(
        d_model=D,
        n_layers=h.num_hidden_layers,
        n_heads=N,
        n_kv_heads=None if kv == N else kv,
        head_dim=0 if head_dim * N == D else head_dim,
        qk_norm=t in QWEN3 or bool(getattr(h, "use_qk_norm", False)),
        block_size=h.max_position_embeddings,
        ffn_hidden=h.intermediate_size,
        expert="swiglu",
        moe=spec,
        moe_every=every,
        norm="rmsnorm",
        norm_eps=h.rms_norm_eps,
        pos="rope",
        rope_theta=_rope_theta(h),
        qkv_bias=_qkv_bias(h),
        **common,
    )


def _qkv_bias(h: PretrainedConfig) -> bool:
    if h.model_type in ("glm4_moe", *QWEN3):
        return bool(h.attention_bias)
    return h.model_type in ("qwen2", "qwen2_moe") and bool(getattr(h, "qkv_bias", True))


def _gpt2_weights(sd: dict[str, torch.Tensor], c: TransformerLMConfig) -> dict[str, torch.Tensor]:
    out = {
        "tok_emb.weight": sd["transformer.wte.weight"],
        "pos_emb.weight": sd["transformer.wpe.weight"],
        "ln_f.weight": sd["transformer.ln_f.weight"],
        "ln_f.bias": sd["transformer.ln_f.bias"],
        "lm_head.weight": sd["lm_head.weight"],
    }
    for i in range(c.n_layers):
        p, m = f"transformer.h.{i}.", f"blocks.{i}."
        for hf, mk in (("ln_1", "ln1"), ("ln_2", "ln2")):
            out[f"{m}{mk}.weight"], out[f"{m}{mk}.bias"] = (
                sd[p + hf + ".weight"],
                sd[p + hf + ".bias"],
            )
        biases = ["attn.c_proj.bias", "mlp.c_fc.bias", "mlp.c_proj.bias"]
        if c.qkv_bias:
            out[m + "attn.qkv.bias"] = sd[p + "attn.c_attn.bias"]
        else:
            biases.append("attn.c_attn.bias")
        for name in biases:
            if sd[p + name].abs().max() > 0:
                raise ConfigError(
                    f"GPT-2 weight {p + name} is not zero: mixkit's GPT-2 block has no biases "
                    "(only GPT-2 models exported by mixkit import)"
                )
        out[m + "attn.qkv.weight"] = sd[p + "attn.c_attn.weight"].t()
        out[m + "attn.proj.weight"] = sd[p + "attn.c_proj.weight"].t()
        out[m + "ffn.w_in.weight"] = sd[p + "mlp.c_fc.weight"].t()
        out[m + "ffn.w_out.weight"] = sd[p + "mlp.c_proj.weight"].t()
    return out


def _shared_weights(sd: dict[str, torch.Tensor], p: str, m: str, S: int) -> dict[str, torch.Tensor]:
    """One MLP of width S * H as S shared experts of width H (their sum)."""
    if S == 0:
        return {}
    D = sd[p + "gate_proj.weight"].shape[1]
    w_gate, w_in = (
        sd[p + n].reshape(S, -1, D).transpose(1, 2) for n in ("gate_proj.weight", "up_proj.weight")
    )
    w_out = sd[p + "down_proj.weight"].t().reshape(S, -1, D)
    return {m + "w_gate": w_gate, m + "w_in": w_in, m + "w_out": w_out}


def _ffn_weights(sd: dict[str, torch.Tensor], p: str, m: str, moe: bool) -> dict[str, torch.Tensor]:
    if not moe:
        w_in = torch.cat([sd[p + "gate_proj.weight"], sd[p + "up_proj.weight"]], dim=0)
        return {m + "w_in.weight": w_in, m + "w_out.weight": sd[p + "down_proj.weight"]}
    gate_up = sd[p + "experts.gate_up_proj"].transpose(1, 2)  # (E, D, 2H)
    w_gate, w_in = gate_up.chunk(2, dim=2)
    out = {
        m + "router.w_gate": sd[p + "gate.weight"].t(),
        m + "experts.w_gate": w_gate,
        m + "experts.w_in": w_in,
        m + "experts.w_out": sd[p + "experts.down_proj"].transpose(1, 2),
    }
    if p + "gate.e_score_correction_bias" in sd:  # GLM-4-MoE: sigmoid_bias, shared experts
        out[m + "router.bias"] = sd[p + "gate.e_score_correction_bias"]
        S = sd[p + "shared_experts.gate_proj.weight"].shape[0] // w_in.shape[2]
        out.update(_shared_weights(sd, p + "shared_experts.", m + "shared_experts.", S))
    return out


def mixkit_weights(model: TransformerLM, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mixkit state dict of HF state dict `sd` for `model`'s config."""
    c = model.cfg
    if c.norm == "layernorm":
        return _gpt2_weights(sd, c)
    out = {"tok_emb.weight": sd["model.embed_tokens.weight"]}
    for i in range(c.n_layers):
        p, m = f"model.layers.{i}.", f"blocks.{i}."
        names = ("q_proj", "k_proj", "v_proj")
        out[m + "attn.qkv.weight"] = torch.cat([sd[f"{p}self_attn.{n}.weight"] for n in names])
        if c.qkv_bias:
            out[m + "attn.qkv.bias"] = torch.cat([sd[f"{p}self_attn.{n}.bias"] for n in names])
        out[m + "attn.proj.weight"] = sd[p + "self_attn.o_proj.weight"]
        o_bias = sd.get(p + "self_attn.o_proj.bias")
        if o_bias is not None and o_bias.any():  # Qwen3's attention_bias: zero when mixkit's
            raise ConfigError(f"{p}self_attn.o_proj.bias is not zero: mixkit's has no bias")
        if c.qk_norm:
            out[m + "attn.q_norm.weight"] = sd[p + "self_attn.q_norm.weight"]
            out[m + "attn.k_norm.weight"] = sd[p + "self_attn.k_norm.weight"]
        out[m + "ln1.weight"] = sd[p + "input_layernorm.weight"]
        out[m + "ln2.weight"] = sd[p + "post_attention_layernorm.weight"]
        out.update(_ffn_weights(sd, p + "mlp.", m + "ffn.", model.is_moe_block(i)))
    out["ln_f.weight"] = sd["model.norm.weight"]
    out["lm_head.weight"] = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    return out


def load_hf(hf_dir: Path) -> TransformerLM:
    """The mixkit model (eval mode) of an HF checkpoint folder."""
    require_exists(hf_dir, "Hugging Face folder")
    if not (Path(hf_dir) / "config.json").exists():
        raise DataError(f"{str(hf_dir)!r} has no config.json: not a Hugging Face model folder")
    try:
        h = AutoConfig.from_pretrained(hf_dir)
    except (ValueError, OSError, KeyError) as e:
        raise DataError(f"cannot read the Hugging Face config in {str(hf_dir)!r}: {e}") from None
    cfg = mixkit_config(h)
    try:
        hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    except Exception as e:  # transformers and safetensors raise their own error types
        raise DataError(f"cannot load the Hugging Face weights in {str(hf_dir)!r}: {e}") from None
    sd = {k: v.detach() for k, v in hf.state_dict().items()}
    if h.model_type == "gpt2" and any(
        sd[f"transformer.h.{i}.attn.c_attn.bias"].any() for i in range(cfg.n_layers)
    ):  # GPT-2's config cannot say so: biased q, k, v are mixkit's qkv_bias
        cfg = cfg.model_copy(update={"qkv_bias": True})
    model = TransformerLM(cfg)
    model.load_state_dict(mixkit_weights(model, sd), strict=True)
    return model.eval()


def hf_run(
    hf_dir: Path, tokenizer_file: Path | None, data: str | None, sets: list[str]
) -> tuple[MixkitRun, Path | None]:
    """The HF model as a mixkit run: config (data, --set), model, tokenizer. Returns the run and
    the HF tokenizer.json to carry along (None: mixkit's byte tokenizer)."""
    model = load_hf(hf_dir)
    tok_cfg = Path(hf_dir) / "tokenizer_config.json"
    byte = tok_cfg.exists() and is_byte_tokenizer(read_json(tok_cfg, "tokenizer config"))
    source = None if byte else Path(hf_dir) / "tokenizer.json"
    if source is not None and not source.exists():
        raise DataError(
            f"{str(hf_dir)!r} has no tokenizer.json (a `tokenizers` fast tokenizer file); mixkit "
            "trains and samples with it"
        )
    raw: dict[str, Any] = {
        "name": Path(hf_dir).name or "converted",
        "model": model.cfg.model_dump(),
        "data": {
            "path": data and str(Path(data).expanduser().resolve()),
            "tokenizer": "byte" if byte else "bpe",
            "tokenizer_file": tokenizer_file and str(tokenizer_file),
        },
        "train": {"seq_len": min(128, model.cfg.block_size)},
    }
    if source is None:
        del raw["data"]["tokenizer_file"]
    apply_overrides(raw, sets)
    cfg: RunConfig = config_from_dict(raw, "the converted run (--set)")
    if cfg.model != model.cfg:
        raise ConfigError("--set may change the run's data, optim and train sections, not model")
    return MixkitRun(model, cfg, source or Path(), None), source


def import_hf(
    hf_dir: Path, out: Path, data: str | None = None, sets: list[str] | tuple[str, ...] = ()
) -> MixkitRun:
    """Write HF checkpoint `hf_dir` as a mixkit run folder `out` at step 0."""
    out = Path(out).resolve()
    run, source = hf_run(hf_dir, out / "tokenizer.json", data, list(sets))
    return write_hf_run(run, source, out)


def write_hf_run(run: MixkitRun, source: Path | None, out: Path) -> MixkitRun:
    """Write a run made from an HF folder at `out`, with its tokenizer file `source` (None: the
    byte tokenizer) copied to out/tokenizer.json, where run.cfg.data.tokenizer_file points."""
    with staged(out) as tmp:
        tmp.mkdir()
        data_cfg = run.cfg.data
        if source is not None:  # the fingerprint hashes the file's contents, not its path
            shutil.copyfile(source, tmp / "tokenizer.json")
            data_cfg = data_cfg.model_copy(update={"tokenizer_file": str(tmp / "tokenizer.json")})
        corpus = prepare_corpus(data_cfg)
        if corpus.tokenizer.vocab_size != run.cfg.model.vocab_size:
            raise ConfigError(
                f"the tokenizer has {corpus.tokenizer.vocab_size} tokens and the model "
                f"{run.cfg.model.vocab_size} embeddings; mixkit sizes a model by its tokenizer, "
                "so both must be equal"
            )
        run.fingerprint, run.tokenizer_path = corpus.fingerprint, corpus.tokenizer_path
        write_run(tmp, run)
    return run
