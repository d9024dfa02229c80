"""Presets load; config mistakes name the file and the dotted field."""

from __future__ import annotations

import pytest

from mixkit.errors import ConfigError
from mixkit.moa import DEFAULT_PRESET, MoA, list_presets, load_config, load_preset, parse_config

GOOD = """
aggregator = "b"
[agents.a]
provider = "local"
model = "smollm2-135m"
[agents.b]
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "m"
[[layers]]
agents = ["a", "b", "a"]
quorum = 2
"""


def test_every_preset_loads_and_builds_without_touching_models():
    names = list_presets()
    assert {"moa", "moa-lite", "self-moa"} <= set(names) and DEFAULT_PRESET in names
    for name in names:
        cfg = load_preset(name)
        MoA(cfg, log=False)  # builds providers: no network, no model load
        assert cfg.name == name
    assert load_preset("moa").num_layers == 3
    assert load_preset("moa-lite").num_layers == 2
    self_moa = load_preset("self-moa")
    assert len(set(self_moa.layers[0].agents)) == 1 and len(self_moa.layers[0].agents) >= 2


def test_presets_mix_both_local_model_families():
    models = {a.model for a in load_preset("moa").agents.values()}
    assert {"smollm2-135m", "qwen2.5-coder-0.5b"} <= models


def test_user_config_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(GOOD)
    cfg = load_config(path)
    assert cfg.name == "mine" and cfg.layers[0].quorum == 2 and cfg.agents["b"].provider == "openai"


@pytest.mark.parametrize(
    "edit, field, words",
    [
        (
            ('agents = ["a", "b", "a"]', 'agents = ["a", "zed"]'),
            "layers.0.agents",
            "unknown agent 'zed'",
        ),
        (('aggregator = "b"', 'aggregator = "nope"'), "aggregator", "'nope' is not an agent"),
        (('model = "m"', ""), "agents.b.model", "Field required"),
        (("quorum = 2", 'quorum = "two"'), "layers.0.quorum", "integer"),
        (("quorum = 2", "quorum = 5"), "layers.0", "quorum (5)"),
        (
            ('provider = "openai"', 'provider = "carrier-pigeon"'),
            "agents.b.provider",
            "'local' or 'openai'",
        ),
        (('model = "m"', 'model = "m"\ntemprature = 0.3'), "agents.b.temprature", "unknown field"),
        (('base_url = "http://127.0.0.1:9/v1"', ""), "agents.b", "needs base_url"),
    ],
)
def test_config_errors_name_file_and_field(tmp_path, edit, field, words):
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace(*edit))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}")
    assert words in message


def test_unknown_local_model_and_missing_file(tmp_path):
    cfg = parse_config(
        {"agents": {"x": {"provider": "local", "model": "gpt-9"}}, "aggregator": "x"}
    )
    with pytest.raises(ConfigError, match="agents.x.model: local model 'gpt-9'"):
        MoA(cfg, log=False)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*moa-lite"):
        load_preset("nope")
    (tmp_path / "broken.toml").write_text("agents = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "broken.toml")


def test_moa_imports_nothing_from_moe_and_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys, mixkit.moa, mixkit.evals;"
        "print(sorted(m for m in ('mixkit.moe', 'torch', 'llama_cpp', 'openai') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
