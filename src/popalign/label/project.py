"""A labelling project's settings: fixed when the project is first served, checked on every later serve.

Progress, targets and the sampling state all depend on them, so a later ``serve`` that asks for a
different strategy, ``k`` or dataset is refused rather than silently mixing two designs in one project.
A database holds several projects by name (``--project``, default ``default``), each with its own
preferences, settings and annotators.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from popalign.errors import PopalignError
from popalign.label.db import write_txn

STRATEGIES = ("random", "iterative")
DEFAULT_PROJECT = "default"
# The settings fixed per project, as status and the admin page list them.
SETTING_KEYS = (
    "strategy", "k", "target", "min_gap", "max_candidates", "redundancy", "lease_s", "seed", "gold_fraction"
)  # fmt: skip
# Annotator and project names: safe in URLs, file names and log lines.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class LabelSettings:
    """What to serve and how. ``None`` for a field means "as stored, or the default for a new project".

    * ``strategy`` — ``random``: uniformly random distinct unordered pairs; ``iterative``: each
      preference (the anchor) against candidates until ``k`` weaker ones are found (Section 4.1).
    * ``k`` — PoP labels per preference; the target is ``round(k * N)`` unless ``target`` is given.
    * ``min_gap`` — with scored data, pairs whose score margins differ by less are not served
      (random), and an anchor's candidates are those at least this much weaker (iterative); ``0``
      ignores the scores. Without scores, candidates are uniformly random.
    * ``max_candidates`` — iterative: an anchor is finished after this many judged candidates even if
      fewer than ``k`` were weaker (default ``4 * k``).
    * ``redundancy`` — annotators per pair; above 1, agreement is reported and export takes the
      majority.
    * ``lease_s`` — seconds a served pair stays reserved for its annotator before others may get it
      (the open label page renews it).
    * ``gold_fraction`` — share of served pairs that are gold pairs (scored data only): pairs whose
      answer the scores make plain, mixed in unannounced, to measure each annotator's accuracy.
    """

    strategy: str | None = None
    k: float | None = None
    target: int | None = None
    min_gap: float | None = None
    max_candidates: int | None = None
    redundancy: int | None = None
    lease_s: float | None = None
    seed: int | None = None
    gold_fraction: float | None = None

    def validate(self) -> None:
        if self.strategy is not None and self.strategy not in STRATEGIES:
            raise PopalignError(f"strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        checks = (
            ("k", self.k, lambda v: v > 0, "must be positive"),
            ("target", self.target, lambda v: v >= 1, "must be at least 1"),
            ("min_gap", self.min_gap, lambda v: v >= 0, "must be 0 or more"),
            ("max_candidates", self.max_candidates, lambda v: v >= 1, "must be at least 1"),
            ("redundancy", self.redundancy, lambda v: 1 <= v <= 50, "must be between 1 and 50"),
            ("lease_s", self.lease_s, lambda v: v >= 1, "must be at least 1 second"),
            ("gold_fraction", self.gold_fraction, lambda v: 0 <= v < 1, "must be at least 0 and below 1"),
        )
        for name, value, ok, why in checks:
            if value is not None and not ok(value):
                raise PopalignError(f"{name} {why} (got {value})")
        if self.strategy == "iterative" and self.k is not None and float(self.k) != int(self.k):
            raise PopalignError(f"iterative sampling needs a whole k (got {self.k})")


@dataclass(frozen=True)
class Project:
    """The settings in force, all filled in, plus the dataset they were fixed for."""

    strategy: str
    k: float
    target: int
    min_gap: float
    max_candidates: int
    redundancy: int
    lease_s: float
    seed: int
    prefs: str
    fingerprint: str
    preferences: int
    created_at: float
    gold_fraction: float = 0.0
    name: str = DEFAULT_PROJECT
    project_id: int = 1

    @property
    def k_int(self) -> int:
        return int(self.k)

    def to_json(self) -> str:
        """The stored settings (the name and id live in their own columns)."""
        out = asdict(self)
        del out["name"], out["project_id"]
        return json.dumps(out, sort_keys=True)


def _defaults(asked: LabelSettings, n: int) -> dict[str, Any]:
    strategy = asked.strategy or "random"
    k = asked.k if asked.k is not None else (1.0 if strategy == "random" else 2.0)
    return {
        "strategy": strategy,
        "k": float(k),
        "target": asked.target if asked.target is not None else max(1, round(k * n)),
        "min_gap": 1.0 if asked.min_gap is None else float(asked.min_gap),
        "max_candidates": asked.max_candidates or max(1, int(4 * k)),
        "redundancy": asked.redundancy or 1,
        "lease_s": float(asked.lease_s or 600.0),
        "seed": 0 if asked.seed is None else asked.seed,
        "gold_fraction": float(asked.gold_fraction or 0.0),
    }


def check_name(name: str, what: str = "project name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise PopalignError(
            f"{what} {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def project_row(conn: Any, tables: Any, name: str, create: bool = False) -> Any:
    """The ``projects`` row named ``name`` (created, without settings, if ``create``), or ``None``."""
    import sqlalchemy as sa

    check_name(name)
    t = tables["projects"]
    query = sa.select(t.c.project_id, t.c.settings).where(t.c.name == name)
    row = conn.execute(query).first()
    if row is None and create:
        conn.execute(sa.insert(t).values(name=name, settings=None, created_at=time.time()))
        row = conn.execute(query).first()
    return row


def list_projects(engine: Any) -> list[str]:
    import sqlalchemy as sa

    t = engine.popalign_tables["projects"]
    with engine.connect() as conn:
        return [r.name for r in conn.execute(sa.select(t.c.name).order_by(t.c.project_id))]


def _from_row(row: Any, name: str) -> Project:
    return Project(**json.loads(row.settings), name=name, project_id=int(row.project_id))


def load_project(engine: Any, name: str = DEFAULT_PROJECT) -> Project | None:
    """The stored project ``name``, or ``None`` for one that was never served."""
    with engine.connect() as conn:
        row = project_row(conn, engine.popalign_tables, name)
    return None if row is None or row.settings is None else _from_row(row, name)


def open_project(
    engine: Any,
    asked: LabelSettings,
    prefs: str,
    fingerprint: str,
    n: int,
    name: str = DEFAULT_PROJECT,
) -> Project:
    """Fix the settings on first use; later, check that ``asked`` and the dataset agree with them."""
    import sqlalchemy as sa

    asked.validate()
    check_name(name)
    table = engine.popalign_tables["projects"]
    with write_txn(engine) as conn:
        row = project_row(conn, engine.popalign_tables, name, create=True)
        if row.settings is None:
            project = Project(
                **_defaults(asked, n),
                prefs=prefs,
                fingerprint=fingerprint,
                preferences=n,
                created_at=time.time(),
                name=name,
                project_id=int(row.project_id),
            )
            _check_strategy_fits(project)
            conn.execute(
                sa.update(table)
                .where(table.c.project_id == row.project_id)
                .values(settings=project.to_json())
            )
            return project
    project = _from_row(row, name)
    if project.fingerprint != fingerprint:
        raise PopalignError(
            f"project {name!r} belongs to a different preference dataset ({project.prefs}, "
            f"{project.preferences} preferences, fingerprint {project.fingerprint}); the one given has "
            f"fingerprint {fingerprint}. Use a new --project (or --db) for new data."
        )
    differ = [
        f"{f.name}={getattr(asked, f.name)} (stored: {getattr(project, f.name)})"
        for f in fields(asked)
        if getattr(asked, f.name) is not None and _differs(getattr(asked, f.name), getattr(project, f.name))
    ]
    if differ:
        raise PopalignError(
            f"project {name!r} was set up with other settings: "
            + ", ".join(differ)
            + ". Leave the option out to keep the stored value, or use a new --project."
        )
    return project


def _differs(asked: Any, stored: Any) -> bool:
    if isinstance(stored, float):
        return abs(float(asked) - stored) > 1e-12
    return asked != stored


def _check_strategy_fits(project: Project) -> None:
    if project.preferences < 2:
        raise PopalignError("labelling needs at least two preferences")
    if project.strategy == "iterative" and project.k != int(project.k):
        raise PopalignError(f"iterative sampling needs a whole k (got {project.k})")
