"""``popalign eval`` and ``popalign report`` end to end on tiny saved models and the real test split."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from popalign.cli import eval as eval_cli
from popalign.cli import report as report_cli
from popalign.errors import PopalignError
from popalign.eval.discriminative import accuracy

SIZE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "rewardbench_small.jsonl"


def cli(argv: list[str]) -> int:
    """The two commands as ``popalign`` dispatches them (user errors print and exit 2)."""
    parser = argparse.ArgumentParser(prog="popalign")
    sub = parser.add_subparsers(dest="command")
    eval_cli.register(sub, "evaluate models")
    report_cli.register(sub, "compare runs")
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PopalignError as exc:
        print(f"popalign: error: {exc}", file=sys.stderr)
        return 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A reference model, two "trained" DPO runs pointing at it and a reward model, saved as popalign does."""
    from popalign.modeling.tiny import tiny_causal_lm, tiny_reward_model
    from popalign.modeling.tokenizer import build_local_tokenizer

    root = tmp_path_factory.mktemp("eval_cli")
    tokenizer = build_local_tokenizer()
    tokenize = {"max_length": 96, "max_prompt_length": 48}
    folders = {}
    for name, seed, method in (
        ("ref", 0, None),
        ("dpo", 1, "dpo"),
        ("pop", 2, "dpo-pop-random"),
        ("rm", 3, "bt"),
    ):
        folder = root / name
        build = tiny_reward_model if name == "rm" else tiny_causal_lm
        build(tokenizer, seed=seed, **SIZE).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if method:
            objective = "reward-model" if name == "rm" else "policy"
            config = {"method": method, "objective": objective, "tokenize": tokenize, "loss": {"beta": 0.2}}
            config["model"] = {"name_or_path": str(root / "ref")}
            (folder / "config.yaml").write_text(yaml.safe_dump(config))
        folders[name] = folder
    folders["root"] = root
    return folders


