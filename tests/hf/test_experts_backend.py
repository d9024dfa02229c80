"""mixkit's experts backend for transformers (mixkit.moe.hf) against HF's own `eager` experts.

Per architecture, tiny random-weight models built from configs (nothing downloaded): one model
with experts_implementation="eager" and one with "mixkit" holding the same weights. In fp32 they
must pick the same top-k experts, give logits within 1e-5, the same 32 greedy tokens, the same
gradients after one training step and the same aux loss and router logits; in bf16, close
logits and gradients. GPT-OSS's experts (biased, clamped SwiGLU) and any other layout mixkit
does not run get a ConfigError naming why."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    DeepseekV3Config,
    GptOssConfig,
    MixtralConfig,
    OlmoeConfig,
    Qwen2MoeConfig,
    Qwen3MoeConfig,
)
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

import mixkit.moe.hf as mixkit_hf
from mixkit.errors import ConfigError

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

V, T = 96, 12
ROPE = {"rope_type": "default", "rope_theta": 10000.0}
# initializer_range 0.2, not HF's 0.02: spread-out logits, so no greedy or top-k choice is a near tie
COMMON = dict(
    vocab_size=V,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    output_router_logits=True,
    router_aux_loss_coef=0.02,
    initializer_range=0.2,
    eos_token_id=None,
    bos_token_id=None,
    pad_token_id=0,
)
CONFIGS = {
    "mixtral": lambda: MixtralConfig(
        **COMMON, intermediate_size=48, num_local_experts=8, num_experts_per_tok=2
    ),
    "qwen2_moe": lambda: Qwen2MoeConfig(  # with its shared expert
        **COMMON,
        intermediate_size=48,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=40,
        num_experts=8,
        num_experts_per_tok=2,
    ),
    "qwen3_moe": lambda: Qwen3MoeConfig(
        **COMMON,
        head_dim=8,
        intermediate_size=48,
        moe_intermediate_size=24,
        num_experts=8,
        num_experts_per_tok=2,
    ),
    "olmoe": lambda: OlmoeConfig(
        **COMMON, intermediate_size=24, num_experts=8, num_experts_per_tok=2
    ),
    "deepseek_v3": lambda: DeepseekV3Config(  # MLA wants as many kv heads as heads
        **{**COMMON, "num_key_value_heads": 4},
        intermediate_size=48,
        moe_intermediate_size=24,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_shared_experts=1,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,  # layer 0 dense, layer 1 MoE (group-limited sigmoid router)
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=8,
        rope_parameters=ROPE,
    ),
}
ARCHS = list(CONFIGS)


@pytest.fixture(autouse=True)
def _fused_training(monkeypatch):
    """These tiny models have a few rows per expert, where training takes torch._grouped_mm on
    the CPU (TRAIN_FEW_ROWS); the tests check the fused Function unless they say otherwise."""
    monkeypatch.setattr(mixkit_hf, "TRAIN_FEW_ROWS", 0)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pair(arch: str, dtype: torch.dtype = torch.float32):
    """(eager, mixkit): the same random weights, the two experts implementations."""
    torch.manual_seed(0)
    # a config each: from_config(..., experts_implementation=) sets it on the config it is given
    eager = AutoModelForCausalLM.from_config(CONFIGS[arch](), experts_implementation="eager")
    ours = AutoModelForCausalLM.from_config(CONFIGS[arch](), experts_implementation="mixkit")
    assert eager.config._experts_implementation == "eager"
    ours.load_state_dict(eager.state_dict())
    return eager.to(dtype), ours.to(dtype)


@pytest.fixture(scope="module", params=ARCHS)
def models(request):
    return pair(request.param)


@pytest.fixture
def ids():
    return torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(7))


@pytest.fixture
def calls(monkeypatch):
    """Counts the forwards of mixkit's fused grouped SwiGLU (training) and of its grouped_mm path
    (inference): proof that mixkit ran, not HF."""
    counter = {"fused": 0, "grouped": 0}
    fused, grouped = mixkit_hf.GroupedSwiGLUFFN, mixkit_hf._grouped_swiglu

    class Counted(fused):  # type: ignore[misc, valid-type]
        @staticmethod
        def forward(ctx, *args):
            counter["fused"] += 1
            return fused.forward(ctx, *args)

    def counted(*args):
        counter["grouped"] += 1
        return grouped(*args)

    monkeypatch.setattr(mixkit_hf, "GroupedSwiGLUFFN", Counted)
    monkeypatch.setattr(mixkit_hf, "_grouped_swiglu", counted)
    return counter


def experts_modules(model):
    return [m for m in model.modules() if hasattr(m, "gate_up_proj")]


def routed(model, ids):
    """Every MoE layer's top-k expert ids, as HF's router handed them to the experts."""
    seen = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: seen.append(args[1].clone()))
        for m in experts_modules(model)
    ]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_the_name_is_registered_with_transformers():
    assert ALL_EXPERTS_FUNCTIONS.get_interface("mixkit", None) is mixkit_hf.experts_forward


def test_the_mixkit_path_runs_in_every_moe_layer(models, ids, calls):
    """Training: the fused Function; inference: mixkit's dispatch with torch._grouped_mm."""
    eager, ours = models
    layers = len(experts_modules(ours))
    assert ours.config._experts_implementation == "mixkit" and layers > 0
    ours(ids)
    assert calls == {"fused": layers, "grouped": 0}
    with torch.no_grad():
        ours(ids)
    assert calls == {"fused": layers, "grouped": layers}
    eager(ids)
    assert calls == {"fused": layers, "grouped": layers}


