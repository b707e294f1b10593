"""Serving pairs and recording labels, one database transaction per request.

``next_for`` hands an annotator, in order: the pair they already hold (its lease renewed); a pair whose
lease ran out while someone else held it; with ``redundancy > 1`` a pair that still needs more
judges; a new pair from the sampler; or nothing. ``submit`` accepts a label only for an open
assignment of the same annotator and commits before returning, so an accepted label is on disk when
the response leaves. ``undo`` removes the annotator's latest label and gives that pair back to them.

Every one of these runs inside :func:`popalign.label.db.write_txn`, so concurrent annotators are
serialised and the unique constraints in :mod:`popalign.label.db` are never the thing that saves us.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from popalign.errors import PopalignError
from popalign.label.accounts import Annotator
from popalign.label.db import read_txn, write_txn
from popalign.label.project import Project
from popalign.label.sampling import AnchorStats, IterativeSampler, Proposal, RandomSampler

CHOICES = ("a", "b", "same")


class Refused(PopalignError):
    """A request the server turns down; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Served:
    """An assignment to show: pair ``(id_a, id_b)`` for one annotator until ``expires_at``."""

    assignment_id: int
    pair_id: int
    id_a: str
    id_b: str
    slot: int
    expires_at: float


@dataclass(frozen=True)
class Progress:
    """``mine``: this annotator's judgements (``mine_same`` of them "about the same"); ``counted``:
    the project's labels that count toward ``target`` (random: pairs labelled a or b; iterative:
    anchors' wins); ``in_flight``: pairs served and not yet judged."""

    mine: int
    mine_same: int
    counted: int
    target: int
    in_flight: int


@dataclass(frozen=True)
class LastLabel:
    label_id: int
    pair_id: int
    id_a: str
    id_b: str
    choice: str


class _View:
    """The :class:`popalign.label.sampling.PairView` of one transaction, for one annotator."""

    def __init__(self, conn: Any, tables: Any, annotator_id: int, now: float, lease_s: float) -> None:
        self.conn, self.t, self.me, self.now, self.lease_s = conn, tables, annotator_id, now, lease_s

    def pair_exists(self, x: str, y: str) -> bool:
        import sqlalchemy as sa

        lo, hi = (x, y) if x < y else (y, x)
        p = self.t["pairs"]
        return self.conn.execute(sa.select(p.c.pair_id).where(p.c.lo == lo, p.c.hi == hi)).first() is not None

    def used_pairs(self) -> set[tuple[str, str]]:
        import sqlalchemy as sa

        p = self.t["pairs"]
        return {(r.lo, r.hi) for r in self.conn.execute(sa.select(p.c.lo, p.c.hi))}

    def partners(self, pref_id: str) -> set[str]:
        import sqlalchemy as sa

        p = self.t["pairs"]
        rows = self.conn.execute(
            sa.select(p.c.lo, p.c.hi).where(sa.or_(p.c.lo == pref_id, p.c.hi == pref_id))
        )
        return {r.hi if r.lo == pref_id else r.lo for r in rows}

    def counted_and_open(self) -> tuple[int, int]:
        return counted_and_open(self.conn, self.t)

    def anchor_stats(self) -> dict[str, AnchorStats]:
        return anchor_stats(self.conn, self.t)

    def my_last_anchor(self) -> str | None:
        import sqlalchemy as sa

        a, p = self.t["assignments"], self.t["pairs"]
        row = self.conn.execute(
            sa.select(p.c.anchor)
            .join(a, a.c.pair_id == p.c.pair_id)
            .where(a.c.annotator_id == self.me, a.c.slot == 0)
            .order_by(a.c.served_at.desc(), a.c.assignment_id.desc())
            .limit(1)
        ).first()
        return None if row is None else row.anchor

    def anchors_held_by_others(self) -> set[str]:
        import sqlalchemy as sa

        a, p = self.t["assignments"], self.t["pairs"]
        latest = sa.select(sa.func.max(a.c.assignment_id)).where(a.c.slot == 0).group_by(a.c.annotator_id)
        rows = self.conn.execute(
            sa.select(p.c.anchor)
            .join(a, a.c.pair_id == p.c.pair_id)
            .where(
                a.c.assignment_id.in_(latest),
                a.c.annotator_id != self.me,
                a.c.served_at > self.now - self.lease_s,
                p.c.anchor.is_not(None),
            )
        )
        return {r.anchor for r in rows}


