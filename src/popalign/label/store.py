"""Serving pairs and recording labels, one database transaction per request.

``next_for`` hands an annotator, in order: the pair they already hold (its lease renewed); a pair whose
lease ran out while someone else held it; now and then (``gold_fraction``) a gold pair they have not
judged; with ``redundancy > 1`` a pair that still needs more judges; a new pair from the sampler; or
nothing. ``submit`` accepts a label only for an open assignment of the same annotator and commits
before returning, so an accepted label is on disk when the response leaves. A lease that ran out
without the pair going to anyone else still belongs to its annotator. ``renew`` extends the lease
while the label page is open; ``skip`` declines a pair with a reason (never a label); ``undo``
removes the annotator's latest label or skip and gives that pair back to them.

Every one of these runs inside :func:`popalign.label.db.write_txn`, so concurrent annotators are
serialised and the unique constraints in :mod:`popalign.label.db` are never the thing that saves us.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from popalign.label.accounts import Annotator
from popalign.label.counts import PairsView, counted_and_open
from popalign.label.db import read_txn, write_txn
from popalign.label.inputs import Refused, parse_choice, parse_id, parse_text
from popalign.label.project import Project
from popalign.label.sampling import GoldPair, IterativeSampler, Proposal, RandomSampler

__all__ = ["CHOICES", "SKIP_REASONS", "LabelStore", "Refused", "Served", "Progress", "LastDecision"]

CHOICES = ("a", "b", "same")
# Why an annotator may decline a pair: key -> what the page shows.
SKIP_REASONS = {
    "broken": "broken or unreadable",
    "unsure": "cannot judge it (outside what I know)",
    "unsafe": "offensive or unsafe content",
    "other": "another reason (say which)",
}
MAX_NOTE_CHARS = 500


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
    """``mine``: this annotator's judgements (``mine_same`` of them "about the same"), ``mine_skipped``:
    pairs they skipped; ``counted``: the project's labels that count toward ``target`` (random: pairs
    labelled a or b; iterative: anchors' wins); ``in_flight``: pairs served and not yet judged."""

    mine: int
    mine_same: int
    mine_skipped: int
    counted: int
    target: int
    in_flight: int


@dataclass(frozen=True)
class LastDecision:
    """An annotator's latest label or skip (what undo would remove); ``choice`` is ``"skip"`` for a skip."""

    assignment_id: int
    pair_id: int
    id_a: str
    id_b: str
    choice: str


