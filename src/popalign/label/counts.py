"""Queries the store, the samplers and the status page share: what counts toward the target, each
anchor's pairs and wins, and the sampler's view of one transaction. All are scoped to one project.

Gold pairs (quality control, ``pairs.gold`` set) never count toward the target and have no anchor.
"""

from __future__ import annotations

from typing import Any

from popalign.label.sampling import AnchorStats


def _win_case(p: Any, lab: Any) -> Any:
    import sqlalchemy as sa

    return sa.case(
        (sa.and_(lab.c.choice == "a", p.c.id_a == p.c.anchor), 1),
        (sa.and_(lab.c.choice == "b", p.c.id_b == p.c.anchor), 1),
        else_=0,
    )


def anchor_stats(conn: Any, t: Any, project_id: int) -> dict[str, AnchorStats]:
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
        .where(p.c.project_id == project_id, p.c.anchor.is_not(None))
        .group_by(p.c.anchor)
    )
    return {r.anchor: AnchorStats(int(r.pairs), int(r.open or 0), int(r.wins or 0)) for r in conn.execute(q)}


def counted_and_open(
    conn: Any, t: Any, project_id: int, iterative: bool = False, gold: bool = False
) -> tuple[int, int]:
    """Labels that count toward the target (first slot; iterative: anchor wins) and open first slots.

    ``gold``: the project mixes in gold pairs, which must be left out (a join the others skip).
    """
    import sqlalchemy as sa

    p, a, lab = t["pairs"], t["assignments"], t["labels"]
    # Two plain counts: each is one index scan (plus a primary-key join), cheap beside joining everything.
    open_q = sa.select(sa.func.count()).where(
        a.c.project_id == project_id, a.c.status == "open", a.c.slot == 0
    )
    first = sa.and_(a.c.assignment_id == lab.c.assignment_id, a.c.slot == 0)
    joined = lab.join(a, first)
    mine = [a.c.project_id == project_id]
    if gold or iterative:
        joined = joined.join(p, p.c.pair_id == lab.c.pair_id)
    if gold:
        open_q = open_q.select_from(a.join(p, p.c.pair_id == a.c.pair_id)).where(p.c.gold.is_(None))
        mine.append(p.c.gold.is_(None))
    else:
        open_q = open_q.select_from(a)
    open_ = conn.execute(open_q).scalar_one()
    if iterative:
        q = (
            sa.select(sa.func.coalesce(sa.func.sum(_win_case(p, lab)), 0))
            .select_from(joined)
            .where(*mine, p.c.anchor.is_not(None))
        )
    else:
        q = sa.select(sa.func.count()).select_from(joined).where(*mine, lab.c.choice.in_(("a", "b")))
    return int(conn.execute(q).scalar_one()), int(open_)


class PairsView:
    """The :class:`popalign.label.sampling.PairView` of one transaction, for one annotator."""

    def __init__(
        self,
        conn: Any,
        tables: Any,
        project_id: int,
        annotator_id: int,
        now: float,
        lease_s: float,
        gold: bool = False,
    ) -> None:
        self.conn, self.t, self.project_id, self.gold = conn, tables, project_id, gold
        self.me, self.now, self.lease_s = annotator_id, now, lease_s

    def _pairs(self, *columns: Any) -> Any:
        import sqlalchemy as sa

        p = self.t["pairs"]
        return sa.select(*columns).where(p.c.project_id == self.project_id)

    def pair_exists(self, x: str, y: str) -> bool:
        lo, hi = (x, y) if x < y else (y, x)
        p = self.t["pairs"]
        return (
            self.conn.execute(self._pairs(p.c.pair_id).where(p.c.lo == lo, p.c.hi == hi)).first() is not None
        )

    def used_pairs(self) -> set[tuple[str, str]]:
        p = self.t["pairs"]
        return {(r.lo, r.hi) for r in self.conn.execute(self._pairs(p.c.lo, p.c.hi))}

    def partners(self, pref_id: str) -> set[str]:
        import sqlalchemy as sa

        p = self.t["pairs"]
        rows = self.conn.execute(
            self._pairs(p.c.lo, p.c.hi).where(sa.or_(p.c.lo == pref_id, p.c.hi == pref_id))
        )
        return {r.hi if r.lo == pref_id else r.lo for r in rows}

    def counted_and_open(self) -> tuple[int, int]:
        return counted_and_open(self.conn, self.t, self.project_id, gold=self.gold)

    def anchor_stats(self) -> dict[str, AnchorStats]:
        return anchor_stats(self.conn, self.t, self.project_id)

    def my_last_anchor(self) -> str | None:
        import sqlalchemy as sa

        a, p = self.t["assignments"], self.t["pairs"]
        row = self.conn.execute(
            sa.select(p.c.anchor)
            .join(a, a.c.pair_id == p.c.pair_id)
            .where(a.c.annotator_id == self.me, a.c.slot == 0, p.c.anchor.is_not(None))
            .order_by(a.c.served_at.desc(), a.c.assignment_id.desc())
            .limit(1)
        ).first()
        return None if row is None else row.anchor

    def anchors_held_by_others(self) -> set[str]:
        import sqlalchemy as sa

        a, p = self.t["assignments"], self.t["pairs"]
        latest = (
            sa.select(sa.func.max(a.c.assignment_id))
            .where(a.c.project_id == self.project_id, a.c.slot == 0)
            .group_by(a.c.annotator_id)
        )
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
