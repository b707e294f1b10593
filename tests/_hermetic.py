"""The test suite's sandbox: every cache a test could read or write points into one temporary folder.

A user who followed the README has a prepared SmolLM2 in ``~/.cache/popalign``, models in the Hugging Face
cache and reference log-probs in ``./.cache/popalign``. Tests must pass or fail the same way with or without
them, so ``tests/conftest.py`` points every cache variable here before anything imports huggingface_hub
(which reads them at import time), runs each test in an empty working folder (the reference cache default
is relative), and checks at the end that the user's own caches are exactly as they were.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Each variable and the folder under the sandbox it points at.
CACHE_VARIABLES = {
    "POPALIGN_CACHE": "popalign",
    "HF_HOME": "huggingface",
    "HF_HUB_CACHE": "huggingface/hub",
    "HF_DATASETS_CACHE": "huggingface/datasets",
    "XDG_CACHE_HOME": "xdg",
}


def user_cache_locations(repo_root: Path) -> list[Path]:
    """Where a user's own caches live when no variable redirects them (read before the sandbox is set)."""
    home_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    hf_home = Path(os.environ.get("HF_HOME") or home_cache / "huggingface")
    places = [
        Path(os.environ.get("POPALIGN_CACHE") or Path.home() / ".cache" / "popalign"),
        hf_home,
        Path(os.environ.get("HF_HUB_CACHE") or hf_home / "hub"),
        repo_root / ".cache",
    ]
    return list(dict.fromkeys(p.expanduser() for p in places))


def snapshot(places: list[Path]) -> dict[str, tuple[int, int]]:
    """(size, mtime in ns) of every file and folder under ``places``: any write shows as a change."""
    seen: dict[str, tuple[int, int]] = {}
    for place in places:
        if not place.exists():
            seen[str(place)] = (-1, -1)
            continue
        for folder, dirs, files in os.walk(place):
            for name in [*dirs, *files]:
                path = Path(folder, name)
                try:
                    st = path.lstat()
                except OSError:
                    continue
                seen[str(path)] = (st.st_size, st.st_mtime_ns)
            seen[folder] = (0, Path(folder).lstat().st_mtime_ns)
    return seen


def changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """Paths added, removed or modified between two snapshots, sorted."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def make_sandbox() -> Path:
    """A fresh temporary folder with every cache variable pointing inside it (set in ``os.environ``)."""
    root = Path(tempfile.mkdtemp(prefix="popalign-tests-"))
    for var, sub in CACHE_VARIABLES.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(root / sub)
    return root
