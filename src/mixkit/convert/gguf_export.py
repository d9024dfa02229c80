"""A mixkit transformer LM as a GGUF file that llama.cpp runs, written with the `gguf` package.

llama.cpp's own converter (convert_hf_to_gguf.py) is not part of any package mixkit installs
(llama-cpp-python ships the library, not the script), so the file is written here with
`gguf.GGUFWriter`, in the tensor names and metadata of llama.cpp's architectures:

    mixkit model (Llama block, SwiGLU)                       llama.cpp architecture
    dense                                                     llama
    MoE in every block, renormalised softmax top-k, k >= 2    llama with experts (Mixtral's layout:
                                                              blk.N.ffn_gate_inp, ffn_{gate,up,down}_exps)
    the same with qk_norm (Qwen3's per-head q/k RMSNorm)      qwen3 (dense), qwen3moe (MoE)

Everything else (GPT-2's block, qkv_bias, sigmoid_bias, moe_every > 1, an unnormalised gate) is
a ConfigError naming the field. The tokenizer becomes a "gpt2" (byte-level BPE) vocabulary:
mixkit's byte tokenizer as 256 byte symbols, a BPE tokenizer with its merges. llama.cpp's llama
rotates query/key pairs, so q and k rows are permuted as llama.cpp's converter does for Llama;
qwen3 rotates halves, as HF and mixkit do.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

from mixkit.convert.hf_arch import hf_config, moe_routing
from mixkit.convert.runs import MixkitRun, staged
from mixkit.convert.vocab import bpe_vocab, bytes_to_unicode, hf_tokenizer_json
from mixkit.errors import ConfigError
from mixkit.models import DenseFFN, TransformerLM

# A mixkit LM is a plain language model: as a chat model (a `provider = "local"` agent), it
# continues the conversation's text, one message a line.
PLAIN_CHAT = "{% for message in messages %}{{ message['content'] }}\n{% endfor %}"
DTYPES = {
    "f32": (np.float32, gguf.LlamaFileType.ALL_F32),
    "f16": (np.float16, gguf.LlamaFileType.MOSTLY_F16),
}


def gguf_arch(model: TransformerLM) -> str:
    """llama.cpp's architecture for `model` ("llama", "qwen3" or "qwen3moe"), or a ConfigError
    naming the field that none of them computes."""
    kind = hf_config(model.cfg).model_type  # the same block and routing checks as HF export
    if kind == "gpt2":
        raise ConfigError(
            "model.norm 'layernorm' / model.pos 'learned' (GPT-2's block): llama.cpp's gpt2 "
            "architecture has GELU FFNs; GGUF export needs model.norm = 'rmsnorm', "
            "model.pos = 'rope' and model.expert = 'swiglu'"
        )
    if model.cfg.qkv_bias:
        raise ConfigError("model.qkv_bias: llama.cpp's llama and qwen3 have no attention biases")
    if kind == "glm4_moe":
        raise ConfigError(
            "model.moe.router 'sigmoid_bias': llama.cpp's llama and qwen3moe gate with a "
            "softmax; GGUF export needs router topk (renormalised) or noisy_topk"
        )
    cfg = model.cfg
    if cfg.moe is not None and not (cfg.moe_every == 1 and moe_routing(cfg)[1]):
        raise ConfigError(
            "llama.cpp's llama and qwen3moe need every block an MoE (model.moe_every = 1) with "
            "a renormalised top-k gate (router topk with renormalize, or noisy_topk, k >= 2); "
            f"this model has moe_every {cfg.moe_every}"
        )
    if cfg.qk_norm:  # Qwen3's block, the only llama.cpp one with per-head q/k norms
        return "qwen3" if cfg.moe is None else "qwen3moe"
    return "llama"


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's rotate-half row order to llama.cpp's pairwise one (convert_hf_to_gguf's permute)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def gguf_tensors(model: TransformerLM, arch: str = "llama") -> dict[str, torch.Tensor]:
    """llama.cpp tensor name -> tensor, shaped as the converter writes them (PyTorch order)."""
    c, sd = model.cfg, model.state_dict()
    qw, kv = c.n_heads * c.dh, c.kv_heads * c.dh
    out = {"token_embd.weight": sd["tok_emb.weight"], "output_norm.weight": sd["ln_f.weight"]}
    if not c.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i, block in enumerate(model.blocks):
        b, m = f"blk.{i}.", f"blocks.{i}."
        q, k, v = sd[m + "attn.qkv.weight"].split([qw, kv, kv])
        if arch == "llama":  # llama.cpp's llama rotates pairs; qwen3 rotates halves, as HF does
            q, k = _permute(q, c.n_heads), _permute(k, c.kv_heads)
        out[b + "attn_q.weight"], out[b + "attn_k.weight"] = q, k
        if c.qk_norm:
            out[b + "attn_q_norm.weight"] = sd[m + "attn.q_norm.weight"]
            out[b + "attn_k_norm.weight"] = sd[m + "attn.k_norm.weight"]
        out[b + "attn_v.weight"] = v
        out[b + "attn_output.weight"] = sd[m + "attn.proj.weight"]
        out[b + "attn_norm.weight"] = sd[m + "ln1.weight"]
        out[b + "ffn_norm.weight"] = sd[m + "ln2.weight"]
        ffn = block.ffn
        if isinstance(ffn, DenseFFN):
            gate, up = ffn.w_in.weight.chunk(2, dim=0)
            out.update({b + "ffn_gate.weight": gate, b + "ffn_up.weight": up})
            out[b + "ffn_down.weight"] = ffn.w_out.weight
        else:
            ex = ffn.experts
            out[b + "ffn_gate_inp.weight"] = ffn.router.w_gate.t()  # (E, D)
            out[b + "ffn_gate_exps.weight"] = ex.w_gate.transpose(1, 2)  # (E, H, D)
            out[b + "ffn_up_exps.weight"] = ex.w_in.transpose(1, 2)
            out[b + "ffn_down_exps.weight"] = ex.w_out.transpose(1, 2)  # (E, D, H)
    return {name: t.detach().float().contiguous() for name, t in out.items()}


def _write_vocab(w: gguf.GGUFWriter, tokenizer_path: Path, vocab_size: int) -> None:
    tok_json, _ = hf_tokenizer_json(tokenizer_path)
    tokens, merges = bpe_vocab(tok_json)
    if len(tokens) != vocab_size:
        raise ConfigError(f"the tokenizer has {len(tokens)} tokens, the model {vocab_size}")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")  # GPT-2's split (mixkit's BPE pre-tokenizer; bytes ignore it)
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * len(tokens))
    nul_char = bytes_to_unicode()[0]  # the NUL byte's symbol: never in text
    # llama.cpp requires merges and the writer drops an empty list: the byte tokenizer gets one
    # merge of two NULs, whose result is no token, so llama.cpp splits it back into bytes anyway
    w.add_token_merges(merges or [f"{nul_char} {nul_char}"])
    # llama.cpp wants BOS/EOS ids; mixkit has neither, so both name the NUL byte
    nul = tokens.index(nul_char) if nul_char in tokens else 0
    w.add_bos_token_id(nul)
    w.add_eos_token_id(nul)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_chat_template(PLAIN_CHAT)


def _write_hparams(w: gguf.GGUFWriter, model: TransformerLM, file_type: int) -> None:
    c = model.cfg
    w.add_name(c.moe and "mixkit MoE" or "mixkit")
    w.add_vocab_size(c.vocab_size)
    w.add_context_length(c.block_size)
    w.add_embedding_length(c.d_model)
    w.add_block_count(c.n_layers)
    w.add_feed_forward_length(c.ffn_hidden if c.moe is None else c.moe.d_hidden)
    w.add_head_count(c.n_heads)
    w.add_head_count_kv(c.kv_heads)
    w.add_rope_dimension_count(c.dh)
    w.add_key_length(c.dh)
    w.add_value_length(c.dh)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.norm_eps)
    w.add_file_type(file_type)
    if c.moe is not None:
        w.add_expert_count(c.moe.num_experts)
        w.add_expert_used_count(c.moe.k)
        w.add_expert_feed_forward_length(c.moe.d_hidden)


def export_gguf(run: MixkitRun, out: Path, dtype: str = "f16") -> None:
    """Write `run` as a GGUF file at `out` (f16 or f32 matrices; norms and the router in f32)."""
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose f16 or f32")
    arch = gguf_arch(run.model)
    np_dtype, file_type = DTYPES[dtype]
    with staged(Path(out)) as tmp:
        w = gguf.GGUFWriter(tmp, arch)
        _write_hparams(w, run.model, int(file_type))
        _write_vocab(w, run.tokenizer_path, run.model.cfg.vocab_size)
        for name, t in gguf_tensors(run.model, arch).items():
            keep_f32 = t.dim() == 1 or name.endswith("ffn_gate_inp.weight")
            w.add_tensor(name, t.numpy().astype(np.float32 if keep_f32 else np_dtype))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
