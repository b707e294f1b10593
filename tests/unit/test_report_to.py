"""training.report_to: a logger whose package is missing is one clear error before training."""

from __future__ import annotations

import importlib.util

import pytest

from popalign.errors import PopalignError
from popalign.train.config import TrainingSpec
from popalign.train.recipe import training_arguments


def test_wandb_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(
        PopalignError, match=r"training.report_to=\[wandb\] needs the wandb package: pip install"
    ):
        training_arguments(TrainingSpec(report_to=["wandb"]), tmp_path)


def test_none_and_tensorboard_need_no_check(tmp_path):
    assert training_arguments(TrainingSpec(report_to=["none"]), tmp_path).report_to == []
    assert training_arguments(TrainingSpec(report_to=["tensorboard"]), tmp_path).report_to == ["tensorboard"]
