"""Finding the checkpoint to resume from."""

from __future__ import annotations

import re
from pathlib import Path

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def latest_checkpoint(output_dir: str | Path) -> str | None:
    """The newest *complete* checkpoint in ``output_dir``, or None.

    The Trainer writes ``trainer_state.json`` last, so a folder without it is a save that was cut short
    (the process was killed) and is skipped rather than resumed from.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return None
    found = []
    for child in root.iterdir():
        m = _CHECKPOINT.match(child.name)
        if m and child.is_dir() and (child / "trainer_state.json").exists():
            found.append((int(m.group(1)), child))
    return str(max(found)[1]) if found else None


def resolve_resume(resume: str, output_dir: str | Path) -> str | None:
    """``auto`` -> newest complete checkpoint (or None); ``never`` -> None; else the given path."""
    if resume in ("", "never", "no", "false"):
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / "trainer_state.json").exists():
        from popalign.errors import PopalignError

        raise PopalignError(f"{resume}: not a complete checkpoint (no trainer_state.json)")
    return str(path)
