"""Model cards and ``popalign push``: the card parses, --dry-run lists the upload, no network fails cleanly.

Nothing here reaches the network: offline mode, or an endpoint on a closed local port.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from popalign.cli.main import main
from popalign.config import load_config, save_config
from popalign.data.load import load_preferences
from popalign.data.overlap import record_training_rows
from popalign.hub.card import write_model_card
from popalign.io import atomic_write_json
from popalign.train.config import SFTConfig, TrainConfig
from tests._cards import parse_card

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
MODEL_FILES = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
]
LEFT_BEHIND = ["run_info.json", "pop_pairs.parquet", "trainer_state.json", "events.out.tfevents.1"]


def fake_run(tmp_path: Path, *overrides: str, cls=TrainConfig) -> Path:
    run = tmp_path / "my-run"
    data = f"data.path={FIXTURES / 'graded_pairs.jsonl'}"
    cfg = load_config(cls, None, [f"output_dir={run}", data, *overrides])
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    table, _ = load_preferences(FIXTURES / "graded_pairs.jsonl", tie_policy="skip")
    record_training_rows(table, run)
    for name in MODEL_FILES + LEFT_BEHIND:
        (run / name).write_text("{}")
    # train_rows.json (above) and train_results.json stay behind too.
    atomic_write_json(run / "train_results.json", {"train_loss": 0.5, "epoch": 1.0})
    (run / "checkpoint-4").mkdir()
    (run / "checkpoint-4" / "model.safetensors").write_text("x")
    return run


def test_card_front_matter_and_body(tmp_path):
    run = fake_run(
        tmp_path,
        "method=dpo-pop-iter",
        "model.name_or_path=HuggingFaceTB/SmolLM2-135M-Instruct",
        "data.path=hub:owner/graded-prefs",
        "pop.k=4",
    )
    front, body = parse_card(write_model_card(run))
    assert front == {
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "datasets": ["owner/graded-prefs"],
        "library_name": "transformers",
        "tags": ["popalign", "dpo", "dpo-pop-iter"],
    }
    assert "`dpo-pop-iter`" in body and "k=4.0" in body and "beta=0.1" in body
    table, _ = load_preferences(FIXTURES / "graded_pairs.jsonl", tie_policy="skip")
    assert table.fingerprint() in body and "preferences: 60" in body
    assert "train_loss: 0.5" in body and "transformers " in body and "Preference over Preferences" in body
    assert "## Evaluation" not in body  # not evaluated yet


def test_card_of_local_and_sft_runs_has_no_hub_ids(tmp_path):
    run = fake_run(tmp_path, cls=SFTConfig)
    front, body = parse_card(write_model_card(run))
    assert front == {"library_name": "transformers", "tags": ["popalign", "sft"]}
    assert "random:tiny-llama" in body and "not on the Hub" in body


def test_dry_run_lists_exactly_the_files_to_upload(tmp_path, capsys):
    run = fake_run(tmp_path, "method=dpo")
    assert main(["push", str(run), "--repo", "me/model", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"would upload 8 files from {run} to me/model:"
    listed = [line.split()[0] for line in lines[1:]]
    assert listed == sorted(["README.md", "config.yaml", *MODEL_FILES])  # the card was written for it
    assert (run / "README.md").is_file()


def test_push_refuses_a_folder_without_a_model(tmp_path, capsys):
    assert main(["push", str(tmp_path), "--repo", "me/model", "--dry-run"]) == 2
    assert "no final model here" in capsys.readouterr().err


def test_offline_push_fails_with_one_line(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    run = fake_run(tmp_path, "method=dpo")
    assert main(["push", str(run), "--repo", "me/model"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "offline mode is on" in err and "nothing was uploaded" in err


def test_unreachable_hub_fails_with_one_line(tmp_path):
    run = fake_run(tmp_path, "method=dpo")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": "http://127.0.0.1:9",  # the discard port: nothing listens, the connection is refused
        "HF_TOKEN": "hf_not_a_real_token",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"),
    }
    out = subprocess.run(
        [sys.executable, "-m", "popalign.cli.main", "push", str(run), "--repo", "me/model"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("popalign: error: cannot upload to the Hugging Face Hub")
    assert "nothing was uploaded" in lines[0]


def test_card_only_rewrites_the_card_and_repo_is_needed_otherwise(tmp_path, capsys):
    run = fake_run(tmp_path, "method=dpo-sbt")
    assert main(["push", str(run), "--card-only"]) == 0
    assert parse_card(run / "README.md")[0]["tags"] == ["popalign", "dpo", "dpo-sbt"]
    assert main(["push", str(run), "--dry-run"]) == 2
    assert "--repo OWNER/NAME" in capsys.readouterr().err