def test_eval_and_report_end_to_end(runs, ultrafeedback_dir, capsys):
    data = str(ultrafeedback_dir)
    dpo, pop, rm, root = runs["dpo"], runs["pop"], runs["rm"], runs["root"]
    quick = ["--bootstrap", "100", "--no-progress"]

    assert cli(["eval", "discriminative", str(dpo), str(pop), "--data", data, "--limit", "24", *quick]) == 0
    record = json.loads((dpo / "eval" / "discriminative.json").read_text())
    assert record["model"]["beta"] == 0.2 and record["model"]["reference"] == str(root / "ref")
    rows = [
        json.loads(line)
        for line in (dpo / "eval" / "discriminative_predictions.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 24
    predicted = np.array([r["predicted_margin"] for r in rows])
    np.testing.assert_allclose(predicted, [r["chosen_reward"] - r["rejected_reward"] for r in rows])
    truth = np.array([r["gt_margin"] for r in rows])
    assert record["metrics"]["accuracy"]["value"] == pytest.approx(accuracy(predicted, truth))
    assert record["metrics"]["ties"]["n"] == int((truth == 0).sum())
    assert (pop / "eval" / "cumulative_accuracy.png").is_file()

    assert cli(["eval", "discriminative", str(rm), "--data", data, "--limit", "24", *quick]) == 0
    assert json.loads((rm / "eval" / "discriminative.json").read_text())["model"]["kind"] == "reward-model"

    assert cli(["eval", "rewardbench", str(dpo), "--data", str(FIXTURE), "--no-progress"]) == 0
    scores = json.loads((dpo / "eval" / "rewardbench.json").read_text())["scores"]
    assert scores["n"] == 20 and scores["subsets"]["hep-python"]["n"] == 3
    assert set(scores["sections"]) == {"Chat", "Chat Hard", "Safety", "Reasoning", "Prior Sets"}
    assert 0.0 <= scores["overall"] <= 1.0

    gen = ["--data", data, "--limit", "5", "--max-new-tokens", "8", "--seed", "1", "--no-progress"]
    assert cli(["eval", "generate", str(dpo), str(pop), *gen]) == 0
    outputs = json.loads((pop / "eval" / "model_outputs.json").read_text())
    assert len(outputs) == 5 and {o["generator"] for o in outputs} == {"pop"}
    assert set(outputs[0]) == {"instruction", "output", "generator", "id", "kl"}
    # The KL to the run's initial model (its config.yaml), per reply and as a mean with its interval.
    kl = json.loads((pop / "eval" / "generate.json").read_text())["kl"]
    assert kl["reference"] == str(root / "ref") and kl["n"] == 5
    assert kl["value"] == pytest.approx(np.mean([o["kl"] for o in outputs]))
    assert kl["ci_low"] <= kl["value"] <= kl["ci_high"]

    judge = ["--baseline", str(dpo), "--reward-model", str(rm), *quick]
    assert cli(["eval", "judge", str(pop), str(dpo), *judge]) == 0
    itself = json.loads((dpo / "eval" / "judge.json").read_text())["metrics"]
    assert itself["win_rate"]["value"] == 0.5 and itself["median_advantage"]["value"] == 0.0
    judged = json.loads((pop / "eval" / "judge.json").read_text())
    assert judged["baseline"] == "dpo" and judged["metrics"]["n"] == 5

    out = capsys.readouterr().out
    assert "dpo: accuracy" in out and "Overall" in out and "win rate 50.0" in out

    report = root / "report"
    assert cli(["report", str(dpo), str(pop), str(rm), "-o", str(report)]) == 0
    md = (report / "report.md").read_text()
    dpo_rows = [line for line in md.splitlines() if line.startswith("| dpo |")]
    assert len(dpo_rows) == 4  # discriminative, RewardBench, generations (with the KL) and judged tables
    assert "## Generations" in md and "KL(pi || pi_ref)" in md
    assert "| rm | bt |" in md
    assert "data:image/png;base64," in (report / "report.html").read_text()


def _predictions(folder: Path) -> list[dict]:
    lines = (folder / "discriminative_predictions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_reference_cache_runs_the_reference_once_for_several_policies(
    runs, ultrafeedback_dir, tmp_path, monkeypatch
):
    import popalign.modeling.reference as reference

    data, dpo, pop = str(ultrafeedback_dir), str(runs["dpo"]), str(runs["pop"])
    common = ["--data", data, "--limit", "12", "--bootstrap", "10", "--no-progress"]
    cache = ["--reference-cache-dir", str(tmp_path / "cache")]
    assert cli(["eval", "discriminative", dpo, *common, "--out", str(tmp_path / "plain")]) == 0
    assert cli(["eval", "discriminative", dpo, *common, *cache, "--out", str(tmp_path / "first")]) == 0
    assert len(list((tmp_path / "cache" / "reference").glob("*.npz"))) == 1
    # A cached reference gives the same rewards as one computed in place.
    plain, first = _predictions(tmp_path / "plain"), _predictions(tmp_path / "first")
    np.testing.assert_allclose(
        [r["predicted_margin"] for r in first], [r["predicted_margin"] for r in plain], rtol=0, atol=1e-9
    )

    def no_reference_forward(*args, **kwargs):
        raise AssertionError("the reference ran although its log-probs were cached")

    monkeypatch.setattr(reference, "_distributed_compute", no_reference_forward)
    # The second policy of the same reference reads the cache: its reference never runs.
    assert cli(["eval", "discriminative", pop, *common, *cache, "--out", str(tmp_path / "second")]) == 0
    assert len(_predictions(tmp_path / "second")) == 12
    assert len(list((tmp_path / "cache" / "reference").glob("*.npz"))) == 1


def test_user_errors_exit_2(runs, ultrafeedback_dir, capsys):
    data = str(ultrafeedback_dir)
    assert cli(["eval", "discriminative", "--data", data]) == 2
    assert "at least one model" in capsys.readouterr().err
    assert cli(["eval", "discriminative", str(runs["ref"]), "--data", data, "--no-progress"]) == 2
    assert "--reference" in capsys.readouterr().err
    assert cli(["eval", "judge", str(runs["dpo"]), "--baseline", str(runs["root"]), "--score-fn", "x:y"]) == 2
    with pytest.raises(SystemExit) as exc:
        cli(["eval", "judge", str(runs["dpo"]), "--baseline", str(runs["dpo"])])  # no judge given
    assert exc.value.code == 2


def test_help_has_examples_and_imports_no_torch(capsys):
    with pytest.raises(SystemExit) as exc:
        cli(["eval", "discriminative", "--help"])
    assert exc.value.code == 0 and "examples:" in capsys.readouterr().out
    code = "import sys, popalign.cli.eval, popalign.cli.report; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    )
