"""The suite runs in its own sandbox: the user's caches are neither read nor written (tests/_hermetic.py)."""

from __future__ import annotations

import os
from pathlib import Path

from popalign.modeling.load import SMOLLM2, cache_root, smollm2_dir
from popalign.train.config import ReferenceSpec
from tests import _hermetic
from tests.conftest import REPO_ROOT, SANDBOX


def test_every_cache_variable_points_into_the_sandbox():
    for var, sub in _hermetic.CACHE_VARIABLES.items():
        assert Path(os.environ[var]) == SANDBOX / sub, var
    assert cache_root() == SANDBOX / "popalign"
    assert smollm2_dir() == SANDBOX / "popalign" / "models" / SMOLLM2


def test_hugging_face_libraries_see_the_sandbox():
    import datasets.config
    import huggingface_hub.constants as hub

    assert Path(hub.HF_HUB_CACHE).is_relative_to(SANDBOX)
    assert Path(hub.HF_HOME).is_relative_to(SANDBOX)
    assert Path(datasets.config.HF_DATASETS_CACHE).is_relative_to(SANDBOX)


def test_relative_defaults_land_in_an_empty_working_folder():
    cwd = Path.cwd()
    assert not cwd.is_relative_to(REPO_ROOT)
    assert not any(cwd.iterdir())
    assert (cwd / ReferenceSpec().cache_dir).resolve().is_relative_to(cwd)


def test_the_guard_sees_a_write(tmp_path):
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / "a.bin").write_bytes(b"1")
    before = _hermetic.snapshot([cache, tmp_path / "absent"])
    assert _hermetic.changes(before, _hermetic.snapshot([cache, tmp_path / "absent"])) == []
    (cache / "models" / "a.bin").write_bytes(b"22")
    (cache / "reference").mkdir()
    (tmp_path / "absent").mkdir()
    changed = _hermetic.changes(before, _hermetic.snapshot([cache, tmp_path / "absent"]))
    assert str(cache / "models" / "a.bin") in changed
    assert str(cache / "reference") in changed
    assert str(tmp_path / "absent") in changed
