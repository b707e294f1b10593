"""Cross-fitted ``popalign reproduce`` end to end at tiny sizes: no row is scored by a model that saw it,
folds follow prompts, the report pools out-of-fold rows, an interrupted fold resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from popalign.config import load_config
from popalign.testbed.reproduce import reproduce
from popalign.testbed.settings import ReproduceConfig

pytestmark = pytest.mark.slow

TRAIN, TEST = 16, 8


def _rows(first: int, n: int) -> list[dict]:
    # Prompt i % 18: the test rows 18-23 repeat the prompts of training rows 0-5. Every row's replies carry
    # its marker, so a training file that holds a row is seen by searching its text.
    return [
        {
            "prompt": f"Question {i % 18}: name a colour.",
            "chosen": f"Blue is a colour. MARK{i:03d}",
            "rejected": f"No. MARK{i:03d}",
            "score_chosen": float(4 + i % 5),
            "score_rejected": float(1 + i % 3),
        }
        for i in range(first, first + n)
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from popalign.modeling.tiny import tiny_causal_lm
    from popalign.modeling.tokenizer import build_local_tokenizer

    root = tmp_path_factory.mktemp("crossfit")
    data = root / "data"
    data.mkdir()
    for split, rows in (("train", _rows(0, TRAIN)), ("test", _rows(TRAIN, TEST))):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model_dir = root / "pretrained"
    tokenizer = build_local_tokenizer()
    tiny_causal_lm(tokenizer, seed=0, hidden_size=16, num_hidden_layers=1).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return root, data, model_dir


def config(out, data, model_dir, *extra: str) -> ReproduceConfig:
    return load_config(
        ReproduceConfig,
        None,
        [
            "seeds=[0,1]",
            f"output_dir={out}",
            f"data={data}",
            "folds=2",
            f"model.name_or_path={model_dir}",
            "model.lora=true",
            "model.lora_r=4",
            "methods=[dpo,dpo-pop-iter]",
            "controls=[dpo-steps-matched-iter]",
            "preference.batch_size=4",
            "preference.save_steps=1000",
            "pop.min_gap=0.5",
            "max_length=48",
            "max_prompt_length=24",
            "bootstrap=20",
            "compare_data=",
            "progress=false",
            "workers=1",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def finished(setup):
    root, data, model_dir = setup
    out = root / "out"
    return out, reproduce(config(out, data, model_dir))


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_no_row_is_scored_by_a_model_that_trained_on_it(finished):
    out, outcome = finished
    runs = ["dpo", "dpo-pop-iter", "dpo-steps-matched-iter"]
    assert outcome["ran"] == [f"{n}/seed-{s}" for s in (0, 1) for n in runs]
    for name in runs:
        for seed in (0, 1):
            scored_anywhere = []
            for fold in (0, 1):
                folder = out / "runs" / name / f"seed-{seed}" / f"fold-{fold}"
                # The file this fold-run actually trained on, as its saved configuration names it.
                train_file = yaml.safe_load((folder / "config.yaml").read_text())["data"]["path"]
                trained_text = (out / "folds" / f"fold-{fold}" / "train.jsonl").read_text()
                assert json.loads((folder / "run_info.json").read_text())["data"]["rows_kept"] == len(
                    trained_text.splitlines()
                )
                assert train_file.endswith(f"fold-{fold}")
                scored = _jsonl(folder / "eval" / "discriminative_predictions.jsonl")
                trained_prompts = {json.loads(line)["prompt"] for line in trained_text.splitlines()}
                test_rows = {r["id"]: r for r in _jsonl(out / "folds" / f"fold-{fold}" / "test.jsonl")}
                for row in scored:
                    marker = test_rows[row["id"]]["chosen"].split()[-1]
                    assert marker not in trained_text, (name, seed, fold, row["id"])
                    assert test_rows[row["id"]]["prompt"] not in trained_prompts
                scored_anywhere += [r["id"] for r in scored]
            # Every pooled row scored out of fold exactly once per seed.
            assert sorted(scored_anywhere) == sorted(
                [f"train-{i}" for i in range(TRAIN)] + [f"test-{i}" for i in range(TEST)]
            )


def test_folds_keep_a_prompt_on_one_side(finished):
    out, _ = finished
    manifest = json.loads((out / "folds" / "folds.json").read_text())
    fold_of = dict(zip(manifest["ids"], manifest["fold"], strict=True))
    for i in range(TRAIN, TRAIN + TEST):
        if i >= 18:  # test rows 18-23 share the prompt of training row i - 18
            assert fold_of[f"test-{i - TRAIN}"] == fold_of[f"train-{i - 18}"]
    assert manifest["prompts"] == 18 and set(manifest["fold"]) == {0, 1}


def test_report_pools_the_out_of_fold_rows(finished):
    from popalign.eval.discriminative import accuracy

    out, _ = finished
    results = json.loads((out / "report" / "results.json").read_text())
    for seed in (0, 1):
        pooled = _jsonl(
            out / "runs" / "dpo-pop-iter" / f"seed-{seed}" / "eval" / "discriminative_predictions.jsonl"
        )
        assert len(pooled) == TRAIN + TEST
        hand = accuracy(
            np.array([r["predicted_margin"] for r in pooled]), np.array([r["gt_margin"] for r in pooled])
        )
        assert results["methods"]["dpo-pop-iter"]["per_seed"][str(seed)]["accuracy"] == pytest.approx(hand)
    cf = results["crossfit"]
    assert cf["folds"] == 2 and cf["rows"] == TRAIN + TEST
    contrasts = {(c["subject"], c["other"]): c for c in cf["contrasts"]}
    assert set(contrasts) == {
        ("dpo-pop-iter", "dpo"),
        ("dpo-steps-matched-iter", "dpo"),
        ("dpo-pop-iter", "dpo-steps-matched-iter"),
    }
    c = contrasts[("dpo-pop-iter", "dpo")]
    assert c["seeds"] == [0, 1] and c["low"] <= c["difference"] <= c["high"]
    # PoP-iter logs its margin; the truncation share comes from the trainer's own count.
    assert cf["pop_margin"]["dpo-pop-iter"] > 0 and "dpo" not in cf["pop_margin"]
    assert cf["truncated"]["rows"] == TRAIN + TEST  # each row trains in exactly one of the 2 folds
    steps = json.loads((out / "runs" / "dpo-steps-matched-iter" / "seed-0" / "done.json").read_text())
    pop = json.loads((out / "runs" / "dpo-pop-iter" / "seed-0" / "done.json").read_text())
    assert steps["fold_steps"] == pop["fold_steps"]  # matched fold by fold
    # The reference's log-probs of a fold's training rows are computed once, by the first run on that fold.
    for fold in (0, 1):
        for name, seed in (("dpo-pop-iter", 0), ("dpo", 1)):
            info = json.loads(
                (out / "runs" / name / f"seed-{seed}" / f"fold-{fold}" / "run_info.json").read_text()
            )
            assert info["reference"]["cache"] == "hit"
    md = (out / "report" / "report.md").read_text()
    assert "Cross-fitting" in md and "smallest detectable" in md.lower()


def test_an_interrupted_fold_resumes_without_redoing_the_finished_one(setup, monkeypatch):
    import popalign.testbed.reproduce as rep

    root, data, model_dir = setup
    out = root / "interrupted"
    cfg = config(out, data, model_dir, "seeds=[0]", "methods=[dpo]", "controls=[]")
    real = rep.ensure_run
    calls = []

    def stop_at_fold_1(cfg, layout, spec, seed, table, model):
        calls.append(layout.fold)
        if layout.fold == 1:
            raise KeyboardInterrupt
        return real(cfg, layout, spec, seed, table, model)

    with monkeypatch.context() as m:
        m.setattr(rep, "ensure_run", stop_at_fold_1)
        with pytest.raises(KeyboardInterrupt):
            reproduce(cfg)
    fold0 = out / "runs" / "dpo" / "seed-0" / "fold-0"
    assert calls == [0, 1] and (fold0 / "done.json").is_file()
    assert not (out / "runs" / "dpo" / "seed-0" / "done.json").exists()
    before = (fold0 / "trained.json").stat().st_mtime_ns
    assert reproduce(cfg)["ran"] == ["dpo/seed-0"]
    assert (fold0 / "trained.json").stat().st_mtime_ns == before  # fold 0 was not trained again
    assert (out / "runs" / "dpo" / "seed-0" / "fold-1" / "done.json").is_file()
    assert len(_jsonl(out / "runs" / "dpo" / "seed-0" / "eval" / "discriminative_predictions.jsonl")) == 24
    assert reproduce(cfg)["ran"] == []  # all done: nothing runs again


def test_a_fold_run_killed_mid_training_resumes_from_its_checkpoint(setup, monkeypatch):
    from transformers import TrainerCallback

    import popalign.testbed.reproduce as rep

    root, data, model_dir = setup
    out = root / "killed"
    cfg = config(out, data, model_dir, "seeds=[0]", "methods=[dpo]", "controls=[]", "preference.batch_size=2")
    cfg.preference.save_steps = 2

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3 and "fold-1" in args.output_dir:
                raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(rep, "_step_bar", lambda desc, enabled: Kill())
        with pytest.raises(KeyboardInterrupt):
            reproduce(cfg)
    fold1 = out / "runs" / "dpo" / "seed-0" / "fold-1"
    assert (fold1 / "checkpoint-2").is_dir() and not (fold1 / "done.json").exists()
    assert reproduce(cfg)["ran"] == ["dpo/seed-0"]
    trained = json.loads((fold1 / "trained.json").read_text())
    assert trained["resumed_from"].endswith("checkpoint-2")
    assert json.loads((fold1 / "trainer_state.json").read_text())["global_step"] == trained["steps"]
