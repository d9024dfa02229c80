"""mixkit <-> Hugging Face: the same logits both ways (fp32, 1e-5), the same token ids, continued
training from an imported checkpoint, and a clear refusal for everything without an exact twin."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, OlmoeConfig, Qwen2MoeConfig

from mixkit.convert import export_hf, hf_model, import_hf, load_hf, load_run
from mixkit.errors import ConfigError
from mixkit.moe.routing import SigmoidBiasRouter
from mixkit.train.config import config_from_dict
from mixkit.train.loop import Trainer
from mixkit.train.tokenizer import load_tokenizer
from tests.convert.helpers import (
    HF_MODELS,
    LLAMA,
    SMALL,
    V,
    fresh,
    hf_folder,
    moe,
    run_config,
)

EXPORTS = {
    "gpt2": ({}, "gpt2"),
    "gpt2-qkv-bias-untied": ({"qkv_bias": True, "tie_embeddings": False}, "gpt2"),
    "llama-gqa": ({**LLAMA, "n_kv_heads": 2, "rope_theta": 500.0, "norm_eps": 1e-6}, "llama"),
    "qwen2": ({**LLAMA, "qkv_bias": True}, "qwen2"),
    "mixtral": ({**LLAMA, "moe": moe(), "moe_every": 1, "n_kv_heads": 2}, "mixtral"),
    "noisy-topk": ({**LLAMA, "moe": moe(router="noisy_topk"), "moe_every": 1}, "mixtral"),
    "unnormalised": ({**LLAMA, "moe": moe(renormalize=False), "moe_every": 1}, "qwen2_moe"),
    "every-2nd": ({**LLAMA, "moe": moe(), "moe_every": 2}, "qwen2_moe"),
    "switch": ({**LLAMA, "moe": moe(router="switch", k=1), "moe_every": 1}, "qwen2_moe"),
    "moe-qkv-bias": ({**LLAMA, "moe": moe(), "moe_every": 1, "qkv_bias": True}, "qwen2_moe"),
    "qwen3": ({**LLAMA, "qk_norm": True, "qkv_bias": True, "head_dim": 12}, "qwen3"),
    "qwen3-moe": ({**LLAMA, "moe": moe(), "moe_every": 1, "qk_norm": True}, "qwen3_moe"),
    "llama-head-dim": ({**LLAMA, "head_dim": 16, "n_kv_heads": 2}, "llama"),
    "sigmoid-bias": ({**LLAMA, "moe": moe(router="sigmoid_bias"), "moe_every": 1}, "glm4_moe"),
    "sigmoid-bias-shared-top1": (
        {
            **LLAMA,
            "moe": moe(router="sigmoid_bias", k=1, num_shared_experts=2, route_scale=2.5),
            "moe_every": 1,
            "qkv_bias": True,
            "qk_norm": True,
            "n_kv_heads": 2,
        },
        "glm4_moe",
    ),
}


@pytest.mark.parametrize("name", EXPORTS)
def test_export_gives_the_same_logits_after_a_save_and_load(name, tmp_path):
    kw, arch = EXPORTS[name]
    model = fresh(**kw)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SigmoidBiasRouter):  # a bias that changes which experts are chosen
                m.bias.normal_(std=0.3)
    hf = hf_model(model)
    assert hf.config.model_type == arch
    hf.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    x_BT = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x_BT).logits, model(x_BT), atol=1e-5, rtol=0)
        back = load_hf(tmp_path)  # and back: the exact mixkit weights
        torch.testing.assert_close(back(x_BT), model(x_BT), atol=0, rtol=0)


REFUSED = {
    "relu MoE": ({**LLAMA, "expert": "relu", "moe": moe()}, "model.expert 'relu'"),
    "expert choice": ({**LLAMA, "moe": moe(router="expert_choice")}, "'expert_choice'"),
    "sigmoid bias every 2nd": ({**LLAMA, "moe": moe(router="sigmoid_bias")}, "first_k_dense"),
    "capacity": ({**LLAMA, "moe": moe(capacity_factor=1.25)}, "model.moe.capacity_factor"),
    "shared top-k": ({**LLAMA, "moe": moe(num_shared_experts=1)}, "model.moe.num_shared_experts"),
    "hierarchical": ({**LLAMA, "moe": moe(num_experts=8, groups=2)}, "model.moe.groups"),
    "GPT-2 MoE": ({"moe": moe()}, "model.moe with model.norm 'layernorm'"),
    "GPT-2 SwiGLU": ({"expert": "swiglu"}, "model.expert 'swiglu'"),
    "mixed block": ({"norm": "rmsnorm"}, "model.norm 'rmsnorm' with model.pos 'learned'"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_export_refuses_what_has_no_twin_naming_the_field(name):
    kw, field = REFUSED[name]
    with pytest.raises(ConfigError, match=field.replace("(", r"\(")):
        hf_model(fresh(**kw))


def test_a_trained_run_round_trips_with_its_tokenizer_and_training_continues(
    moe_run, text, tmp_path
):
    run = load_run(moe_run)
    assert export_hf(run, tmp_path / "hf") == "mixtral"
    files = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    sample = "the queen routes é\n"
    hf_ids = AutoTokenizer.from_pretrained(tmp_path / "hf")(sample)["input_ids"]
    assert hf_ids == list(sample.encode())  # mixkit's byte tokenizer, as a tokenizers file

    back = import_hf(tmp_path / "hf", tmp_path / "back", str(text), ["train.threads=1"])
    x_BT = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(back.model(x_BT), run.model(x_BT), atol=0, rtol=0)
    assert back.cfg.data.tokenizer == "byte" and back.cfg.data.tokenizer_file is None

    trainer = Trainer(None, tmp_path / "back", resume=True, steps=3)  # `mixkit train --resume`
    assert trainer.start == 0
    trainer.run(plots=False)
    assert trainer.done == 3 and torch.isfinite(torch.tensor(trainer.train_loss))


@pytest.mark.parametrize("arch", HF_MODELS)
def test_an_hf_checkpoint_imports_with_the_same_logits_and_trains_on(arch, text, tmp_path):
    hf = hf_folder(tmp_path / "hf", HF_MODELS[arch], text)
    run = import_hf(
        tmp_path / "hf",
        tmp_path / "run",
        data=str(text),
        sets=["train.batch_size=4", "train.threads=1"],
    )
    x_BT = torch.randint(0, hf.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(run.model(x_BT), hf(x_BT).logits, atol=1e-5, rtol=0)
    tok = load_tokenizer(tmp_path / "run" / "checkpoint" / "tokenizer.json")
    expected = Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json")).encode("the king")
    assert tok.encode("the king").tolist() == expected.ids

    trainer = Trainer(None, tmp_path / "run", resume=True, steps=2)
    trainer.run(plots=False)
    assert trainer.done == 2 and trainer.cfg.train.batch_size == 4


def test_import_refuses_architectures_without_a_twin(text, tmp_path):
    olmoe = lambda v: OlmoeConfig(  # noqa: E731
        vocab_size=v, intermediate_size=24, num_experts=4, num_experts_per_tok=2, **SMALL
    )
    hf_folder(tmp_path / "olmoe", olmoe, text)
    with pytest.raises(ConfigError, match="q_norm, k_norm"):
        import_hf(tmp_path / "olmoe", tmp_path / "out")
    shared = lambda v: Qwen2MoeConfig(  # noqa: E731
        vocab_size=v, intermediate_size=48, moe_intermediate_size=24, num_experts=4, **SMALL
    )
    hf_folder(tmp_path / "q2", shared, text)
    with pytest.raises(ConfigError, match="shared_expert_intermediate_size"):
        import_hf(tmp_path / "q2", tmp_path / "out")
    config = json.loads((tmp_path / "q2" / "config.json").read_text())
    assert config["model_type"] == "qwen2_moe"
    assert not (tmp_path / "out").exists()


def test_an_lstm_run_is_refused_by_name(text, tmp_path):
    raw = run_config(text, {}).to_dict()
    raw["model"] = {"arch": "lstm", "d_model": 16, "ffn_hidden": 16, "vocab_size": 0}
    trainer = Trainer(config_from_dict(raw, "test"), tmp_path / "lstm")
    trainer.step()
    trainer.checkpoint()
    with pytest.raises(ConfigError, match="model.arch 'lstm'"):
        load_run(tmp_path / "lstm")
