"""Shared fixtures. Tests are offline: nothing here (or anywhere in tests) reaches a network."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests import _hermetic

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "ultrafeedback-binarized-sample"

# Before any test imports huggingface_hub or transformers, which read the cache variables at import time.
_USER_CACHES = _hermetic.user_cache_locations(REPO_ROOT)
_USER_CACHES_BEFORE = _hermetic.snapshot(_USER_CACHES)
SANDBOX = _hermetic.make_sandbox()


@pytest.fixture(autouse=True)
def _hermetic_working_folder(tmp_path_factory, monkeypatch):
    """Each test starts in an empty folder: relative defaults (``.cache/popalign``, ``runs/``) land there."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when any test wrote to the user's own caches (the sandbox should have taken it)."""
    changed = _hermetic.changes(_USER_CACHES_BEFORE, _hermetic.snapshot(_USER_CACHES))
    shutil.rmtree(SANDBOX, ignore_errors=True)
    if changed:
        shown = "\n  ".join(changed[:20])
        print(f"\nThe test suite changed the user's own caches ({len(changed)} paths), e.g.:\n  {shown}")
        session.exitstatus = 1


@pytest.fixture(scope="session")
def ultrafeedback_dir() -> Path:
    """The real UltraFeedback-binarized sample (1,000 train / 200 test rows) beside the project."""
    if not (SHARED_DATA / "train.jsonl").exists():
        pytest.skip("the shared UltraFeedback sample is not beside the project")
    return SHARED_DATA
