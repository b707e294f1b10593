"""What reproduce trains: the run list, step counts, the Polyak rate, and valid train/SFT settings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from popalign.config import ConfigError, config_to_dict, load_config
from popalign.data.load import load_preferences
from popalign.pop.build import PoPSpec, build_pop_for_table
from popalign.testbed.annotators import true_margins
from popalign.testbed.make_data import TaskSpec, make_dataset, read_split
from popalign.testbed.plan import (
    Layout,
    ensure_pop_labels,
    plan_runs,
    polyak_tau,
    run_steps,
    sft_overrides,
    train_overrides,
)
from popalign.testbed.reproduce import settings_fingerprint
from popalign.testbed.settings import CONTROLS, PAPER_METHODS, ReproduceConfig
from popalign.train.config import SFTConfig, TrainConfig

REPO = Path(__file__).resolve().parents[2]


def cfg(*overrides: str) -> ReproduceConfig:
    return load_config(ReproduceConfig, None, list(overrides))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    make_dataset(TaskSpec(train_prompts=200, test_prompts=20), out)
    return load_preferences(str(out))[0]


def test_default_plan_is_the_paper_then_the_controls():
    names = [r.name for r in plan_runs(cfg())]
    assert names == [*PAPER_METHODS, *CONTROLS]
    assert CONTROLS == [
        "dpo-steps-matched-iter",
        "dpo-steps-matched-random",
        "dpo-pop-nomargin-iter",
        "dpo-pop-nomargin-random",
        "dpo-margin-oracle",
    ]


def test_baseline_runs_first_and_sweeps_skip_the_main_setting():
    runs = plan_runs(
        cfg("methods=[dpo-pop-iter,dpo]", "controls=[]", "sweeps.k=[1,2,4]", "sweeps.noise=[0.3]")
    )
    names = [r.name for r in runs]
    assert names[0] == "dpo"
    assert "dpo-pop-iter_k1" in names and "dpo-pop-random_k4" in names and "dpo-pop-iter_k2" not in names
    assert "dpo-pop-random_noise0p3" in names
    assert {r.k for r in runs if r.name == "dpo-pop-iter_k4"} == {4.0}


def test_step_counts_follow_the_examples(table):
    c = cfg("preference.batch_size=16", "preference.epochs=1")
    runs = {r.name: r for r in plan_runs(c)}
    assert run_steps(c, table, runs["dpo"], 0) == math.ceil(200 / 16)
    pairs = build_pop_for_table(table, PoPSpec(strategy="random", k=2.0, seed=0))
    assert run_steps(c, table, runs["dpo-pop-random"], 0) == math.ceil(len(pairs) / 16)
    # Each steps control trains vanilla DPO for exactly as many steps as its PoP method.
    for sampler in ("iter", "random"):
        matched = run_steps(c, table, runs[f"dpo-steps-matched-{sampler}"], 0)
        assert matched == run_steps(c, table, runs[f"dpo-pop-{sampler}"], 0)
        assert run_steps(c, table, runs[f"dpo-pop-nomargin-{sampler}"], 0) == matched


def test_judged_runs_train_on_label_files_drawn_on_the_true_margins(tmp_path):
    c = cfg(f"output_dir={tmp_path}", "task.train_prompts=200", "task.test_prompts=20")
    layout = Layout.of(c)
    make_dataset(c.task, layout.data)
    rows = read_split(layout.data, "train")
    table, truth = load_preferences(str(layout.data), tie_policy="keep")[0], true_margins(rows)
    runs = {r.name: r for r in plan_runs(c)}
    for sampler in ("iter", "random"):
        path, summary = ensure_pop_labels(c, layout, runs[f"dpo-pop-{sampler}"], 0, rows)
        steps = run_steps(c, table, runs[f"dpo-pop-{sampler}"], 0, truth)
        assert steps == c.preference.epochs * math.ceil(summary["pairs"] / 16)
        assert run_steps(c, table, runs[f"dpo-steps-matched-{sampler}"], 0, truth) == steps
        # The no-margin control trains on the very same judged pairs.
        assert ensure_pop_labels(c, layout, runs[f"dpo-pop-nomargin-{sampler}"], 0, rows) == (path, summary)
    # Where the output folder lies does not change a run's fingerprint; which labels it reads does.
    spec = runs["dpo-pop-random"]
    here = train_overrides(c, Layout(tmp_path / "a"), spec, 0, 10, "sft", tmp_path / "a" / "x.jsonl")
    there = train_overrides(c, Layout(tmp_path / "b"), spec, 0, 10, "sft", tmp_path / "b" / "x.jsonl")
    other = train_overrides(c, Layout(tmp_path / "a"), spec, 0, 10, "sft", tmp_path / "a" / "y.jsonl")
    assert settings_fingerprint(here) == settings_fingerprint(there) != settings_fingerprint(other)


def test_the_oracle_needs_the_testbed():
    with pytest.raises(ConfigError, match="dpo-margin-oracle"):
        cfg("data=somewhere")
    assert not cfg("data=somewhere", "controls=[]").judged_pop and cfg().judged_pop


def test_polyak_rate_keeps_a_five_percent_lag():
    c = cfg()
    assert polyak_tau(c, 2000) == pytest.approx(0.01)
    assert polyak_tau(c, 250) == pytest.approx(0.08)
    assert polyak_tau(c, 5) == 1.0


def test_overrides_build_valid_train_and_sft_configs(tmp_path):
    c = cfg(f"output_dir={tmp_path}")
    layout = Layout(tmp_path)
    sft = load_config(SFTConfig, None, sft_overrides(c, layout))
    assert sft.model.name_or_path == "random:tiny-llama" and sft.training.learning_rate == c.sft.learning_rate
    runs = {r.name: r for r in plan_runs(c)}
    matched = load_config(
        TrainConfig, None, train_overrides(c, layout, runs["dpo-steps-matched-random"], 1, 250, "sft")
    )
    assert (matched.method, matched.training.max_steps, matched.training.seed) == ("dpo", 250, 1)
    for sampler, strategy in (("iter", "iterative"), ("random", "random")):
        name = f"dpo-pop-nomargin-{sampler}"
        labels = tmp_path / "labels.jsonl"
        control = load_config(
            TrainConfig, None, train_overrides(c, layout, runs[name], 0, 250, "sft", labels)
        )
        assert control.method == "dpo-pop-nomargin" and control.pop.strategy == strategy
        assert control.target.tau == pytest.approx(0.08) and control.pop_labels == str(labels)
        assert Path(control.output_dir) == tmp_path / "runs" / name / "seed-0"
    oracle = load_config(
        TrainConfig, None, train_overrides(c, layout, runs["dpo-margin-oracle"], 0, 13, "sft")
    )
    assert oracle.resolved_method().source.needs_column and oracle.training.max_steps != 13


def test_fingerprint_ignores_paths_not_settings(tmp_path):
    c = cfg()
    spec = plan_runs(c)[0]
    here = train_overrides(c, Layout(tmp_path / "a"), spec, 0, 10, "sft-a")
    there = train_overrides(c, Layout(tmp_path / "b"), spec, 0, 10, "sft-b")
    assert settings_fingerprint(here) == settings_fingerprint(there)
    other = train_overrides(cfg("preference.beta=0.2"), Layout(tmp_path / "a"), spec, 0, 10, "sft-a")
    assert settings_fingerprint(other) != settings_fingerprint(here)


def test_default_preset_file_equals_the_built_in_defaults():
    preset = load_config(ReproduceConfig, REPO / "configs" / "testbed" / "default.yaml")
    assert config_to_dict(preset) == config_to_dict(ReproduceConfig())


@pytest.mark.parametrize("name", ["seeds10", "sweeps", "large"])
def test_presets_load(name):
    assert load_config(ReproduceConfig, REPO / "configs" / "testbed" / f"{name}.yaml").seeds


@pytest.mark.parametrize(
    "bad", ["methods=[dpo-margin]", "methods=[dpo,ipo]", "controls=[other]", "seeds=[]", "seeds=[1,1]"]
)
def test_bad_settings_are_config_errors(bad):
    with pytest.raises(ConfigError):
        cfg(bad)
