from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from popalign.config import ConfigError, config_to_dict, describe_config, help_field, load_config, save_config


@dataclass
class Inner:
    rate: float = help_field(0.5, help="a rate")
    names: list[str] = help_field(default_factory=lambda: ["a"], help="names")


@dataclass
class Outer:
    method: Literal["x", "y"] = help_field("x", help="which")
    steps: int = help_field(3, help="how many")
    limit: int | None = help_field(None, help="optional")
    flag: bool = help_field(False, help="a switch")
    columns: dict[str, str] = help_field(default_factory=dict, help="mapping")
    inner: Inner = field(default_factory=Inner)


def test_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: y\nsteps: 7\ninner:\n  rate: 0.25\ncolumns:\n  prompt: question\n")
    cfg = load_config(Outer, path, ["steps=9", "inner.names=b,c", "flag=true", "limit=null"])
    assert cfg.method == "y"
    assert cfg.steps == 9
    assert cfg.inner.rate == 0.25
    assert cfg.inner.names == ["b", "c"]
    assert cfg.flag is True
    assert cfg.limit is None
    assert cfg.columns == {"prompt": "question"}


def test_unknown_key_is_an_error_with_suggestion(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'stpes'.*steps"):
        load_config(Outer, None, ["stpes=3"])
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  rat: 1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'inner\.rat'"):
        load_config(Outer, path)


def test_names_from_other_tools_suggest_the_field_they_mean():
    from popalign.train.config import TrainConfig

    with pytest.raises(ConfigError, match=r"'training\.lr'\. Did you mean: training\.learning_rate\?"):
        load_config(TrainConfig, None, ["training.lr=1e-5"])
    with pytest.raises(ConfigError, match=r"Did you mean: training\.per_device_train_batch_size\?"):
        load_config(TrainConfig, None, ["training.batch_size=4"])


@pytest.mark.parametrize(
    "item, message",
    [
        ("steps=three", "expected an integer"),
        ("method=z", "not one of x, y"),
        ("flag=maybe", "true or false"),
    ],
)
def test_bad_values_name_the_key(item, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, None, [item])


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Outer, None, ["steps"])


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(Outer, None, ["steps=11", "inner.rate=0.125", "columns={chosen: good}"])
    save_config(cfg, tmp_path / "out.yaml")
    again = load_config(Outer, tmp_path / "out.yaml")
    assert config_to_dict(again) == config_to_dict(cfg)


def test_describe_lists_every_key_with_help():
    text = describe_config(Outer)
    for key in ("method", "steps", "limit", "flag", "columns", "inner.rate", "inner.names"):
        assert f"  {key}:" in text
    assert "how many" in text


def test_mapping_in_compact_command_line_form():
    cfg = load_config(Outer, None, ["columns=prompt=question,chosen=good"])
    assert cfg.columns == {"prompt": "question", "chosen": "good"}
    with pytest.raises(ConfigError, match="a=b,c=d"):
        load_config(Outer, None, ["columns=prompt"])
