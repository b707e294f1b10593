"""Fixtures shared by the FSDP and DeepSpeed tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def one(tmp_path_factory, ultrafeedback_dir) -> Path:
    """The one-process ``dpo-pop-random`` run the two-process runs are compared with."""
    from tests.integration._group_runs import single

    return single(tmp_path_factory.mktemp("single"), ultrafeedback_dir)
