"""The two sampling strategies for people, against an in-memory view of what was served."""

from __future__ import annotations

import numpy as np

from popalign.label.sampling import AnchorStats, IterativeSampler, Proposal, RandomSampler


class FakeView:
    """What the database would answer, for one annotator; ``judge`` records outcomes."""

    def __init__(self) -> None:
        self.pairs: dict[tuple[str, str], dict] = {}
        self.last_anchor: str | None = None
        self.held: set[str] = set()

    @staticmethod
    def key(x: str, y: str) -> tuple[str, str]:
        return (x, y) if x < y else (y, x)

    def serve(self, prop: Proposal) -> None:
        k = self.key(prop.id_a, prop.id_b)
        assert k not in self.pairs, f"pair {k} served twice"
        self.pairs[k] = {"anchor": prop.anchor, "open": True, "winner": None, "judged": False}
        self.last_anchor = prop.anchor

    def judge(self, prop: Proposal, winner: str | None) -> None:
        rec = self.pairs[self.key(prop.id_a, prop.id_b)]
        rec.update(open=False, winner=winner, judged=True)

    def pair_exists(self, x: str, y: str) -> bool:
        return self.key(x, y) in self.pairs

    def used_pairs(self) -> set[tuple[str, str]]:
        return set(self.pairs)

    def partners(self, pref_id: str) -> set[str]:
        return {hi if lo == pref_id else lo for lo, hi in self.pairs if pref_id in (lo, hi)}

    def counted_and_open(self) -> tuple[int, int]:
        counted = sum(r["winner"] is not None for r in self.pairs.values())
        return counted, sum(r["open"] for r in self.pairs.values())

    def anchor_stats(self) -> dict[str, AnchorStats]:
        out: dict[str, AnchorStats] = {}
        for rec in self.pairs.values():
            a = rec["anchor"]
            if a is None:
                continue
            s = out.get(a, AnchorStats())
            out[a] = AnchorStats(s.pairs + 1, s.open + rec["open"], s.wins + (rec["winner"] == a))
        return out

    def my_last_anchor(self) -> str | None:
        return self.last_anchor

    def anchors_held_by_others(self) -> set[str]:
        return self.held


IDS = [f"p{i}" for i in range(6)]


def drain(sampler, view: FakeView, decide, limit: int = 1000) -> list[Proposal]:
    """Serve and judge until the sampler has nothing more; ``decide(prop)`` gives the winner's id."""
    served = []
    for _ in range(limit):
        prop = sampler.propose(view)
        if prop is None:
            return served
        view.serve(prop)
        view.judge(prop, decide(prop))
        served.append(prop)
    raise AssertionError("the sampler never ran out")


def test_random_serves_every_unordered_pair_once_then_stops():
    view = FakeView()
    served = drain(RandomSampler(IDS, None, 1.0, target=100, seed=0), view, lambda p: p.id_a)
    pairs = [view.key(p.id_a, p.id_b) for p in served]
    assert len(pairs) == len(set(pairs)) == 15  # C(6, 2): the last ones come from the exhaustive fallback
    assert all(p.id_a != p.id_b and p.anchor is None for p in served)


def test_random_stops_at_the_target_counting_pairs_in_flight():
    view, sampler = FakeView(), RandomSampler(IDS, None, 0.0, target=3, seed=0)
    for _ in range(3):
        view.serve(sampler.propose(view))  # served, not yet judged
    assert sampler.propose(view) is None


def test_random_does_not_count_about_the_same_toward_the_target():
    view = FakeView()
    served = drain(RandomSampler(IDS, None, 0.0, target=4, seed=1), view, lambda p: None)
    assert len(served) == 15  # nothing ever counted, so it ran out of pairs instead


def test_random_with_scores_serves_only_pairs_with_the_margin_gap():
    margins = np.array([0.0, 0.5, 1.0, 3.0])
    view = FakeView()
    served = drain(RandomSampler(IDS[:4], margins, 1.0, target=100, seed=0), view, lambda p: p.id_a)
    # |m_i - m_j| >= 1: (p0,p2) 1.0, (p0,p3) 3.0, (p1,p3) 2.5, (p2,p3) 2.0; not (p0,p1) 0.5 or (p1,p2) 0.5.
    assert {view.key(p.id_a, p.id_b) for p in served} == {
        ("p0", "p2"),
        ("p0", "p3"),
        ("p1", "p3"),
        ("p2", "p3"),
    }