@pytest.mark.parametrize("why", [("FEW_ROWS", 0), ("_CPU_GROUPED_MM", False)])
def test_inference_through_the_fused_path_too(why, models, ids, monkeypatch, calls):
    """With many rows per expert (a long prompt), or where torch._grouped_mm has no CPU kernel
    (torch < 2.11 here), inference takes the fused Function: the same logits."""
    eager, ours = models
    monkeypatch.setattr(mixkit_hf, *why)
    with torch.no_grad():
        want, got = eager(ids).logits, ours(ids).logits
    assert calls["fused"] == len(experts_modules(ours)) and calls["grouped"] == 0
    assert (want - got).abs().max().item() <= 1e-5


def test_same_top_k_experts(models, ids):
    eager, ours = models
    a, b = routed(eager, ids), routed(ours, ids)
    assert len(a) == len(b) == len(experts_modules(eager))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_logits_within_1e_5(models, ids):
    eager, ours = models
    with torch.no_grad():
        want, got = eager(ids).logits, ours(ids).logits
    assert want.std() > 0.5  # not a degenerate model
    assert (want - got).abs().max().item() <= 1e-5


def test_same_32_greedy_tokens(models, ids):
    eager, ours = models
    prompt = ids[:, :5]
    kw = dict(max_new_tokens=32, min_new_tokens=32, do_sample=False)
    want = eager.generate(prompt, **kw)
    got = ours.generate(prompt, **kw)
    assert want.shape == (2, 5 + 32)
    assert torch.equal(want, got)


def _train_step(model, ids):
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=ids, output_router_logits=True)
    out.loss.backward()
    model.eval()
    return out


@pytest.mark.parametrize("few_rows", [0, 10**6], ids=["fused", "grouped_mm"])
def test_one_training_step_same_gradients_aux_loss_and_router_logits(
    few_rows, models, ids, monkeypatch, calls
):
    """Both CPU training paths: the fused Function, and torch._grouped_mm below TRAIN_FEW_ROWS
    rows per expert (autograd's backward)."""
    eager, ours = models
    monkeypatch.setattr(mixkit_hf, "TRAIN_FEW_ROWS", few_rows)
    want, got = _train_step(eager, ids), _train_step(ours, ids)
    layers = len(experts_modules(ours))
    assert calls == ({"fused": layers, "grouped": 0} if few_rows == 0 else
                     {"fused": 0, "grouped": layers})  # fmt: skip
    torch.testing.assert_close(got.loss, want.loss, rtol=0, atol=1e-6)
    if want.aux_loss is not None:  # DeepSeek-V3 balances with a bias, not an aux loss
        assert want.aux_loss > 0
        torch.testing.assert_close(got.aux_loss, want.aux_loss, rtol=0, atol=1e-7)
    assert len(got.router_logits) == len(want.router_logits) == len(experts_modules(eager))
    for x, y in zip(got.router_logits, want.router_logits, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
    grads = {n: p.grad for n, p in eager.named_parameters()}
    for name, p in ours.named_parameters():
        assert (p.grad is None) == (grads[name] is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any("experts.gate_up_proj" in n and g.abs().sum() > 0 for n, g in grads.items())


def test_gradients_accumulate_over_steps_as_eager(ids):
    """Three backward passes without zero_grad (gradient accumulation): the pooled gradient
    buffers must never overwrite a gradient still held."""
    eager, ours = pair("olmoe")
    for model in (eager, ours):
        model.zero_grad(set_to_none=True)
        for _ in range(3):
            model(ids, labels=ids).loss.backward()
    for p, q in zip(ours.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=3e-6)


def test_the_fused_path_reuses_its_gradient_memory(ids):
    """Each step's weight-gradient buffers come back from the pool (buffers.gradients) once the
    last step's are dropped: one block per view, not one more every step."""
    _, ours = pair("qwen3_moe")
    for _ in range(3):
        _train_step(ours, ids)
    for experts in experts_modules(ours):
        assert [len(blocks) for blocks in mixkit_hf._POOLS[experts.gate_up_proj]] == [1, 1, 1]


def test_an_empty_batch():
    cfg = CONFIGS["qwen3_moe"]()
    cfg._experts_implementation = "mixkit"
    experts = Qwen3MoeExperts(cfg)
    x = torch.zeros(0, 32, requires_grad=True)
    y = experts(x, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2))
    assert y.shape == (0, 32)
    y.sum().backward()
    assert experts.gate_up_proj.grad.abs().sum() == 0


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_bf16_forward_and_backward_close_to_eager(arch, ids):
    eager, ours = pair(arch, torch.bfloat16)
    want, got = _train_step(eager, ids), _train_step(ours, ids)
    assert got.logits.dtype == torch.bfloat16
    scale = want.logits.float().abs().max()
    assert (got.logits.float() - want.logits.float()).abs().max() <= 0.03 * scale
    assert abs(got.loss.item() - want.loss.item()) <= 0.02 * want.loss.item()
    for (name, p), q in zip(ours.named_parameters(), eager.parameters(), strict=True):
        if "experts" in name:
            a, b = p.grad.float(), q.grad.float()
            assert (a - b).norm() <= 0.05 * b.norm() + 1e-6, name
    with torch.no_grad():  # inference: the grouped_mm path, in bf16
        want, got = eager(ids).logits.float(), ours(ids).logits.float()
    assert (got - want).abs().max() <= 0.03 * want.abs().max()


def test_grouped_mm_path_trains_as_eager(monkeypatch, ids, calls):
    """Training through torch._grouped_mm (taken for bf16 on CUDA), run on the CPU."""
    monkeypatch.setattr(mixkit_hf, "_grouped_mm_ok", lambda x: True)
    eager, ours = pair("qwen2_moe")
    want, got = _train_step(eager, ids), _train_step(ours, ids)
    assert calls == {"fused": 0, "grouped": 2}
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-5)
    for p, q in zip(ours.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


def test_from_pretrained_and_set_experts_implementation(tmp_path, ids):
    eager, _ = pair("qwen3_moe")
    eager.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, experts_implementation="mixkit")
    assert loaded.config._experts_implementation == "mixkit"
    with torch.no_grad():
        want = eager(ids).logits
        assert (loaded(ids).logits - want).abs().max() <= 1e-5
        loaded.set_experts_implementation("eager")
        assert loaded.config._experts_implementation == "eager"
        loaded.set_experts_implementation("mixkit")
        assert (loaded(ids).logits - want).abs().max() <= 1e-5


