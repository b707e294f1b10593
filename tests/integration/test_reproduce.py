"""``popalign reproduce`` end to end at tiny sizes: the report's structure and numbers, and resuming."""

from __future__ import annotations

import argparse
import json
from html import escape as html_escape

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from popalign.config import load_config
from popalign.testbed.claims import CLAIMS
from popalign.testbed.reproduce import reproduce
from popalign.testbed.settings import CONTROLS, PAPER_METHODS, STEPS_MATCHED_CONTROLS, ReproduceConfig

pytestmark = pytest.mark.slow
PREDICTIONS = "discriminative_predictions.jsonl"

TINY = [
    "seeds=[0]",
    "task.train_prompts=64",
    "task.test_prompts=24",
    "model.hidden_size=16",
    "model.layers=1",
    "sft.epochs=1",
    "preference.save_steps=1000",
    "generation.max_new_tokens=8",
    "generation.batch_size=32",
    "bootstrap=50",
    "progress=false",
    "workers=1",
]


def tiny(out, compare, *extra: str) -> ReproduceConfig:
    return load_config(ReproduceConfig, None, [*TINY, f"output_dir={out}", f"compare_data={compare}", *extra])


@pytest.fixture(scope="module")
def straight(tmp_path_factory, ultrafeedback_dir):
    out = tmp_path_factory.mktemp("straight")
    outcome = reproduce(tiny(out, ultrafeedback_dir))
    return out, outcome


def eval_json(out, run: str, kind: str) -> dict:
    return json.loads((out / "runs" / run / "seed-0" / "eval" / f"{kind}.json").read_text())


def test_every_method_and_control_ran_and_was_evaluated(straight):
    out, outcome = straight
    names = [*PAPER_METHODS, *CONTROLS]
    assert outcome["ran"] == [f"{n}/seed-0" for n in names]
    for n in names:
        folder = out / "runs" / n / "seed-0"
        assert (folder / "done.json").is_file() and (folder / "eval" / "model_outputs.json").is_file()
        assert (folder / "eval" / "judge.json").is_file() == (n != "dpo")
        assert not list(folder.glob("checkpoint-*"))


def test_report_numbers_match_the_per_run_json(straight):
    out, outcome = straight
    results = json.loads((out / "report" / "results.json").read_text())
    # The testbed judges discriminative figures against r*'s margins, not the annotators' score margins
    # that the run's own discriminative.json uses: recomputed here from the per-example files.
    truth = {
        r["id"]: r["true_chosen"] - r["true_rejected"]
        for r in map(json.loads, (out / "data" / "test.jsonl").read_text().splitlines())
    }
    for name, m in results["methods"].items():
        seed = m["per_seed"]["0"]
        rows = [json.loads(line) for line in (out / "runs" / name / "seed-0" / "eval" / PREDICTIONS).open()]
        predicted = np.array([r["predicted_margin"] for r in rows])
        true = np.array([truth[r["id"]] for r in rows])
        untied = true != 0
        expected = {
            "accuracy": float(
                np.mean(np.where(predicted == 0, 0.5, np.sign(predicted) == np.sign(true))[untied])
            ),
            "pearson": pearsonr(predicted, true).statistic,
            "spearman": spearmanr(predicted, true).statistic,
        }
        for key, value in expected.items():
            assert seed[key] == pytest.approx(value, abs=1e-9)
            # One seed: the table's value is that seed's value.
            assert m["metrics"][key][0] == pytest.approx(value, abs=1e-9)
        if name != "dpo":
            judge = eval_json(out, name, "judge")["metrics"]
            assert seed["win_rate"] == pytest.approx(judge["win_rate"]["value"])
            assert seed["median_advantage"] == pytest.approx(judge["median_advantage"]["value"])
            assert seed["mean_reward"] == pytest.approx(judge["mean_score"])
    for pop_method, control in STEPS_MATCHED_CONTROLS.items():
        done = json.loads((out / "runs" / control / "seed-0" / "done.json").read_text())
        assert done["steps"] == results["methods"][pop_method]["steps"][0]
    # The PoP arms trained on the annotators' judgements, written as an ordinary label file.
    done = json.loads((out / "runs" / "dpo-pop-random" / "seed-0" / "done.json").read_text())
    assert (
        done["pop_labels"]["pairs"]
        == json.loads((out / "runs" / "dpo-pop-random" / "seed-0" / "run_info.json").read_text())["examples"][
            "examples"
        ]
    )


