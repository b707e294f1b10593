"""What an evaluation kind is: its results file, its section in reports and on the card.

A kind (discriminative, rewardbench, generate, judge, or one of your own) is one :class:`EvalKind`,
registered once in :mod:`popalign.eval.kinds`; reports, the model card and ``load_run`` read that registry
instead of keeping their own lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from popalign.document import Table


@dataclass
class RunResults:
    """Everything one evaluation folder holds; missing parts are None. ``results``: kind name -> its JSON."""

    name: str
    eval_dir: Path
    method: str | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    predicted: np.ndarray | None = None
    truth: np.ndarray | None = None
    advantages: np.ndarray | None = None


@dataclass(frozen=True)
class EvalKind:
    """One kind of evaluation.

    ``file``: the JSON record it writes in an evaluation folder (its presence marks a folder as holding
    results). ``title`` and ``note``: its section in ``eval.md``, ``popalign report`` and the card.
    ``table``: the section's table over several runs, or None when no run has this kind's results.
    ``detail``: an extra table shown for a single run (``eval.md``), or None. ``on_card``: whether the
    model card shows the section. ``records_method``: whether its record's ``model`` names the run's method.
    """

    name: str
    file: str
    title: str
    note: str
    table: Callable[[list[RunResults]], Table | None]
    detail: Callable[[RunResults], tuple[str, Table] | None] | None = None
    on_card: bool = True
    records_method: bool = False
