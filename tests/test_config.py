"""One config layer for moa and train (mixkit/config.py): one error format naming every bad field."""

from __future__ import annotations

import pytest

from mixkit import config as shared
from mixkit.errors import ConfigError
from mixkit.moa import load_config as load_moa
from mixkit.moa import load_preset as load_moa_preset
from mixkit.train import load_config as load_train

MOA = """
aggregator = "a"
[agents.a]
provider = "local"
model = "smollm2-135m"
temperature = 3.0
top_p = 0
"""


def test_moa_and_train_errors_name_the_source_and_every_bad_field(tmp_path):
    moa_file = tmp_path / "moa.toml"
    moa_file.write_text(MOA)
    with pytest.raises(ConfigError) as moa_error:
        load_moa(moa_file)
    train_file = tmp_path / "train.toml"
    train_file.write_text('preset = "tiny"\n[train]\nsteps = 0\nbatch_sise = 4\n')
    with pytest.raises(ConfigError) as train_error:
        load_train(config_file=train_file)
    moa_msg, train_msg = str(moa_error.value), str(train_error.value)
    assert moa_msg.startswith(f"{moa_file}: agents.a.temperature: ") and "(got 3.0)" in moa_msg
    assert "; agents.a.top_p: " in moa_msg and "(got 0)" in moa_msg
    assert train_msg.startswith(f"{train_file}: train.steps: ") and "(got 0)" in train_msg
    assert "; train.batch_sise: unknown field (check the spelling)" in train_msg
    assert "\n" not in moa_msg + train_msg  # one line each


@pytest.mark.parametrize("load", [load_moa_preset, lambda name: load_train(name)])
def test_an_unknown_preset_lists_the_known_ones_the_same_way(load):
    with pytest.raises(ConfigError, match=r"^unknown preset 'nope' \(choose from: .+, or pass"):
        load("nope")


def test_missing_and_broken_files_read_the_same_in_both(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("x = [")
    for load in (load_moa, lambda p: load_train(config_file=p)):
        with pytest.raises(ConfigError, match=r"missing.toml: config file not found"):
            load(tmp_path / "missing.toml")
        with pytest.raises(ConfigError, match=r"broken.toml: not valid TOML"):
            load(broken)


def test_overrides_and_merge():
    raw = shared.apply_overrides({"a": {"b": 1}}, ["a.c=2", "d=word", "a.e=[1, 2]"])
    assert raw == {"a": {"b": 1, "c": 2, "e": [1, 2]}, "d": "word"}
    with pytest.raises(ConfigError, match="'d' is not a section"):
        shared.apply_overrides(raw, ["d.x=1"])
    assert shared.merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_json_lines_name_the_line_and_skip_blanks(tmp_path):
    f = tmp_path / "items.jsonl"
    f.write_text('{"a": 1}\n\n  \n{"a": 2}\n', "utf-8")
    assert shared.read_json_lines(f) == [(f"{f}:1", {"a": 1}), (f"{f}:4", {"a": 2})]
    f.write_text('{"a": 1}\n[1, 2]\n', "utf-8")
    with pytest.raises(ConfigError, match=r"items.jsonl:2: expected an object with a"):
        shared.read_json_lines(f, expect="an object with a")
    f.write_text('{"a": 1}\n{oops\n', "utf-8")
    with pytest.raises(ConfigError, match=r"items.jsonl:2: not valid JSON"):
        shared.read_json_lines(f)
    with pytest.raises(ConfigError, match=r"nope.jsonl: tasks file not found \(check --x\)"):
        shared.read_json_lines(tmp_path / "nope.jsonl", "tasks file", hint="check --x")
    with pytest.raises(ConfigError, match="not a readable UTF-8 text file"):
        shared.read_json_lines(tmp_path)
