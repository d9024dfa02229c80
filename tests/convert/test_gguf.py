"""GGUF: a tiny trained mixkit model runs in llama.cpp (in process, one thread) with the same
token ids, the same logits (f32) and the same greedy tokens as in mixkit."""

from __future__ import annotations

from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
import torch

from mixkit.convert import MixkitRun, export_gguf, load_run
from mixkit.errors import ConfigError
from mixkit.train.tokenizer import load_tokenizer
from tests.convert.helpers import LLAMA, fresh, moe

PROMPT = "the king é and "  # é: two bytes outside ASCII
NEW = 24


def llama(path) -> llama_cpp.Llama:
    # f32 keys and values (llama.cpp keeps f16 ones by default), so f32 logits compare closely
    f32 = llama_cpp.GGML_TYPE_F32
    return llama_cpp.Llama(
        str(path), n_ctx=64, n_threads=1, logits_all=True, type_k=f32, type_v=f32, verbose=False
    )


def greedy_llama_cpp(llm: llama_cpp.Llama, prompt: list[int]) -> list[int]:
    out = []
    for tok in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        out.append(int(tok))
        if len(out) == NEW:
            return out
    return out


@pytest.mark.parametrize(
    ("which", "arch"), [("moe_run", "llama"), ("dense_run", "llama"), ("qwen3_moe_run", "qwen3moe")]
)
def test_llama_cpp_gives_mixkit_s_tokens_and_logits(which, arch, request, tmp_path):
    run = load_run(request.getfixturevalue(which))  # MoE + byte tokenizer, dense + BPE, Qwen3
    export_gguf(run, tmp_path / "m.gguf", "f32")
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["general.architecture"].contents() == arch
    tokenizer = load_tokenizer(run.tokenizer_path)
    prompt = [int(i) for i in tokenizer.encode(PROMPT)]
    llm = llama(tmp_path / "m.gguf")
    assert llm.tokenize(PROMPT.encode(), add_bos=False) == prompt

    llm.eval(prompt)
    with torch.no_grad():
        ours = run.model(torch.tensor([prompt]))[0].numpy()
    np.testing.assert_allclose(llm.scores[: len(prompt)], ours, atol=1e-4, rtol=0)

    llm.reset()
    expected = run.model.generate(torch.tensor([prompt]), NEW, temperature=0)[0, len(prompt) :]
    assert greedy_llama_cpp(llm, prompt) == expected.tolist()


def test_f16_file_is_half_the_size_and_runs(moe_run, tmp_path):
    run = load_run(moe_run)
    export_gguf(run, tmp_path / "f16.gguf", "f16")
    export_gguf(run, tmp_path / "f32.gguf", "f32")
    sizes = {n: (tmp_path / f"{n}.gguf").stat().st_size for n in ("f16", "f32")}
    assert sizes["f16"] < 0.6 * sizes["f32"]
    reader = gguf.GGUFReader(tmp_path / "f16.gguf")
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.ffn_gate_exps.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.ffn_gate_inp.weight"] == gguf.GGMLQuantizationType.F32
    assert reader.fields["llama.expert_count"].parts[-1][0] == 4
    prompt = list(PROMPT.encode())
    assert len(greedy_llama_cpp(llama(tmp_path / "f16.gguf"), prompt)) == NEW


def test_gguf_refuses_models_llama_cpp_s_llama_cannot_run(gpt2_run, tmp_path):
    with pytest.raises(ConfigError, match="GELU"):
        export_gguf(load_run(gpt2_run), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_gguf_refuses_sigmoid_gates_sparse_steps_and_unnormalised_gates(tmp_path):
    for kw, needle in [
        ({"moe": moe(router="sigmoid_bias"), "moe_every": 1}, "gate with a softmax"),
        ({"moe": moe(), "moe_every": 2}, "moe_every 2"),
        ({"moe": moe(renormalize=False), "moe_every": 1}, "renormalised top-k"),
        ({"qkv_bias": True}, "model.qkv_bias"),
    ]:
        run = MixkitRun(fresh(**LLAMA, **kw), None, Path(), None)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=needle):
            export_gguf(run, tmp_path / "x.gguf")