def test_verdicts_follow_the_rule(straight):
    out, _ = straight
    results = json.loads((out / "report" / "results.json").read_text())
    verdicts = {v["id"]: v for v in results["verdicts"] if v["group"] != "frontier"}
    # One seed is one replication: every claim is measured, none can be decided; a margin claim whose
    # positive control is undecided is unresolved.
    gated = {c.id for c in CLAIMS if c.control}
    for v in verdicts.values():
        assert v["verdict"] == ("unresolved" if v["id"] in gated else "inconclusive"), v["id"]
        value, low, high = v["difference"]
        assert low is None and high is None and v["p_difference"] is None
        assert v["per_seed"] == pytest.approx([value])
        if v["metric"] != "win_rate" or v["against"] != "0.5":
            assert v["subject_value"] - v["against_value"] == pytest.approx(value, abs=1e-9)
    acc = verdicts["acc-best"]
    rivals = {
        n: results["methods"][n]["metrics"]["accuracy"][0] for n in PAPER_METHODS if n != "dpo-pop-iter"
    }
    assert acc["against"] == max(rivals, key=rivals.get)


def test_every_run_has_a_training_curve_from_the_sft_model(straight):
    out, _ = straight
    results = json.loads((out / "report" / "results.json").read_text())
    frontier = results["frontier"]
    for name, by_seed in frontier["curves"].items():
        assert list(by_seed) == ["0"]
        points = by_seed["0"]
        done = json.loads((out / "runs" / name / "seed-0" / "done.json").read_text())
        assert [p["step"] for p in points] == [0, *done["curve_steps"]]
        assert done["curve_steps"][-1] == done["steps"]
        assert points[0]["kl"][0] == 0.0  # step 0 is the SFT model, its own reference
        # The last point is the final model: its KL is the one its own evaluation reports.
        final = eval_json(out, name, "generate")["kl"]
        assert points[-1]["kl"][0] == pytest.approx(final["value"], abs=1e-12)
        assert final["reference"] == str(out / "sft")
        # Snapshot weights are gone once evaluated; their evaluations stay. Every 10th snapshot (and the
        # final model) was screened, more where KL grew fast; the evaluated ones are a KL-spaced subset of
        # the screened ones, and only their folders remain.
        curve = out / "runs" / name / "seed-0" / "curve"
        assert not list(curve.glob("*/*.safetensors"))
        screened = set(map(int, json.loads((curve / "screen.json").read_text())))
        assert (
            {*range(10, done["steps"] + 1, 10), done["steps"]} <= screened <= set(range(1, done["steps"] + 1))
        )
        assert set(done["curve_steps"]) <= screened
        assert {int(p.name.split("-")[1]) for p in curve.glob("step-*")} == set(done["curve_steps"][:-1])
        assert all(
            (curve / f"step-{s:06d}" / "eval" / "judge.json").is_file() for s in done["curve_steps"][:-1]
        )
    labels = [b["label"] for b in frontier["budgets"]]
    assert labels[0] == "vanilla DPO's final KL"
    kl_verdicts = [v for v in results["verdicts"] if v["group"] == "frontier"]
    assert {v["budget"] for v in kl_verdicts} == set(labels)
    assert {v["verdict"] for v in kl_verdicts} <= {"inconclusive", "unresolved", "outside range", "not run"}


