"""Config loading: presets, files, --set overrides, and errors that name the dotted field."""

from __future__ import annotations

import pytest

from mixkit.errors import ConfigError
from mixkit.models import build_model
from mixkit.train import load_config, preset_names
from mixkit.train.config import RunConfig


def test_required_presets_exist():
    assert {
        "tiny",
        "shakespeare-lstm-dense",
        "shakespeare-lstm-moe",
        "shakespeare-transformer-moe",
    } <= set(preset_names())


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_validates_and_builds(name):
    cfg = load_config(name)
    update = {"vocab_size": 256}
    if cfg.model.arch == "transformer":
        update["block_size"] = cfg.train.seq_len
    model = build_model(cfg.model.model_copy(update=update))
    assert model.num_parameters() > 0 and model.active_macs_per_token() > 0


def test_lstm_presets_are_compute_matched():
    """The paper's comparison: dense and MoE LSTMs at equal ops/timestep (router aside)."""
    dense, moe = load_config("shakespeare-lstm-dense"), load_config("shakespeare-lstm-moe")
    models = [build_model(c.model.model_copy(update={"vocab_size": 256})) for c in (dense, moe)]
    d, e = models
    router = moe.model.d_model * moe.model.moe.num_experts
    assert e.active_macs_per_token() - router == d.active_macs_per_token()
    assert e.num_parameters() > 2 * d.num_parameters()
    assert moe.model.moe.num_experts >= 16 and moe.model.moe.k == 2
    assert dense.train.steps * dense.train.batch_size == moe.train.steps * moe.train.batch_size


def test_set_overrides_parse_types():
    cfg = load_config("tiny", overrides=["train.steps=7", "model.moe.router=topk", "optim.lr=0.5"])
    assert (cfg.train.steps, cfg.model.moe.router, cfg.optim.lr) == (7, "topk", 0.5)


def test_config_file_extends_a_preset(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('preset = "tiny"\nname = "mine"\n[train]\nsteps = 3\n', "utf-8")
    cfg = load_config(config_file=f)
    assert (cfg.name, cfg.train.steps, cfg.train.seq_len) == (
        "mine",
        3,
        load_config("tiny").train.seq_len,
    )


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["model.moe.num_experts=0"],
            "model.moe.num_experts: Input should be greater than or equal to 1 (got 0)",
        ),
        (["model.d_modle=3"], "model.d_modle: unknown field"),
        (["train.batch_size='big'"], "train.batch_size: Input should be a valid integer"),
        (["model.moe.k=9"], "model.moe: k (9) must be <= num_experts (4)"),
        (["model.moe.options.bogus=1"], "model.moe: unknown option(s) 'bogus'"),
        (["model.moe.options.noise_eps=-1"], "model.moe: noise_eps (-1) must be a finite number"),
        (["model.moe.bogus=1"], "model.moe: unknown option(s) 'bogus'"),
        (["model.moe.w_load=-1"], "model.moe: w_load (-1) must be a finite number"),
        (["optim.min_lr=1.0"], "optim.min_lr (1.0) must be <= optim.lr"),
        (["model.arch='gru'"], "model"),
    ],
)
def test_errors_name_the_dotted_field(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", overrides=overrides)
    assert expected in str(info.value)


def test_bad_inputs_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown preset 'nope' \(choose from: .*tiny"):
        load_config("nope")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(config_file=tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\narch = 'lstm'", "utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(config_file=bad)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config("tiny", overrides=["train.steps"])


def test_config_round_trips_through_json():
    cfg = load_config("shakespeare-transformer-moe")
    assert RunConfig.model_validate(cfg.to_dict()) == cfg
