"""Cut one preference file into train and test, grouped so that a prompt never lands on both sides.

UltraFeedback-style data holds several preferences per prompt; splitting rows at random would put the
same prompt in training and test and inflate test accuracy. Rows are grouped (by prompt, or each row
alone), the groups shuffled with a seeded generator, and whole groups go to test until it holds at least
``round(test_fraction * N)`` rows (it overshoots by less than one group). The same data, fraction and
seed give the same split on any machine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from popalign.data.schema import PreferenceTable, Prompt
from popalign.errors import PopalignError
from popalign.io import atomic_write_json

GROUPINGS = ("prompt", "row")
SIDECAR = "split.json"


def prompt_key(prompt: Prompt) -> str:
    """A short hash of a prompt (text or message list), equal for equal prompts."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def assign_folds(prompts: list[Prompt], folds: int, seed: int, source: str = "data") -> np.ndarray:
    """``(N,)`` fold of each row: distinct prompts shuffled by ``seed`` and dealt round-robin, rows follow
    their prompt (one prompt never sits in two folds; the folds' prompt counts differ by at most one).

    Raises:
        PopalignError: when there are fewer distinct prompts than folds (naming ``source``).
    """
    from popalign.errors import PopalignError

    keys = [prompt_key(p) for p in prompts]
    distinct = sorted(set(keys))
    if len(distinct) < folds:
        raise PopalignError(f"{source}: {len(distinct)} distinct prompts cannot fill {folds} folds")
    order = np.random.default_rng([int(seed), 0]).permutation(len(distinct))
    fold_of_key = {distinct[j]: rank % folds for rank, j in enumerate(order)}
    return np.asarray([fold_of_key[k] for k in keys])


@dataclass
class Split:
    """Row indices of each side, sorted (file order is kept), and what was done."""

    train: np.ndarray
    test: np.ndarray
    info: dict[str, Any]


def split_table(table: PreferenceTable, test_fraction: float, by: str = "prompt", seed: int = 0) -> Split:
    """Grouped, seeded train/test split of ``table``; raises :class:`PopalignError` for an empty side."""
    if not 0.0 < test_fraction < 1.0:
        raise PopalignError(f"--test-fraction must lie strictly between 0 and 1, got {test_fraction}")
    if by not in GROUPINGS:
        raise PopalignError(f"--by must be one of {', '.join(GROUPINGS)}, got {by!r}")
    n = len(table)
    keys = [prompt_key(p) for p in table.prompts] if by == "prompt" else [str(i) for i in range(n)]
    _, group = np.unique(np.asarray(keys), return_inverse=True)
    n_groups = int(group.max()) + 1 if n else 0
    sizes = np.bincount(group, minlength=n_groups)
    order = np.random.default_rng(seed).permutation(n_groups)
    target = max(1, round(test_fraction * n))
    # The first groups of the shuffled order whose running total reaches the target go to test.
    taken = np.searchsorted(np.cumsum(sizes[order]), target) + 1
    test_groups = np.zeros(n_groups, dtype=bool)
    test_groups[order[:taken]] = True
    is_test = test_groups[group]
    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    if train.size == 0:
        raise PopalignError(
            f"{table.source}: the test side took every row ({n_groups} {by} groups for {n} rows); "
            "lower --test-fraction"
        )
    info = {
        "source": table.source,
        "fingerprint": table.fingerprint(),
        "test_fraction": test_fraction,
        "by": by,
        "seed": seed,
        "rows": {"train": int(train.size), "test": int(test.size)},
        "groups": {"train": int(n_groups - taken), "test": int(taken)},
    }
    return Split(train, test, info)


def write_split(table: PreferenceTable, split: Split, out_dir: str | Path) -> dict[str, Any]:
    """``train.jsonl``, ``test.jsonl`` and ``split.json`` (settings, sizes, fingerprints) in ``out_dir``."""
    from popalign.data.load import save_preferences

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = dict(split.info)
    for side in ("train", "test"):
        part = table.select(getattr(split, side))
        save_preferences(part, out / f"{side}.jsonl")
        info.setdefault("fingerprints", {})[side] = part.fingerprint()
    atomic_write_json(out / SIDECAR, info)
    return info


def format_split(info: dict[str, Any], out_dir: str | Path) -> str:
    rows, groups = info["rows"], info["groups"]
    total = rows["train"] + rows["test"]
    return (
        f"split {total:,} preferences by {info['by']} with seed {info['seed']}: "
        f"train {rows['train']:,} rows ({groups['train']:,} groups), "
        f"test {rows['test']:,} rows ({groups['test']:,} groups, {100 * rows['test'] / total:.1f}%)\n"
        f"wrote {Path(out_dir) / 'train.jsonl'}, {Path(out_dir) / 'test.jsonl'} and {SIDECAR}"
    )