def _win_case(p: Any, lab: Any) -> Any:
    import sqlalchemy as sa

    return sa.case(
        (sa.and_(lab.c.choice == "a", p.c.id_a == p.c.anchor), 1),
        (sa.and_(lab.c.choice == "b", p.c.id_b == p.c.anchor), 1),
        else_=0,
    )


def anchor_stats(conn: Any, t: Any) -> dict[str, AnchorStats]:
    """Per anchor (iterative): pairs created, of which open, and wins, all from each pair's first slot."""
    import sqlalchemy as sa

    p, a, lab = t["pairs"], t["assignments"], t["labels"]
    q = (
        sa.select(
            p.c.anchor,
            sa.func.count().label("pairs"),
            sa.func.sum(sa.case((a.c.status == "open", 1), else_=0)).label("open"),
            sa.func.sum(_win_case(p, lab)).label("wins"),
        )
        .select_from(p.join(a, sa.and_(a.c.pair_id == p.c.pair_id, a.c.slot == 0)))
        .outerjoin(lab, lab.c.assignment_id == a.c.assignment_id)
        .where(p.c.anchor.is_not(None))
        .group_by(p.c.anchor)
    )
    return {r.anchor: AnchorStats(int(r.pairs), int(r.open or 0), int(r.wins or 0)) for r in conn.execute(q)}


def counted_and_open(conn: Any, t: Any, iterative: bool = False) -> tuple[int, int]:
    """Labels that count toward the target (first slot; iterative: anchor wins) and open first slots."""
    import sqlalchemy as sa

    p, a, lab = t["pairs"], t["assignments"], t["labels"]
    # Two plain counts: each is one index or table scan, cheap beside the join of everything.
    open_ = conn.execute(
        sa.select(sa.func.count()).select_from(a).where(a.c.status == "open", a.c.slot == 0)
    ).scalar_one()
    first = sa.and_(a.c.assignment_id == lab.c.assignment_id, a.c.slot == 0)
    if iterative:
        q = (
            sa.select(sa.func.coalesce(sa.func.sum(_win_case(p, lab)), 0))
            .select_from(lab.join(a, first).join(p, p.c.pair_id == lab.c.pair_id))
            .where(p.c.anchor.is_not(None))
        )
    else:
        q = sa.select(sa.func.count()).select_from(lab.join(a, first)).where(lab.c.choice.in_(("a", "b")))
    return int(conn.execute(q).scalar_one()), int(open_)


