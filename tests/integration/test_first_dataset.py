"""The "Your first dataset" walkthrough of docs/data_formats.md, run command by command as written."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

from popalign.cli.main import main
from tests._cards import parse_card

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "data_formats.md"


def walkthrough_commands() -> list[str]:
    """The ``popalign`` lines of the ```bash blocks in the "Your first dataset" section, in order."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Your first dataset", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    lines = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line.startswith("popalign ")]


def test_the_walkthrough_covers_every_step():
    steps = [cmd.split()[1:3] for cmd in walkthrough_commands()]
    assert [s[0] for s in steps] == ["data", "data", "pop", "train", "eval", "report", "push"]
    assert steps[0][1] == "inspect" and steps[1][1] == "split"


def test_first_dataset_walkthrough_runs_as_documented(tmp_path, monkeypatch, capsys):
    # The commands use paths relative to the project folder: give them the files they name.
    for rel in ("tests/fixtures/data/graded_pairs.jsonl", "configs/tiny/dpo_pop.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    monkeypatch.chdir(tmp_path)
    outputs = []
    for cmd in walkthrough_commands():
        argv = shlex.split(cmd)[1:]
        if argv[0] == "train":
            argv += ["training.progress=false"]
        assert main(argv) == 0, cmd
        outputs.append(capsys.readouterr().out)

    inspect, split, build, train, evaluate, report, push = outputs
    assert "skipped 12: tie (tie_policy=skip)" in inspect
    assert "split 60 preferences by prompt with seed 0" in split
    info = json.loads(Path("runs/first/data/split.json").read_text())
    assert info["rows"]["train"] + info["rows"]["test"] == 60
    assert "PoP pairs:" in build and Path("runs/first/pop/pop_pairs.parquet").is_file()
    assert "model saved to runs/first/dpo-pop" in train
    disc = json.loads(Path("runs/first/dpo-pop/eval/discriminative.json").read_text())
    assert disc["data"]["rows"] == info["rows"]["test"]
    assert disc["data"]["training_overlap"]["rows"] == 0 and "WARNING" not in evaluate
    assert Path("runs/first/report/report.html").is_file()
    front, body = parse_card("runs/first/dpo-pop/README.md")
    assert front["tags"] == ["popalign", "dpo", "dpo-pop-iter"] and front["library_name"] == "transformers"
    assert "## Evaluation" in body and disc["data"]["fingerprint"] in body
    listed = [line.split()[0] for line in push.splitlines()[1:]]
    assert "README.md" in listed and "model.safetensors" in listed and "tokenizer.json" in listed
    assert not any(name.startswith(("checkpoint", "train_rows", "pop_pairs")) for name in listed)


def test_eval_warns_loudly_when_it_evaluates_training_rows(tmp_path, monkeypatch, capsys):
    """The walkthrough's model evaluated on its own training split: the overlap is shown and recorded."""
    rel = "tests/fixtures/data/graded_pairs.jsonl"
    (tmp_path / rel).parent.mkdir(parents=True)
    shutil.copy(REPO / rel, tmp_path / rel)
    shutil.copytree(REPO / "configs" / "tiny", tmp_path / "configs" / "tiny")
    monkeypatch.chdir(tmp_path)
    base = ["data.limit=null", "training.max_steps=1", "training.progress=false", "output_dir=runs/leak"]
    assert (
        main(
            ["train", "--config", "configs/tiny/dpo.yaml", f"data.path={rel}", "--tie-policy", "skip", *base]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            ["eval", "discriminative", "runs/leak", "--data", rel, "--tie-policy", "skip", "--bootstrap", "0"]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "WARNING: runs/leak was trained on 60 of the 60 evaluated rows (100%)" in err
    disc = json.loads(Path("runs/leak/eval/discriminative.json").read_text())
    assert disc["data"]["training_overlap"]["rows"] == 60


def test_train_prints_truncation_and_shortfall_and_stops_on_zero_pairs(tmp_path, capsys):
    data = str(REPO / "tests/fixtures/data/graded_pairs.jsonl")
    base = [
        "--config",
        str(REPO / "configs/tiny/dpo_pop.yaml"),
        f"data.path={data}",
        "--tie-policy",
        "skip",
        "data.limit=null",
        "training.max_steps=1",
        "training.progress=false",
        f"reference.cache_dir={tmp_path / 'cache'}",
    ]
    argv = ["train", *base, f"output_dir={tmp_path / 'a'}", "tokenize.max_length=20"]
    argv += ["tokenize.max_prompt_length=8", "pop.k=8", "pop.min_gap=4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"warning: \d+ of 60 pairs \(\d+%\) were truncated at tokenize.max_length=20", out)
    assert "short of the target k x N = 480" in out and "lower pop.min_gap or pop.k" in out
    assert "pop.fill_shortfall=true" in out and "--min-gap" not in out
    assert main(["train", *base, f"output_dir={tmp_path / 'b'}", "pop.min_gap=100"]) == 2
    err = capsys.readouterr().err
    assert "no PoP pairs" in err and "lower pop.min_gap" in err
    assert not (tmp_path / "b" / "pop_pairs.parquet").exists()