def test_random_with_min_gap_zero_ignores_scores():
    margins = np.array([0.0, 0.0, 0.0])
    served = drain(RandomSampler(IDS[:3], margins, 0.0, target=100, seed=0), FakeView(), lambda p: p.id_a)
    assert len(served) == 3


def test_random_is_deterministic_per_seed():
    def run(seed):
        return drain(RandomSampler(IDS, None, 0.0, target=8, seed=seed), FakeView(), lambda p: p.id_b)

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_iterative_finds_k_weaker_per_anchor_when_the_anchor_always_wins():
    sampler = IterativeSampler(IDS, None, 1.0, k=2, max_candidates=8, seed=0)
    view = FakeView()
    served = drain(sampler, view, lambda p: p.anchor)
    per_anchor = view.anchor_stats()
    # Anchors go in the seeded order; each one wins k=2 times unless its partners run out.
    assert [p.anchor for p in served][:2] == [sampler.anchor_order[0]] * 2
    for anchor, stats in per_anchor.items():
        assert stats.wins <= 2
        if stats.wins < 2:
            assert sampler.next_candidate(anchor, view) is None
    assert sum(s.wins for s in per_anchor.values()) == len(served)
    assert len({view.key(p.id_a, p.id_b) for p in served}) == len(served)


def test_iterative_moves_on_after_max_candidates_when_the_anchor_always_loses():
    sampler = IterativeSampler(IDS, None, 1.0, k=2, max_candidates=3, seed=0)
    view = FakeView()
    served = drain(sampler, view, lambda p: p.id_b if p.id_a == p.anchor else p.id_a)
    first = sampler.anchor_order[0]
    assert [p.anchor for p in served[:3]] == [first] * 3 and served[3].anchor != first
    assert all(s.wins == 0 and s.pairs <= 3 for s in view.anchor_stats().values())


def test_iterative_candidates_with_scores_are_at_least_min_gap_weaker():
    margins = np.array([0.0, 1.0, 2.0, 3.0, 3.5, 5.0])
    sampler = IterativeSampler(IDS, margins, 1.0, k=2, max_candidates=8, seed=2)
    view = FakeView()
    served = drain(sampler, view, lambda p: p.anchor)
    position = {pid: i for i, pid in enumerate(IDS)}
    for p in served:
        cand = p.id_b if p.id_a == p.anchor else p.id_a
        assert margins[position[cand]] <= margins[position[p.anchor]] - 1.0
    # p0 has nobody weaker, so it is never an anchor; p1 has only p0.
    stats = view.anchor_stats()
    assert "p0" not in stats
    assert stats.get("p1", AnchorStats()).pairs <= 1


def test_iterative_never_plans_past_k_with_pairs_in_flight():
    sampler = IterativeSampler(IDS, None, 1.0, k=2, max_candidates=8, seed=0)
    view = FakeView()
    first = sampler.propose(view)
    view.serve(first)
    second = sampler.propose(view)  # the same anchor: 0 wins + 1 open < 2
    view.serve(second)
    assert second.anchor == first.anchor
    third = sampler.propose(view)  # 0 wins + 2 open = k: this anchor must wait for the judgements
    assert third.anchor != first.anchor


def test_iterative_prefers_an_anchor_nobody_else_holds():
    sampler = IterativeSampler(IDS, None, 1.0, k=2, max_candidates=8, seed=0)
    view = FakeView()
    view.held = {sampler.anchor_order[0]}
    assert sampler.propose(view).anchor == sampler.anchor_order[1]


def test_iterative_shows_the_anchor_on_both_sides():
    sampler = IterativeSampler(IDS, None, 1.0, k=2, max_candidates=8, seed=0)
    served = drain(sampler, FakeView(), lambda p: p.anchor)
    sides = {p.id_a == p.anchor for p in served}
    assert sides == {True, False}


def test_iterative_is_deterministic_per_seed():
    def run(seed):
        return drain(IterativeSampler(IDS, None, 1.0, 2, 8, seed), FakeView(), lambda p: p.anchor)

    assert run(5) == run(5)