def test_experts_gradients_pass_gradcheck_in_float64():
    """d(out)/d(hidden, gate weights, gate_up_proj, down_proj) through the transposed views."""
    torch.manual_seed(0)
    E, D, H = 5, 8, 4
    cfg = Qwen3MoeConfig(hidden_size=D, moe_intermediate_size=H, num_experts=E)
    cfg._experts_implementation = "mixkit"
    experts = Qwen3MoeExperts(cfg).double()
    idx = torch.tensor([[0, 1], [0, 2], [3, 1], [3, 0], [3, 2]])  # (T, k); expert 4 gets none
    inputs = (
        torch.randn(5, D, dtype=torch.float64, requires_grad=True),
        torch.rand(5, 2, dtype=torch.float64, requires_grad=True),
        (torch.randn(E, 2 * H, D, dtype=torch.float64) * 0.5).requires_grad_(),
        (torch.randn(E, D, H, dtype=torch.float64) * 0.5).requires_grad_(),
    )

    def f(x, w, gate_up, down):
        params = {"gate_up_proj": gate_up, "down_proj": down}
        return torch.func.functional_call(experts, params, (x, idx, w))

    assert torch.autograd.gradcheck(f, inputs)


def test_gpt_oss_is_refused_with_the_reasons(ids):
    cfg = GptOssConfig(
        **COMMON, head_dim=8, intermediate_size=24, num_local_experts=8, rope_parameters=ROPE
    )
    model = AutoModelForCausalLM.from_config(cfg, experts_implementation="mixkit")
    with pytest.raises(ConfigError) as e:
        model(ids)
    message = str(e.value)
    assert "GptOssExperts" in message
    for reason in ("biases", "interleaved", "_apply_gate", 'experts_implementation="grouped_mm"'):
        assert reason in message


def test_another_activation_is_refused_by_name(ids):
    torch.manual_seed(0)
    cfg = CONFIGS["olmoe"]()
    cfg.hidden_act = "gelu"
    model = AutoModelForCausalLM.from_config(cfg, experts_implementation="mixkit")
    with pytest.raises(ConfigError, match="OlmoeExperts: its activation is GELUActivation"):
        model(ids)


def test_without_the_import_transformers_refuses_the_name():
    """Documented behaviour: `import mixkit.moe.hf` registers the name; without it (a fresh
    process), transformers itself rejects "mixkit" when the model is built."""
    code = (
        "from transformers import AutoModelForCausalLM, Qwen3MoeConfig\n"
        "cfg = Qwen3MoeConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1,"
        " num_attention_heads=2, num_key_value_heads=1, head_dim=4, num_experts=2)\n"
        "AutoModelForCausalLM.from_config(cfg, experts_implementation='mixkit')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "ValueError" in run.stderr
    assert 'experts_implementation="mixkit"` is not supported' in run.stderr


def test_mixkit_moe_alone_does_not_load_transformers():
    code = "import sys, mixkit.moe, mixkit.models; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
