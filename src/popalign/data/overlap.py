"""Which evaluated rows a model was trained on: row and prompt hashes recorded in each run folder.

Training writes ``train_rows.json`` (a short hash of every training row and of every training prompt);
evaluation compares the rows it reads against the file of the model's run and warns when any match, so
test accuracy measured on training rows is never mistaken for generalisation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from popalign.data.schema import PreferenceTable
from popalign.data.split import prompt_key
from popalign.io import atomic_write_json

RECORD = "train_rows.json"


def row_key(prompt: Any, chosen: str, rejected: str) -> str:
    """A short hash of one preference's text (ids are left out: row numbers repeat across files)."""
    text = json.dumps([prompt, chosen, rejected], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _keys(table: PreferenceTable) -> tuple[list[str], list[str]]:
    rows = [row_key(p, c, r) for p, c, r in zip(table.prompts, table.chosen, table.rejected, strict=True)]
    return rows, [prompt_key(p) for p in table.prompts]


def record_training_rows(table: PreferenceTable, run_dir: str | Path) -> None:
    """Write ``train_rows.json`` into ``run_dir``."""
    rows, prompts = _keys(table)
    atomic_write_json(
        Path(run_dir) / RECORD,
        {"source": table.source, "fingerprint": table.fingerprint(), "rows": rows, "prompts": prompts},
    )


def training_overlap(table: PreferenceTable, model_dir: str | Path | None) -> dict[str, Any] | None:
    """``{"run", "rows", "prompts", "of"}``: how many rows (same text) and prompts of ``table`` the run
    in ``model_dir`` trained on; ``None`` when the folder records no training rows."""
    if model_dir is None or not (Path(model_dir) / RECORD).is_file():
        return None
    record = json.loads((Path(model_dir) / RECORD).read_text(encoding="utf-8"))
    seen_rows, seen_prompts = set(record["rows"]), set(record["prompts"])
    rows, prompts = _keys(table)
    return {
        "run": str(model_dir),
        "training_data": record.get("source"),
        "rows": sum(k in seen_rows for k in rows),
        "prompts": sum(k in seen_prompts for k in prompts),
        "of": len(table),
    }


def overlap_warning(overlap: dict[str, Any] | None) -> str | None:
    """The loud warning for an overlap with training, or ``None`` when there is none."""
    if not overlap or not (overlap["rows"] or overlap["prompts"]):
        return None
    n = overlap["of"]
    return (
        f"WARNING: {overlap['run']} was trained on {overlap['rows']:,} of the {n:,} evaluated rows "
        f"({100 * overlap['rows'] / n:.0f}%) and on the prompts of {overlap['prompts']:,} "
        f"({100 * overlap['prompts'] / n:.0f}%; training data {overlap['training_data']}); these results "
        "do not measure generalisation. Evaluate on held-out rows (`popalign data split`)."
    )