class LabelStore:
    """Assignments and labels of one project; thread-safe (each call is its own transaction)."""

    def __init__(
        self,
        engine: Any,
        project: Project,
        sampler: RandomSampler | IterativeSampler,
        clock: Callable[[], float] = time.time,
        gold: list[GoldPair] | None = None,
    ) -> None:
        self.engine, self.project, self.sampler, self.clock = engine, project, sampler, clock
        self.gold = list(gold or [])
        self.t = engine.popalign_tables

    @property
    def has_gold(self) -> bool:
        """Whether gold pairs may be in the database (they then have to be left out of counts)."""
        return self.project.gold_fraction > 0

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
            if held is not None:
                conn.execute(sa.update(a).where(a.c.assignment_id == held.assignment_id).values(**lease))
                return self._served(conn, held.assignment_id)
            held = self._reclaim(conn, who, now)
            if held is not None:
                conn.execute(
                    sa.update(a)
                    .where(a.c.assignment_id == held.assignment_id)
                    .values(annotator_id=who.annotator_id, started_at=now, **lease)
                )
                return self._served(conn, held.assignment_id)
            assignment_id = self._gold_for(conn, who, lease) if self._gold_turn(conn, who) else None
            if assignment_id is None and self.project.redundancy > 1:
                assignment_id = self._another_judge(conn, who, lease)
            if assignment_id is None:
                view = PairsView(
                    conn, self.t, self.project.project_id, who.annotator_id, now, self.project.lease_s
                )
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
            .where(
                a.c.project_id == self.project.project_id,
                a.c.status == "open",
                a.c.expires_at < now,
                ~sa.exists(seen),
            )
            .order_by(a.c.expires_at, a.c.assignment_id)
            .limit(1)
        ).first()

    def _insert_assignment(self, conn: Any, pair_id: int, slot: int, who: Annotator, lease: dict) -> int:
        import sqlalchemy as sa

        result = conn.execute(
            sa.insert(self.t["assignments"]).values(
                project_id=self.project.project_id,
                pair_id=pair_id,
                slot=slot,
                annotator_id=who.annotator_id,
                status="open",
                started_at=lease["served_at"],
                **lease,
            )
        )
        return int(result.inserted_primary_key[0])

    def _another_judge(self, conn: Any, who: Annotator, lease: dict[str, float]) -> int | None:
        # Redundancy: the oldest pair that has fewer than `redundancy` judges and none of them is `who`.
        import sqlalchemy as sa

        a, p = self.t["assignments"], self.t["pairs"]
        counts = (
            sa.select(a.c.pair_id, sa.func.count().label("n"), sa.func.max(a.c.slot).label("top"))
            .where(a.c.project_id == self.project.project_id)
            .group_by(a.c.pair_id)
            .subquery()
        )
        mine = sa.select(a.c.pair_id).where(a.c.annotator_id == who.annotator_id)
        gold = sa.select(p.c.pair_id).where(p.c.project_id == self.project.project_id, p.c.gold.is_not(None))
        row = conn.execute(
            sa.select(counts.c.pair_id, counts.c.top)
            .where(
                counts.c.n < self.project.redundancy,
                counts.c.pair_id.not_in(mine),
                counts.c.pair_id.not_in(gold),
            )
            .order_by(counts.c.pair_id)
            .limit(1)
        ).first()
        if row is None:
            return None
        return self._insert_assignment(conn, row.pair_id, row.top + 1, who, lease)

    def _gold_turn(self, conn: Any, who: Annotator) -> bool:
        # Seeded by the annotator and how many pairs they were given: reproducible, and unannounced.
        import sqlalchemy as sa

        if not self.gold or self.project.gold_fraction <= 0:
            return False
        a = self.t["assignments"]
        given = conn.execute(
            sa.select(sa.func.count()).select_from(a).where(a.c.annotator_id == who.annotator_id)
        ).scalar_one()
        rng = random.Random(f"{self.project.seed}:{who.annotator_id}:{given}")
        return rng.random() < self.project.gold_fraction

    def _gold_for(self, conn: Any, who: Annotator, lease: dict[str, float]) -> int | None:
        """An assignment of the first gold pair ``who`` has not judged, or ``None`` if none is left."""
        import sqlalchemy as sa

        p, a = self.t["pairs"], self.t["assignments"]
        rows = conn.execute(
            sa.select(p.c.pair_id, p.c.lo, p.c.hi, p.c.gold)
            .where(p.c.project_id == self.project.project_id)
            .where(sa.tuple_(p.c.lo, p.c.hi).in_([tuple(sorted((g.id_a, g.id_b))) for g in self.gold]))
        ).all()
        existing = {(r.lo, r.hi): r for r in rows}
        mine = {
            r.pair_id
            for r in conn.execute(
                sa.select(a.c.pair_id).where(
                    a.c.annotator_id == who.annotator_id, a.c.pair_id.in_([r.pair_id for r in rows])
                )
            )
        }
        for g in self.gold:
            row = existing.get(tuple(sorted((g.id_a, g.id_b))))
            if row is None:
                proposal = Proposal(g.id_a, g.id_b)
                return self._create(conn, proposal, who, lease, gold=g.stronger)
            if row.gold is not None and row.pair_id not in mine:
                top = conn.execute(
                    sa.select(sa.func.max(a.c.slot)).where(a.c.pair_id == row.pair_id)
                ).scalar()
                return self._insert_assignment(conn, row.pair_id, int(top) + 1, who, lease)
        return None

    def _create(
        self, conn: Any, proposal: Proposal, who: Annotator, lease: dict[str, float], gold: str | None = None
    ) -> int:
        import sqlalchemy as sa

        lo, hi = sorted((proposal.id_a, proposal.id_b))
        pair = conn.execute(
            sa.insert(self.t["pairs"]).values(
                project_id=self.project.project_id,
                lo=lo,
                hi=hi,
                id_a=proposal.id_a,
                id_b=proposal.id_b,
                anchor=proposal.anchor,
                gold=gold,
                created_at=lease["served_at"],
            )
        )
        return self._insert_assignment(conn, int(pair.inserted_primary_key[0]), 0, who, lease)

    def _open_assignment(self, conn: Any, who: Annotator, assignment_id: int) -> Any:
        """The assignment row with its label and skip; 404 if unknown here, 403 if not ``who``'s."""
        import sqlalchemy as sa

        a, lab, sk = self.t["assignments"], self.t["labels"], self.t["skips"]
        row = conn.execute(
            sa.select(a.c.annotator_id, a.c.status, a.c.pair_id, lab.c.choice, sk.c.reason)
            .outerjoin(lab, lab.c.assignment_id == a.c.assignment_id)
            .outerjoin(sk, sk.c.assignment_id == a.c.assignment_id)
            .where(a.c.assignment_id == assignment_id, a.c.project_id == self.project.project_id)
        ).first()
        if row is None:
            raise Refused(404, f"no assignment {assignment_id}")
        if row.annotator_id != who.annotator_id:
            raise Refused(403, "this pair is not (or no longer) assigned to you")
        return row

    def _decide(
        self, conn: Any, who: Annotator, assignment_id: int, pair_id: int, table: str, **values: Any
    ) -> None:
        """Record a label (``table="labels"``) or a skip and close the assignment, in ``conn``'s txn."""
        import sqlalchemy as sa

        now = self.clock()
        row = {"assignment_id": assignment_id, "pair_id": pair_id, "annotator_id": who.annotator_id}
        conn.execute(sa.insert(self.t[table]).values(**row, created_at=now, **values))
        a = self.t["assignments"]
        status = "done" if table == "labels" else "skipped"
        conn.execute(
            sa.update(a).where(a.c.assignment_id == assignment_id).values(status=status, decided_at=now)
        )

    def submit(self, who: Annotator, assignment_id: Any, choice: Any) -> str:
        """Record ``choice`` ("a", "b" or "same") for ``who``'s open assignment; durable on return.

        Returns ``"recorded"``, or ``"already recorded"`` when the same label was sent twice.
        Raises :class:`Refused`: 400 bad input, 404 unknown assignment, 403 not ``who``'s, 409 a
        different label is already recorded (undo first) or the pair was skipped.
        """
        choice = parse_choice(choice, "choice", CHOICES)
        assignment_id = parse_id(assignment_id, "assignment_id")
        with write_txn(self.engine) as conn:
            row = self._open_assignment(conn, who, assignment_id)
            if row.status == "done":
                if row.choice == choice:
                    return "already recorded"
                raise Refused(409, f"this pair is already labelled {row.choice!r}; undo it to change it")
            if row.status == "skipped":
                raise Refused(409, "you skipped this pair; undo the skip to label it")
            self._decide(conn, who, assignment_id, row.pair_id, "labels", choice=choice)
        return "recorded"

    def skip(self, who: Annotator, assignment_id: Any, reason: Any, note: Any = None) -> str:
        """Decline ``who``'s open assignment for ``reason`` (a key of ``SKIP_REASONS``), with a note.

        The pair is not shown to ``who`` again and gives no label. Returns ``"skipped"`` or ``"already
        skipped"``; raises :class:`Refused` as :meth:`submit` does ("other" needs a note).
        """

        reason = parse_choice(reason, "reason", SKIP_REASONS)
        note = parse_text(note, "note", MAX_NOTE_CHARS)
        if reason == "other" and not note:
            raise Refused(400, "note: say why when the reason is 'other'")
        assignment_id = parse_id(assignment_id, "assignment_id")
        with write_txn(self.engine) as conn:
            row = self._open_assignment(conn, who, assignment_id)
            if row.status == "skipped":
                return "already skipped"
            if row.status == "done":
                raise Refused(409, f"this pair is already labelled {row.choice!r}; undo it to skip it")
            self._decide(conn, who, assignment_id, row.pair_id, "skips", reason=reason, note=note)
        return "skipped"

    def renew(self, who: Annotator, assignment_id: Any) -> Served:
        """Extend ``who``'s lease on an open assignment (the label page does this while it is open).

        Raises :class:`Refused`: 403 when the pair went to someone else, 409 when it is already decided.
        """
        import sqlalchemy as sa

        assignment_id = parse_id(assignment_id, "assignment_id")
        a = self.t["assignments"]
        with write_txn(self.engine) as conn:
            row = self._open_assignment(conn, who, assignment_id)
            if row.status != "open":
                raise Refused(409, "this pair is already decided")
            now = self.clock()
            conn.execute(
                sa.update(a)
                .where(a.c.assignment_id == assignment_id)
                .values(served_at=now, expires_at=now + self.project.lease_s)
            )
            return self._served(conn, assignment_id)

    def undo(self, who: Annotator) -> Served | None:
        """Remove ``who``'s latest label or skip and give its pair back; ``None`` if nothing to undo."""
        import sqlalchemy as sa

        a, lab, sk = self.t["assignments"], self.t["labels"], self.t["skips"]
        with write_txn(self.engine) as conn:
            row = self._last_decided(conn, who)
            if row is None:
                return None
            now = self.clock()
            for table in (lab, sk):
                conn.execute(sa.delete(table).where(table.c.assignment_id == row.assignment_id))
            conn.execute(
                sa.update(a)
                .where(a.c.assignment_id == row.assignment_id)
                .values(
                    status="open",
                    decided_at=None,
                    started_at=now,
                    served_at=now,
                    expires_at=now + self.project.lease_s,
                )
            )
            return self._served(conn, row.assignment_id)

    def _last_decided(self, conn: Any, who: Annotator) -> Any:
        import sqlalchemy as sa

        a, p, lab = self.t["assignments"], self.t["pairs"], self.t["labels"]
        return conn.execute(
            sa.select(a.c.assignment_id, a.c.pair_id, a.c.status, p.c.id_a, p.c.id_b, lab.c.choice)
            .join(p, p.c.pair_id == a.c.pair_id)
            .outerjoin(lab, lab.c.assignment_id == a.c.assignment_id)
            .where(a.c.annotator_id == who.annotator_id, a.c.status != "open")
            .order_by(a.c.decided_at.desc(), a.c.assignment_id.desc())
            .limit(1)
        ).first()

    def progress(self, who: Annotator) -> Progress:
        import sqlalchemy as sa

        lab, sk = self.t["labels"], self.t["skips"]
        with read_txn(self.engine) as conn:
            mine = conn.execute(
                sa.select(lab.c.choice, sa.func.count().label("n"))
                .where(lab.c.annotator_id == who.annotator_id)
                .group_by(lab.c.choice)
            ).all()
            skipped = conn.execute(
                sa.select(sa.func.count()).select_from(sk).where(sk.c.annotator_id == who.annotator_id)
            ).scalar_one()
            iterative = self.project.strategy == "iterative"
            counted, open_ = counted_and_open(
                conn, self.t, self.project.project_id, iterative=iterative, gold=self.has_gold
            )
        by_choice = {r.choice: int(r.n) for r in mine}
        return Progress(
            mine=sum(by_choice.values()),
            mine_same=by_choice.get("same", 0),
            mine_skipped=int(skipped),
            counted=counted,
            target=self.project.target,
            in_flight=open_,
        )

    def last_decision(self, who: Annotator) -> LastDecision | None:
        """``who``'s latest label or skip (what undo would remove)."""
        with read_txn(self.engine) as conn:
            r = self._last_decided(conn, who)
        if r is None:
            return None
        choice = "skip" if r.status == "skipped" else r.choice
        return LastDecision(r.assignment_id, r.pair_id, r.id_a, r.id_b, choice)
