"""Cross-fitting's pieces by hand: folds by prompt, pooled out-of-fold metrics, paired rows, the MDE."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from popalign.config import ConfigError, load_config
from popalign.data.split import assign_folds
from popalign.errors import PopalignError
from popalign.testbed import crossfit
from popalign.testbed.crossfit_report import paired_rows, row_contrasts, smallest_detectable
from popalign.testbed.plan import Layout, RunSpec
from popalign.testbed.results import load_run, metric
from popalign.testbed.settings import ReproduceConfig


def test_rows_sharing_a_prompt_share_a_fold_and_folds_are_balanced():
    prompts = [f"p{i % 7}" for i in range(20)] + [[{"role": "user", "content": "chat"}]] * 2
    folds = assign_folds(prompts, 3, seed=5)
    for p in {json.dumps(x) for x in prompts}:
        assert len({f for x, f in zip(prompts, folds, strict=True) if json.dumps(x) == p}) == 1
    per_fold = [len({json.dumps(x) for x, f in zip(prompts, folds, strict=True) if f == j}) for j in range(3)]
    assert sorted(per_fold) == [2, 3, 3]  # 8 distinct prompts dealt to 3 folds
    assert (assign_folds(prompts, 3, seed=5) == folds).all()  # deterministic
    assert not (assign_folds(prompts, 3, seed=6) == folds).all()


def test_folds_need_data_and_every_row(tmp_path):
    with pytest.raises(ConfigError, match="folds"):
        load_config(ReproduceConfig, None, ["folds=2"])
    with pytest.raises(ConfigError, match="folds"):
        load_config(ReproduceConfig, None, ["folds=1", "data=x", "controls=[]"])
    with pytest.raises(ConfigError, match="train_rows"):
        load_config(ReproduceConfig, None, ["folds=2", "data=x", "controls=[]", "train_rows=10"])


def test_smallest_detectable_effect_hand_value():
    # (1.959964 + 0.841621) * sqrt(0.25 / 1000) = 2.801585 * 0.0158114 = 0.044297
    assert smallest_detectable(0.25, 1000) == pytest.approx(0.044297, abs=1e-6)
    # The design: q = 0.25 on 175 non-tied rows gives about 0.106; the paper's 0.08 needs n >= 307.
    assert smallest_detectable(0.25, 175) == pytest.approx(2.801585 * math.sqrt(0.25 / 175), rel=1e-6)
    assert smallest_detectable(0.25, 307) < 0.08 < smallest_detectable(0.25, 306)


def _write_fold_run(layout, spec, seed, fold, rows):
    eval_dir = crossfit.FoldLayout(layout.root, None, fold=fold).run(spec.name, seed) / "eval"
    eval_dir.mkdir(parents=True)
    text = "".join(json.dumps({"id": i, "predicted_margin": p, "gt_margin": g}) + "\n" for i, p, g in rows)
    (eval_dir / crossfit.PREDICTIONS).write_text(text)


def _record(steps):
    return {"fingerprint": f"f{steps}", "steps": steps, "train_loss": 0.5, "seconds": 1.0}


def test_pooled_out_of_fold_metrics_equal_hand_values(tmp_path, monkeypatch):
    monkeypatch.setattr(crossfit, "_tokenize_stats", lambda folder: {"rows": 2, "truncated_rows": 1})
    cfg = load_config(
        ReproduceConfig, None, ["folds=2", "data=x", "controls=[]", "bootstrap=20", f"output_dir={tmp_path}"]
    )
    layout = Layout.of(cfg)  # real data: its score margins are the truth
    spec = RunSpec("dpo", "dpo", "paper", 2.0, 0.0)
    manifest = {"fingerprint": "m", "ids": ["train-0", "train-1", "test-0", "test-1"]}
    # Fold 0 scored train-1 and test-0, fold 1 the others; pooled order is the manifest's.
    _write_fold_run(layout, spec, 0, 0, [("test-0", -1.0, 2.0), ("train-1", 2.0, 1.0)])
    _write_fold_run(layout, spec, 0, 1, [("train-0", 1.0, 3.0), ("test-1", 0.5, 0.0)])
    done = crossfit.pool(cfg, layout, spec, 0, manifest, [_record(3), _record(4)])
    assert done["steps"] == 7 and done["fold_steps"] == [3, 4]
    run = load_run(layout, spec, 0)
    assert run.ids == manifest["ids"]
    # Non-tied rows train-0, train-1, test-0: right, right, wrong; test-1 is tied and left out.
    assert metric(run, "accuracy") == pytest.approx(2 / 3)
    # Pearson of predicted (1, 2, -1, 0.5) with truth (3, 1, 2, 0) over all rows, by hand: the centred
    # cross products sum to -0.75, the squares to 4.6875 and 5, so -0.75 / sqrt(23.4375).
    assert metric(run, "pearson") == pytest.approx(-0.75 / math.sqrt(23.4375))
    disc = json.loads((layout.run("dpo", 0) / "eval" / "discriminative.json").read_text())
    assert disc["accuracy"]["value"] == pytest.approx(2 / 3) and disc["out_of_fold"] is True
    # Low-margin (<= median non-tied margin 2): train-1 right, test-0 wrong; high (> 2): train-0 right.
    assert metric(run, "accuracy_low") == pytest.approx(0.5) and metric(run, "accuracy_high") == 1.0


def test_pooling_refuses_a_row_scored_twice_or_never(tmp_path):
    cfg = load_config(
        ReproduceConfig, None, ["folds=2", "data=x", "controls=[]", "bootstrap=20", f"output_dir={tmp_path}"]
    )
    layout = Layout.of(cfg)  # real data: its score margins are the truth
    spec = RunSpec("dpo", "dpo", "paper", 2.0, 0.0)
    manifest = {"fingerprint": "m", "ids": ["a", "b", "c"]}
    _write_fold_run(layout, spec, 0, 0, [("a", 1.0, 1.0), ("b", 1.0, 1.0)])
    _write_fold_run(layout, spec, 0, 1, [("b", 1.0, 1.0)])
    with pytest.raises(PopalignError, match="two fold-runs"):
        crossfit.pool(cfg, layout, spec, 0, manifest, [_record(1), _record(1)])


class _Run:
    def __init__(self, name, seed, credit, ids=None):
        self.spec = RunSpec(name, name, "paper", 2.0, 0.0)
        self.seed, self.credit = seed, np.array(credit, dtype=np.float64)
        self.ids = ids or [str(i) for i in range(len(credit))]


def test_paired_rows_hand_values():
    nan = float("nan")
    # Seed 0: a right on rows 0, 1, 2; b right on rows 0, 3; row 4 tied. Differences 0, 1, 1, -1.
    # Seed 1: differences 0, 1, 0, 0. Per row over seeds: 0, 1, 0.5, -0.5 -> mean 0.25.
    a = [_Run("a", 0, [1, 1, 1, 0, nan]), _Run("a", 1, [1, 1, 0, 0, nan])]
    b = [_Run("b", 0, [1, 0, 0, 1, nan]), _Run("b", 1, [1, 0, 0, 0, nan])]
    out = paired_rows(a, b)
    assert out["n"] == 4 and out["difference"] == pytest.approx(0.25)
    sd = np.std([0, 1, 0.5, -0.5], ddof=1)
    assert out["high"] - out["difference"] == pytest.approx(1.959964 * sd / 2, rel=1e-6)
    assert out["disagreement"] == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert out["mde"] == pytest.approx(smallest_detectable(0.5, 4))
    with pytest.raises(ValueError, match="different rows"):
        paired_rows([_Run("a", 0, [1, 0], ["x", "y"])], [_Run("b", 0, [1, 0], ["y", "x"])])


def test_row_contrasts_pair_each_pop_method_with_its_controls():
    names = ["dpo", "dpo-pop-iter", "dpo-steps-matched-iter", "dpo-pop-nomargin-iter"]
    assert row_contrasts(names) == [
        ("dpo-pop-iter", "dpo"),
        ("dpo-steps-matched-iter", "dpo"),
        ("dpo-pop-nomargin-iter", "dpo"),
        ("dpo-pop-iter", "dpo-steps-matched-iter"),
        ("dpo-pop-iter", "dpo-pop-nomargin-iter"),
    ]
