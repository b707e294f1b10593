"""The run folder's life: which checkpoint a run resumes from, a finished run left alone, SFT's labels."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from popalign.errors import PopalignError
from popalign.train.checkpoints import latest_checkpoint, resolve_resume
from popalign.train.recipe import finished_run
from popalign.train.sft import IGNORE_INDEX, SFTCollator


def checkpoint(root, step: int, complete: bool = True):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "trainer_state.json").write_text("{}")
    return folder


def test_the_newest_complete_checkpoint_is_resumed(tmp_path):
    assert latest_checkpoint(tmp_path / "absent") is None and latest_checkpoint(tmp_path) is None
    checkpoint(tmp_path, 4)
    newest = checkpoint(tmp_path, 12)
    checkpoint(tmp_path, 16, complete=False)  # a save cut short by a kill
    (tmp_path / "checkpoint-notanumber").mkdir()
    checkpoint(tmp_path, 8)
    assert latest_checkpoint(tmp_path) == str(newest)  # 12 beats 8 as a number, 16 is incomplete
    assert resolve_resume("auto", tmp_path) == str(newest)
    for never in ("never", "", "no", "false"):
        assert resolve_resume(never, tmp_path) is None
    assert resolve_resume(str(tmp_path / "checkpoint-4"), tmp_path) == str(tmp_path / "checkpoint-4")
    with pytest.raises(PopalignError, match="checkpoint-16: not a complete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoint-16"), tmp_path)


def test_a_finished_run_is_left_alone_only_under_resume_auto(tmp_path, capsys):
    cfg = SimpleNamespace(output_dir=str(tmp_path), resume="auto")
    assert finished_run(cfg) is None  # nothing trained yet
    (tmp_path / "train_results.json").write_text(json.dumps({"train_loss": 0.25}))
    summary = finished_run(cfg)
    assert summary == {
        "output_dir": str(tmp_path),
        "model": str(tmp_path),
        "metrics": {"train_loss": 0.25},
        "resumed_from": None,
        "finished": True,
    }
    assert "has finished already" in capsys.readouterr().out
    assert finished_run(SimpleNamespace(output_dir=str(tmp_path), resume="never")) is None


def test_sft_labels_only_the_response_tokens():
    collate = SFTCollator(prompt_ids=[[1, 2], [3]], response_ids=[[4], [5, 6, 7]], pad_token_id=0)
    batch = collate([0, 1])
    assert batch["input_ids"].tolist() == [[1, 2, 4, 0], [3, 5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    x = IGNORE_INDEX
    assert batch["labels"].tolist() == [[x, x, 4, x], [x, 5, 6, 7]]  # prompt and padding never scored
