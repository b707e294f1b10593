"""Shared fixtures. Tests are offline: nothing here (or anywhere in tests) reaches a network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "ultrafeedback-binarized-sample"


@pytest.fixture(scope="session")
def ultrafeedback_dir() -> Path:
    """The real UltraFeedback-binarized sample (1,000 train / 200 test rows) beside the project."""
    if not (SHARED_DATA / "train.jsonl").exists():
        pytest.skip("the shared UltraFeedback sample is not beside the project")
    return SHARED_DATA
