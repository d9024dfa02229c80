"""A mixkit-trained MoE LM, exported to GGUF, is a `provider = "local"` agent in a mixture next
to an embedded model (moa's local provider takes a path to a .gguf file as its model)."""

from __future__ import annotations

from mixkit.convert import export_gguf, load_run
from mixkit.moa import ask, parse_config


def test_an_exported_model_answers_in_a_mixture(moe_run, tmp_path):
    path = tmp_path / "mixkit-moe.gguf"
    export_gguf(load_run(moe_run), path, "f16")
    ours = {"provider": "local", "model": str(path), "max_tokens": 8, "temperature": 0.0}
    smol = {"provider": "local", "model": "smollm2-135m", "max_tokens": 8, "temperature": 0.0}
    cfg = parse_config(
        {
            "agents": {"mixkit": {**ours, "n_ctx": 2048}, "smol": {**smol, "n_ctx": 1024}},
            "layers": [{"agents": ["mixkit", "smol"]}],
            "aggregator": "mixkit",
        }
    )
    answer = ask("Name a primary colour.", config=cfg, log=False)
    assert [(c.layer, c.agent, c.outcome) for c in answer.calls] == [
        (1, "mixkit", "ok"),
        (1, "smol", "ok"),
        (2, "mixkit", "ok"),
    ]
    mixkit_calls = [c for c in answer.calls if c.agent == "mixkit"]
    assert all(0 < c.completion_tokens <= 8 for c in mixkit_calls)
    # byte tokens: the aggregator's prompt is the question and both proposals, as text
    assert mixkit_calls[1].prompt_tokens > mixkit_calls[0].prompt_tokens
