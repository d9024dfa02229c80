"""Sparse upcycling (Komatsuzaki et al. 2022): a dense transformer LM becomes an MoE whose experts
all start as copies of the dense FFN; only the router is new.

At step 0 (no noise) the upcycled model computes what the dense model computes whenever the gate
weights of a token sum to 1, since every expert is then the same function:

    router                     k >= 2                              k = 1
    topk (renormalize=true)    exact                               not exact (weight = softmax prob)
    topk (renormalize=false)   not exact (weights sum to < 1)      not exact
    noisy_topk                 exact (renormalised over the k)     not exact
    switch                     -                                   not exact (weight = softmax prob)
    sigmoid_bias               exact when route_scale = 1          not exact (weight = sigmoid)
    expert_choice              not exact (a token gets 0..E experts)

`noise` > 0 adds Gaussian noise of `noise` times each weight's own std to every expert copy, to
break their symmetry; then no router is exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mixkit.config import apply_overrides
from mixkit.convert.hf_import import hf_run, write_hf_run
from mixkit.convert.runs import (
    MixkitRun,
    is_mixkit_run,
    load_run,
    require_exists,
    staged,
    write_run,
)
from mixkit.errors import ConfigError
from mixkit.models import DenseFFN, MoESpec, TransformerLM
from mixkit.moe import MoE, MoEConfig
from mixkit.train.config import config_from_dict


def keeps_dense_output(lc: MoEConfig) -> bool:
    """Whether a token's gate weights sum to exactly 1 (see the module's table)."""
    if lc.num_shared_experts:
        return False
    if lc.router in ("topk", "noisy_topk"):
        return lc.k > 1 and (lc.renormalize or lc.router == "noisy_topk")
    if lc.router == "sigmoid_bias":
        return lc.k > 1 and lc.route_scale == 1.0
    return False


def upcycled_spec(dense: TransformerLM, experts: int, options: dict[str, Any]) -> MoESpec:
    """The MoE table of the upcycled model: E experts the size of the dense FFN."""
    c = dense.cfg
    if c.moe is not None:
        raise ConfigError("the model is already an MoE (model.moe is set); upcycle a dense model")
    # validated here first, so that a bad option is a ConfigError naming the flag
    MoEConfig.from_options(c.d_model, c.ffn_hidden, experts, **options, name="upcycle")
    return MoESpec(num_experts=experts, d_hidden=c.ffn_hidden, **options)


def _copy_ffn(moe: MoE, ffn: DenseFFN, noise: float, gen: torch.Generator) -> None:
    ex, H = moe.experts, ffn.d_hidden
    w_in, w_out = ffn.w_in.weight.detach(), ffn.w_out.weight.detach()  # (H or 2H, D), (D, H)
    targets = [(ex.w_out, w_out.t())]
    if ex.w_gate is not None:  # SwiGLU: the dense w_in holds the gate rows, then the up rows
        targets += [(ex.w_gate, w_in[:H].t()), (ex.w_in, w_in[H:].t())]
    else:
        targets += [(ex.w_in, w_in.t())]
    with torch.no_grad():
        for param, weight in targets:
            for e in range(ex.num_experts):
                jitter = torch.randn(weight.shape, generator=gen) * (noise * weight.std())
                param[e].copy_(weight + jitter if noise > 0 else weight)


def upcycle_model(
    dense: TransformerLM, spec: MoESpec, every: int, noise: float = 0.0, seed: int = 0
) -> TransformerLM:
    """The upcycled model: the dense weights everywhere, the FFN of every `every`-th block
    copied into each expert, a freshly initialised router (seeded)."""
    if noise < 0:
        raise ConfigError(f"--noise ({noise}) must be >= 0")
    cfg = dense.cfg.model_copy(update={"moe": spec, "moe_every": every})
    torch.manual_seed(seed)
    model = TransformerLM(cfg)
    shared = {k: v for k, v in dense.state_dict().items() if k in model.state_dict()}
    model.load_state_dict(shared, strict=False)
    gen = torch.Generator().manual_seed(seed)
    for block, dense_block in zip(model.blocks, dense.blocks, strict=True):
        if isinstance(block.ffn, MoE):
            _copy_ffn(block.ffn, dense_block.ffn, noise, gen)
    return model.eval()


def upcycle(
    src: Path,
    out: Path,
    experts: int,
    every: int = 1,
    options: dict[str, Any] | None = None,
    noise: float = 0.0,
    seed: int = 0,
    data: str | None = None,
    sets: list[str] | tuple[str, ...] = (),
) -> tuple[MixkitRun, bool]:
    """Upcycle the dense model of a mixkit run or an HF folder into a run at `out` (step 0).
    Returns the run and whether its logits equal the dense model's at step 0."""
    require_exists(src, "dense model")
    if every < 1:
        raise ConfigError(f"--every ({every}) must be >= 1")
    out = Path(out).resolve()
    source: Path | None = None
    if is_mixkit_run(Path(src)):
        run = load_run(Path(src))
    else:
        run, source = hf_run(Path(src), out / "tokenizer.json", data, [])
    spec = upcycled_spec(run.model, experts, dict(options or {"router": "topk", "k": 2}))
    model = upcycle_model(run.model, spec, every, noise, seed)
    raw = run.cfg.to_dict()
    raw["model"], raw["name"] = model.cfg.model_dump(), f"{run.cfg.name}-upcycled"
    if data is not None and source is None:
        raw["data"]["path"] = str(Path(data).expanduser().resolve())
    apply_overrides(raw, list(sets))
    cfg = config_from_dict(raw, "the upcycled run (--set)")
    if cfg.model != model.cfg:
        raise ConfigError("--set may change the run's data, optim and train sections, not model")
    same_data = cfg.data == run.cfg.data
    new = MixkitRun(model, cfg, run.tokenizer_path, run.fingerprint if same_data else None)
    layer = spec.layer_config(model.cfg.d_model)
    exact = noise == 0 and isinstance(layer, MoEConfig) and keeps_dense_output(layer)
    if source is not None:
        return write_hf_run(new, source, out), exact
    with staged(out) as tmp:
        tmp.mkdir()
        write_run(tmp, new)
    return new, exact