class LabelStore:
    """Assignments and labels of one project; thread-safe (each call is its own transaction)."""

    def __init__(
        self,
        engine: Any,
        project: Project,
        sampler: RandomSampler | IterativeSampler,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine, self.project, self.sampler, self.clock = engine, project, sampler, clock
        self.t = engine.popalign_tables

    def _served(self, conn: Any, assignment_id: int) -> Served:
        import sqlalchemy as sa

        a, p = self.t["assignments"], self.t["pairs"]
        r = conn.execute(
            sa.select(a.c.assignment_id, a.c.pair_id, a.c.slot, a.c.expires_at, p.c.id_a, p.c.id_b)
            .join(p, p.c.pair_id == a.c.pair_id)
            .where(a.c.assignment_id == assignment_id)
        ).one()
        return Served(r.assignment_id, r.pair_id, r.id_a, r.id_b, r.slot, r.expires_at)

    def next_for(self, who: Annotator) -> Served | None:
        """The pair ``who`` should judge now (see the module docstring for the order), or ``None``."""
        import sqlalchemy as sa

        a = self.t["assignments"]
        with write_txn(self.engine) as conn:
            now = self.clock()
            lease = {"served_at": now, "expires_at": now + self.project.lease_s}
            held = conn.execute(
                sa.select(a.c.assignment_id)
                .where(a.c.annotator_id == who.annotator_id, a.c.status == "open")
                .order_by(a.c.served_at.desc(), a.c.assignment_id.desc())
                .limit(1)
            ).first()
            if held is None:
                held = self._reclaim(conn, who, now)
            if held is not None:
                conn.execute(
                    sa.update(a)
                    .where(a.c.assignment_id == held.assignment_id)
                    .values(annotator_id=who.annotator_id, **lease)
                )
                return self._served(conn, held.assignment_id)
            assignment_id = self._another_judge(conn, who, lease) if self.project.redundancy > 1 else None
            if assignment_id is None:
                view = _View(conn, self.t, who.annotator_id, now, self.project.lease_s)
                proposal = self.sampler.propose(view)
                if proposal is None:
                    return None
                assignment_id = self._create(conn, proposal, who, lease)
            return self._served(conn, assignment_id)

    def _reclaim(self, conn: Any, who: Annotator, now: float) -> Any:
        # An abandoned pair (lease over) goes to the next annotator who has not seen it.
        import sqlalchemy as sa

        a = self.t["assignments"]
        mine = sa.alias(a, "mine")
        seen = sa.select(mine.c.assignment_id).where(
            mine.c.pair_id == a.c.pair_id, mine.c.annotator_id == who.annotator_id
        )
        return conn.execute(
            sa.select(a.c.assignment_id)
            .where(a.c.status == "open", a.c.expires_at < now, ~sa.exists(seen))
            .order_by(a.c.expires_at, a.c.assignment_id)
            .limit(1)
        ).first()

    def _another_judge(self, conn: Any, who: Annotator, lease: dict[str, float]) -> int | None:
        # Redundancy: the oldest pair that has fewer than `redundancy` judges and none of them is `who`.
        import sqlalchemy as sa

        a = self.t["assignments"]
        counts = (
            sa.select(a.c.pair_id, sa.func.count().label("n"), sa.func.max(a.c.slot).label("top"))
            .group_by(a.c.pair_id)
            .subquery()
        )
        mine = sa.select(a.c.pair_id).where(a.c.annotator_id == who.annotator_id)
        row = conn.execute(
            sa.select(counts.c.pair_id, counts.c.top)
            .where(counts.c.n < self.project.redundancy, counts.c.pair_id.not_in(mine))
            .order_by(counts.c.pair_id)
            .limit(1)
        ).first()
        if row is None:
            return None
        result = conn.execute(
            sa.insert(a).values(
                pair_id=row.pair_id, slot=row.top + 1, annotator_id=who.annotator_id, status="open", **lease
            )
        )
        return int(result.inserted_primary_key[0])

    def _create(self, conn: Any, proposal: Proposal, who: Annotator, lease: dict[str, float]) -> int:
        import sqlalchemy as sa

        p, a = self.t["pairs"], self.t["assignments"]
        lo, hi = sorted((proposal.id_a, proposal.id_b))
        pair = conn.execute(
            sa.insert(p).values(
                lo=lo,
                hi=hi,
                id_a=proposal.id_a,
                id_b=proposal.id_b,
                anchor=proposal.anchor,
                created_at=lease["served_at"],
            )
        )
        result = conn.execute(
            sa.insert(a).values(
                pair_id=int(pair.inserted_primary_key[0]),
                slot=0,
                annotator_id=who.annotator_id,
                status="open",
                **lease,
            )
        )
        return int(result.inserted_primary_key[0])

    def submit(self, who: Annotator, assignment_id: Any, choice: Any) -> str:
        """Record ``choice`` ("a", "b" or "same") for ``who``'s open assignment; durable on return.

        Returns ``"recorded"``, or ``"already recorded"`` when the same label was sent twice.
        Raises :class:`Refused`: 400 bad input, 404 unknown assignment, 403 not ``who``'s, 409 a
        different label is already recorded (undo first).
        """
        import sqlalchemy as sa

        if choice not in CHOICES:
            raise Refused(400, f"choice must be one of {', '.join(CHOICES)}")
        if isinstance(assignment_id, bool) or not isinstance(assignment_id, int) or assignment_id < 1:
            raise Refused(400, "assignment_id must be a positive integer")
        a, lab = self.t["assignments"], self.t["labels"]
        with write_txn(self.engine) as conn:
            row = conn.execute(
                sa.select(a.c.annotator_id, a.c.status, a.c.pair_id, lab.c.choice)
                .outerjoin(lab, lab.c.assignment_id == a.c.assignment_id)
                .where(a.c.assignment_id == assignment_id)
            ).first()
            if row is None:
                raise Refused(404, f"no assignment {assignment_id}")
            if row.annotator_id != who.annotator_id:
                raise Refused(403, "this pair is not (or no longer) assigned to you")
            if row.status == "done":
                if row.choice == choice:
                    return "already recorded"
                raise Refused(409, f"this pair is already labelled {row.choice!r}; undo it to change it")
            conn.execute(
                sa.insert(lab).values(
                    assignment_id=assignment_id,
                    pair_id=row.pair_id,
                    annotator_id=who.annotator_id,
                    choice=choice,
                    created_at=self.clock(),
                )
            )
            conn.execute(sa.update(a).where(a.c.assignment_id == assignment_id).values(status="done"))
        return "recorded"

    def undo(self, who: Annotator) -> Served | None:
        """Remove ``who``'s latest label and give its pair back to them; ``None`` if nothing to undo."""
        import sqlalchemy as sa

        a, lab = self.t["assignments"], self.t["labels"]
        with write_txn(self.engine) as conn:
            row = conn.execute(
                sa.select(lab.c.label_id, lab.c.assignment_id)
                .where(lab.c.annotator_id == who.annotator_id)
                .order_by(lab.c.label_id.desc())
                .limit(1)
            ).first()
            if row is None:
                return None
            now = self.clock()
            conn.execute(sa.delete(lab).where(lab.c.label_id == row.label_id))
            conn.execute(
                sa.update(a)
                .where(a.c.assignment_id == row.assignment_id)
                .values(status="open", served_at=now, expires_at=now + self.project.lease_s)
            )
            return self._served(conn, row.assignment_id)

    def progress(self, who: Annotator) -> Progress:
        import sqlalchemy as sa

        lab = self.t["labels"]
        with read_txn(self.engine) as conn:
            mine = conn.execute(
                sa.select(lab.c.choice, sa.func.count().label("n"))
                .where(lab.c.annotator_id == who.annotator_id)
                .group_by(lab.c.choice)
            ).all()
            counted, open_ = counted_and_open(conn, self.t, iterative=self.project.strategy == "iterative")
        by_choice = {r.choice: int(r.n) for r in mine}
        return Progress(
            mine=sum(by_choice.values()),
            mine_same=by_choice.get("same", 0),
            counted=counted,
            target=self.project.target,
            in_flight=open_,
        )

    def last_label(self, who: Annotator) -> LastLabel | None:
        """``who``'s latest label (what undo would remove)."""
        import sqlalchemy as sa

        lab, p = self.t["labels"], self.t["pairs"]
        with read_txn(self.engine) as conn:
            r = conn.execute(
                sa.select(lab.c.label_id, lab.c.pair_id, lab.c.choice, p.c.id_a, p.c.id_b)
                .join(p, p.c.pair_id == lab.c.pair_id)
                .where(lab.c.annotator_id == who.annotator_id)
                .order_by(lab.c.label_id.desc())
                .limit(1)
            ).first()
        return None if r is None else LastLabel(r.label_id, r.pair_id, r.id_a, r.id_b, r.choice)