def test_report_pages_have_every_section(straight):
    out, outcome = straight
    md = (out / "report" / "report.md").read_text()
    for heading in (
        "The paper's claims",
        "Controls the paper lacks",
        "Table 1 analogue",
        "Table 3 analogue",
        "Figure 2 analogue",
        "Margin distributions",
        "The reward-KL frontier",
        "Training curves in numbers",
        "Machine",
    ):
        assert f"## {heading}" in md
    assert "UltraFeedback sample train" in md and "What this run supports, comparison by comparison" in md
    html = (out / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "src='http" not in html
    for png in ("cumulative_accuracy.png", "advantages.png", "margins.png", "frontier.png"):
        assert (out / "report" / png).is_file() and f"({png})" in md
    # The report draws every figure itself; the runs' evaluations write none.
    assert not [p for p in out.rglob("*.png") if "report" not in p.relative_to(out).parts]
    results = json.loads((out / "report" / "results.json").read_text())
    for v in results["verdicts"]:
        assert v["claim"] in md and html_escape(v["claim"]) in html
    assert outcome["report"]["html"] == str(out / "report" / "report.html")
    note = (out / "report" / "machine.md").read_text()
    assert "lscpu model name" in note and "cores" in note and "wall time" in note


def test_interrupted_run_resumes_without_redoing_finished_work(tmp_path, straight, ultrafeedback_dir):
    cfg = tiny(tmp_path, ultrafeedback_dir, "methods=[dpo,dpo-pop-random]", "controls=[]")

    def stop_after_first(spec, seed):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reproduce(cfg, on_run_done=stop_after_first)
    first = tmp_path / "runs" / "dpo" / "seed-0" / "done.json"
    assert first.is_file() and not (tmp_path / "runs" / "dpo-pop-random" / "seed-0" / "done.json").exists()
    stamp = first.stat().st_mtime_ns
    outcome = reproduce(cfg)
    assert outcome["ran"] == ["dpo-pop-random/seed-0"]
    assert first.stat().st_mtime_ns == stamp
    # The same runs as an uninterrupted reproduction, to the last digit.
    resumed = json.loads((tmp_path / "report" / "results.json").read_text())["methods"]
    full = json.loads((straight[0] / "report" / "results.json").read_text())["methods"]
    for name in ("dpo", "dpo-pop-random"):
        assert resumed[name]["per_seed"] == full[name]["per_seed"]
    assert reproduce(cfg)["ran"] == []


def test_changed_settings_on_finished_runs_are_refused(straight, ultrafeedback_dir):
    from popalign.errors import PopalignError

    out, _ = straight
    with pytest.raises(PopalignError, match="other settings"):
        reproduce(tiny(out, ultrafeedback_dir, "preference.beta=0.5"))


def test_cli_prints_verdicts_and_where_the_report_is(straight, ultrafeedback_dir, capsys):
    from popalign.cli import reproduce as cli

    out, _ = straight
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(), "reproduce the paper")
    args = parser.parse_args(["reproduce", *TINY, f"output_dir={out}", f"compare_data={ultrafeedback_dir}"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert (
        str(out / "report" / "report.html") in text and "DPO-PoP-iter has the highest test accuracy" in text
    )


def test_sweeps_add_the_appendix_tables_and_figures(tmp_path, ultrafeedback_dir):
    cfg = tiny(
        tmp_path,
        ultrafeedback_dir,
        "methods=[dpo,dpo-pop-random]",
        "controls=[]",
        "sweeps.methods=[dpo-pop-random]",
        "sweeps.k=[1,2]",
        "sweeps.noise=[0.5]",
    )
    outcome = reproduce(cfg)
    assert outcome["ran"] == [
        f"{n}/seed-0" for n in ("dpo", "dpo-pop-random", "dpo-pop-random_k1", "dpo-pop-random_noise0p5")
    ]
    results = json.loads((tmp_path / "report" / "results.json").read_text())["methods"]
    assert results["dpo-pop-random_k1"]["k"] == 1.0 and results["dpo-pop-random_noise0p5"]["noise"] == 0.5
    # k = 1 builds half as many PoP pairs as k = 2: half the steps (rounded up per batch).
    assert results["dpo-pop-random_k1"]["steps"][0] < results["dpo-pop-random"]["steps"][0]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Appendix E: PoP data multiplier k" in md and "## Appendix F: PoP label noise" in md
    assert (tmp_path / "report" / "sweep_k.png").is_file() and (
        tmp_path / "report" / "sweep_noise.png"
    ).is_file()
    done = json.loads((tmp_path / "runs" / "dpo-pop-random_noise0p5" / "seed-0" / "done.json").read_text())
    # Appendix F's flips are injected into the judged label file, which the trainer reads as given.
    assert done["noise"] == 0.5 and 0 < done["pop_labels"]["flipped"] < done["pop_labels"]["pairs"]


def test_a_run_killed_mid_training_resumes_from_its_checkpoint(tmp_path, ultrafeedback_dir, monkeypatch):
    from transformers import TrainerCallback

    import popalign.testbed.reproduce as rep

    cfg = tiny(tmp_path, ultrafeedback_dir, "methods=[dpo]", "controls=[]", "preference.save_steps=2")

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(rep, "_step_bar", lambda desc, enabled: Kill())
        with pytest.raises(KeyboardInterrupt):
            reproduce(cfg)
    folder = tmp_path / "runs" / "dpo" / "seed-0"
    assert (folder / "checkpoint-2").is_dir() and not (folder / "done.json").exists()
    assert reproduce(cfg)["ran"] == ["dpo/seed-0"]
    trained = json.loads((folder / "trained.json").read_text())
    assert trained["resumed_from"].endswith("checkpoint-2")
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["global_step"] == trained["steps"]


def test_tuning_picks_each_setting_on_validation_prompts_only(tmp_path, ultrafeedback_dir):
    import shutil

    from popalign.testbed.plan import Layout, plan_runs
    from popalign.testbed.tuning import select_settings

    cfg = tiny(
        tmp_path,
        ultrafeedback_dir,
        "methods=[dpo,dpo-pop-random]",
        "controls=[]",
        "task.validation_prompts=24",
        "tuning.learning_rate_factors=[0.5,1,4]",
    )
    outcome = reproduce(cfg)
    assert "dpo-pop-random_lr4/seed-0" in outcome["ran"] and "dpo_lr0p5/seed-0" in outcome["ran"]
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    selection = results["tuning"]
    assert set(selection) == {"dpo", "dpo-pop-random"}
    for s in selection.values():
        assert {g["lr_factor"] for g in s["grid"].values()} == {0.5, 1.0, 4.0}
        for kind in ("generative", "discriminative"):
            best = max(g[kind] for g in s["grid"].values())
            assert s["grid"][s[kind]][kind] == best
    tuned = [v for v in results["verdicts"] if v["group"] == "tuned"]
    assert tuned and all(v["id"].endswith("@tuned") for v in tuned)
    assert "## Tuned per method" in (tmp_path / "report" / "report.md").read_text()
    # Poison everything of the test split (its file, every evaluation on it): the choice stays the same.
    (tmp_path / "data" / "test.jsonl").write_text("not a preference\n")
    for folder in [
        *tmp_path.glob("runs/*/seed-*/eval"),
        *tmp_path.glob("runs/*/seed-*/curve"),
        tmp_path / "origin",
    ]:
        shutil.rmtree(folder)
    assert select_settings(cfg, Layout(tmp_path), plan_runs(cfg)) == selection


def test_tuning_needs_validation_prompts(tmp_path, ultrafeedback_dir):
    from popalign.config import ConfigError

    with pytest.raises(ConfigError, match="validation"):
        tiny(tmp_path, ultrafeedback_dir, "tuning.learning_rate_factors=[0.5,1]")


def test_real_data_track_judges_the_discriminative_claims_only(tmp_path, ultrafeedback_dir):
    """The real-model track's code path on real UltraFeedback rows, with a small pretrained stand-in."""
    from popalign.modeling.tiny import tiny_causal_lm
    from popalign.modeling.tokenizer import build_local_tokenizer

    model_dir = tmp_path / "pretrained"
    tokenizer = build_local_tokenizer()
    tiny_causal_lm(tokenizer, seed=0, hidden_size=16, num_hidden_layers=1).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    cfg = load_config(
        ReproduceConfig,
        None,
        [
            "seeds=[0]",
            f"output_dir={tmp_path / 'out'}",
            f"data={ultrafeedback_dir}",
            "train_rows=16",
            "test_rows=12",
            f"model.name_or_path={model_dir}",
            "model.lora=true",
            "model.lora_r=4",
            "methods=[dpo,dpo-margin,dpo-pop-iter]",
            "controls=[]",
            "preference.batch_size=8",
            "preference.save_steps=1000",
            "max_length=96",
            "max_prompt_length=48",
            "bootstrap=50",
            "compare_data=",
            "progress=false",
        ],
    )
    outcome = reproduce(cfg)
    out = tmp_path / "out"
    assert sorted(outcome["ran"]) == ["dpo-margin/seed-0", "dpo-pop-iter/seed-0", "dpo/seed-0"]
    assert not (out / "sft").exists() and not (out / "data").exists()  # no SFT stage, no task data
    run = out / "runs" / "dpo-pop-iter" / "seed-0"
    assert not (run / "eval" / "model_outputs.json").exists()  # no reward to judge replies with
    disc = json.loads((run / "eval" / "discriminative.json").read_text())
    assert disc["data"]["rows"] == 12
    config = (run / "config.yaml").read_text()
    assert "enabled: true" in config and f"name_or_path: {model_dir}" in config
    results = json.loads((out / "report" / "results.json").read_text())
    verdicts = {v["id"]: v["verdict"] for v in results["verdicts"]}
    for generative in ("winrate-best", "madv-best", "random-beats-dpo", "random-gen-over-iter"):
        assert verdicts[generative] == "not run"
    assert verdicts["margin1-acc"] in ("reproduced", "not reproduced", "inconclusive")
    md = (out / "report" / "report.md").read_text()
    assert "Table 1 analogue" in md and "Table 3 analogue" not in md and "real preferences" in md
    assert md.startswith("# DPO-PoP on real preferences")


def test_real_data_cannot_be_tuned(tmp_path):
    from popalign.config import ConfigError

    with pytest.raises(ConfigError, match="tuning"):
        load_config(
            ReproduceConfig,
            None,
            ["data=somewhere", "task.validation_prompts=10", "tuning.learning_rate_factors=[1,2]"],
        )


def test_seeds_in_two_worker_processes_give_the_same_runs(tmp_path, straight, ultrafeedback_dir):
    # Seeds are independent: seed 0 trained in a worker process beside seed 1 must equal seed 0 trained
    # alone in this process (the straight fixture), file for file.
    out, _ = straight
    cfg = tiny(tmp_path, ultrafeedback_dir, "methods=[dpo,dpo-pop-random]", "controls=[]", "seeds=[0,1]")
    cfg.workers = 2
    outcome = reproduce(cfg)
    assert sorted(outcome["ran"]) == sorted(
        f"{m}/seed-{s}" for m in ("dpo", "dpo-pop-random") for s in (0, 1)
    )
    for name in ("dpo", "dpo-pop-random"):
        for kind in ("discriminative_predictions.jsonl", "model_outputs.json"):
            mine = (tmp_path / "runs" / name / "seed-0" / "eval" / kind).read_text()
            theirs = (out / "runs" / name / "seed-0" / "eval" / kind).read_text()
            assert mine.replace(str(tmp_path), "") == theirs.replace(str(out), ""), (name, kind)
