"""Accounts, project settings, assignment, labels, leases, undo and redundancy on a SQLite file."""

from __future__ import annotations

import pytest

sa = pytest.importorskip("sqlalchemy")

from popalign.errors import PopalignError  # noqa: E402
from popalign.label.accounts import add_annotator, authenticate, hash_token, list_annotators  # noqa: E402
from popalign.label.db import make_engine  # noqa: E402
from popalign.label.project import LabelSettings, load_project, open_project  # noqa: E402
from popalign.label.sampling import make_sampler  # noqa: E402
from popalign.label.store import LabelStore, Refused  # noqa: E402

IDS = [f"p{i}" for i in range(8)]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def make_store(tmp_path, project="default", gold=None, engine=None, **settings):
    """A store over ``IDS`` in ``project`` with annotators ann, bob and cy, and its fake clock."""
    engine = engine or make_engine(tmp_path / "labels.sqlite")
    proj = open_project(engine, LabelSettings(**settings), "prefs.jsonl", "fp", len(IDS), name=project)
    clock = Clock()
    store = LabelStore(engine, proj, make_sampler(proj, IDS, None), clock=clock, gold=gold)
    people = {
        name: authenticate(engine, add_annotator(engine, name, project=project))
        for name in ("ann", "bob", "cy")
    }
    return store, people, clock


def count(store, sql: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar_one()


# --- accounts -----------------------------------------------------------------------------------------


def test_tokens_authenticate_their_own_account_and_only_a_hash_is_stored(tmp_path):
    engine = make_engine(tmp_path / "db.sqlite")
    tok = add_annotator(engine, "alice")
    boss = add_annotator(engine, "boss", admin=True)
    assert authenticate(engine, tok).name == "alice" and not authenticate(engine, tok).is_admin
    assert authenticate(engine, boss).is_admin
    for bad in (None, "", "x", tok + "x", tok[:-1], "' OR 1=1 --"):
        assert authenticate(engine, bad) is None
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT token_hash FROM annotators WHERE name='alice'")).scalar_one()
    assert stored == hash_token(tok) and tok not in stored
    assert [a.name for a in list_annotators(engine)] == ["alice", "boss"]


def test_names_are_checked_and_reset_replaces_the_token(tmp_path):
    engine = make_engine(tmp_path / "db.sqlite")
    old = add_annotator(engine, "alice")
    with pytest.raises(PopalignError, match="exists"):
        add_annotator(engine, "alice")
    with pytest.raises(PopalignError, match="no annotator"):
        add_annotator(engine, "nobody", reset=True)
    for bad in ("", "a b", "<x>", "-lead", "x" * 65):
        with pytest.raises(PopalignError, match="annotator name"):
            add_annotator(engine, bad)
    new = add_annotator(engine, "alice", reset=True)
    assert authenticate(engine, old) is None and authenticate(engine, new).name == "alice"


# --- project settings -----------------------------------------------------------------------------------


def test_the_first_serve_fixes_the_settings_and_later_serves_must_agree(tmp_path):
    engine = make_engine(tmp_path / "db.sqlite")
    assert load_project(engine) is None
    first = open_project(engine, LabelSettings(strategy="iterative", k=3), "d.jsonl", "fp1", 10)
    assert (first.strategy, first.k, first.target, first.max_candidates) == ("iterative", 3.0, 30, 12)
    assert open_project(engine, LabelSettings(), "d.jsonl", "fp1", 10) == first
    assert open_project(engine, LabelSettings(k=3), "d.jsonl", "fp1", 10) == first
    with pytest.raises(PopalignError, match=r"strategy=random \(stored: iterative\)"):
        open_project(engine, LabelSettings(strategy="random"), "d.jsonl", "fp1", 10)
    with pytest.raises(PopalignError, match="different preference dataset"):
        open_project(engine, LabelSettings(), "d.jsonl", "fp2", 10)
    assert load_project(engine) == first


@pytest.mark.parametrize(
    "settings, message",
    [
        (LabelSettings(strategy="best"), "strategy"),
        (LabelSettings(k=0), "k must be positive"),
        (LabelSettings(strategy="iterative", k=1.5), "whole k"),
        (LabelSettings(redundancy=0), "redundancy"),
        (LabelSettings(lease_s=0), "lease_s"),
        (LabelSettings(min_gap=-1), "min_gap"),
    ],
)
def test_bad_settings_are_refused(tmp_path, settings, message):
    engine = make_engine(tmp_path / "db.sqlite")
    with pytest.raises(PopalignError, match=message):
        open_project(engine, settings, "d.jsonl", "fp", 10)


# --- serving and labelling ------------------------------------------------------------------------------


def test_a_served_pair_stays_with_its_annotator_until_judged(tmp_path):
    store, who, _ = make_store(tmp_path)
    first = store.next_for(who["ann"])
    assert store.next_for(who["ann"]).assignment_id == first.assignment_id
    other = store.next_for(who["bob"])
    assert {first.id_a, first.id_b} != {other.id_a, other.id_b}
    assert store.submit(who["ann"], first.assignment_id, "a") == "recorded"
    assert store.next_for(who["ann"]).assignment_id not in (first.assignment_id, other.assignment_id)


def test_submissions_are_checked(tmp_path):
    store, who, _ = make_store(tmp_path)
    mine = store.next_for(who["ann"])
    for bad_choice in ("A", "c", "", None, 1):
        with pytest.raises(Refused) as err:
            store.submit(who["ann"], mine.assignment_id, bad_choice)
        assert err.value.status == 400
    for bad_id in ("1", 1.0, True, 0, -3, None):
        with pytest.raises(Refused) as err:
            store.submit(who["ann"], bad_id, "a")
        assert err.value.status == 400
    with pytest.raises(Refused) as err:
        store.submit(who["ann"], 999, "a")
    assert err.value.status == 404
    with pytest.raises(Refused) as err:
        store.submit(who["bob"], mine.assignment_id, "a")  # someone else's pair
    assert err.value.status == 403
    assert count(store, "SELECT count(*) FROM labels") == 0
    assert store.submit(who["ann"], mine.assignment_id, "b") == "recorded"
    assert store.submit(who["ann"], mine.assignment_id, "b") == "already recorded"  # a retried request
    with pytest.raises(Refused) as err:
        store.submit(who["ann"], mine.assignment_id, "a")
    assert err.value.status == 409
    assert count(store, "SELECT count(*) FROM labels") == 1


def test_undo_removes_the_latest_label_and_gives_the_pair_back(tmp_path):
    store, who, _ = make_store(tmp_path)
    first = store.next_for(who["ann"])
    store.submit(who["ann"], first.assignment_id, "a")
    second = store.next_for(who["ann"])
    store.submit(who["ann"], second.assignment_id, "same")
    assert store.last_decision(who["ann"]).choice == "same"
    assert store.undo(who["bob"]) is None  # bob has nothing to undo, and cannot touch ann's labels
    back = store.undo(who["ann"])
    assert back.assignment_id == second.assignment_id
    assert store.next_for(who["ann"]).assignment_id == second.assignment_id
    assert store.last_decision(who["ann"]).choice == "a"
    assert store.submit(who["ann"], second.assignment_id, "b") == "recorded"
    assert count(store, "SELECT count(*) FROM labels") == 2
    assert count(store, "SELECT count(*) FROM pairs") == 2


def test_an_abandoned_pair_goes_to_the_next_annotator_after_its_lease(tmp_path):
    store, who, clock = make_store(tmp_path, lease_s=60)
    held = store.next_for(who["ann"])
    clock.now += 59
    assert store.next_for(who["bob"]).assignment_id != held.assignment_id  # lease still running
    clock.now += 2
    taken = store.next_for(who["cy"])
    assert taken.assignment_id == held.assignment_id  # the same row, handed over
    with pytest.raises(Refused) as err:
        store.submit(who["ann"], held.assignment_id, "a")
    assert err.value.status == 403
    assert store.submit(who["cy"], held.assignment_id, "a") == "recorded"
    assert store.next_for(who["ann"]).assignment_id != held.assignment_id
    assert count(store, "SELECT count(*) FROM assignments") == count(store, "SELECT count(*) FROM pairs")


def test_an_expired_but_unclaimed_pair_can_still_be_submitted(tmp_path):
    store, who, clock = make_store(tmp_path, lease_s=60)
    held = store.next_for(who["ann"])
    clock.now += 3600
    assert store.submit(who["ann"], held.assignment_id, "b") == "recorded"


def test_progress_counts_labels_toward_the_target(tmp_path):
    store, who, _ = make_store(tmp_path, target=3)
    for choice in ("a", "same", "b"):
        served = store.next_for(who["ann"])
        store.submit(who["ann"], served.assignment_id, choice)
    store.next_for(who["bob"])
    p = store.progress(who["ann"])
    assert (p.mine, p.mine_same, p.mine_skipped, p.counted, p.target, p.in_flight) == (3, 1, 0, 2, 3, 1)
    assert store.next_for(who["cy"]) is None  # 2 counted + 1 in flight = the target of 3


def test_redundancy_serves_each_pair_to_that_many_different_annotators(tmp_path):
    store, who, _ = make_store(tmp_path, redundancy=2)
    p1 = store.next_for(who["ann"])
    p2 = store.next_for(who["bob"])
    assert p2.pair_id == p1.pair_id and p2.slot == 1 and p2.assignment_id != p1.assignment_id
    p3 = store.next_for(who["cy"])
    assert p3.pair_id != p1.pair_id and p3.slot == 0
    store.submit(who["ann"], p1.assignment_id, "a")
    nxt = store.next_for(who["ann"])
    assert nxt.pair_id == p3.pair_id and nxt.slot == 1  # ann judges cy's pair, never p1 again


def test_the_database_refuses_duplicates_even_if_the_code_tried(tmp_path):
    store, who, _ = make_store(tmp_path)
    served = store.next_for(who["ann"])
    lo, hi = sorted((served.id_a, served.id_b))
    with store.engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.execute(
            sa.text(
                "INSERT INTO pairs (project_id, lo, hi, id_a, id_b, created_at) "
                "VALUES (:pr, :lo, :hi, :hi, :lo, 0)"
            ),
            {"pr": store.project.project_id, "lo": lo, "hi": hi},
        )
    with store.engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.execute(
            sa.text(
                "INSERT INTO assignments (project_id, pair_id, slot, annotator_id, status, started_at, "
                "served_at, expires_at) VALUES (:pr, :p, 0, :b, 'open', 0, 0, 0)"
            ),
            {"pr": store.project.project_id, "p": served.pair_id, "b": who["bob"].annotator_id},
        )


def test_iterative_through_the_store_moves_to_the_next_anchor_after_k_wins(tmp_path):
    store, who, _ = make_store(tmp_path, strategy="iterative", k=2)
    anchors = []
    for _ in range(4):
        served = store.next_for(who["ann"])
        anchor = store.sampler.anchor_order[len(anchors) // 2]
        assert anchor in (served.id_a, served.id_b)
        store.submit(who["ann"], served.assignment_id, "a" if served.id_a == anchor else "b")
        anchors.append(anchor)
    assert anchors[0] == anchors[1] != anchors[2] == anchors[3]
    assert store.progress(who["ann"]).counted == 4


def test_iterative_with_concurrent_annotators_keeps_its_invariants(tmp_path):
    import random
    import threading

    from popalign.label.counts import anchor_stats

    engine = make_engine(tmp_path / "labels.sqlite")
    ids = [f"q{i:02d}" for i in range(30)]
    project = open_project(engine, LabelSettings(strategy="iterative", k=2), "prefs", "fp", len(ids))
    store = LabelStore(engine, project, make_sampler(project, ids, None))
    people = [authenticate(engine, add_annotator(engine, f"w{i}")) for i in range(6)]
    errors: list[str] = []

    def work(who, seed):
        rng = random.Random(seed)
        try:
            for _ in range(15):
                served = store.next_for(who)
                if served is None:
                    return
                store.submit(who, served.assignment_id, rng.choice(("a", "b", "same")))
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(p, i)) for i, p in enumerate(people)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with engine.connect() as conn:
        stats = anchor_stats(conn, engine.popalign_tables, project.project_id)
        pairs = conn.execute(sa.text("SELECT count(*) FROM pairs")).scalar_one()
        distinct = conn.execute(sa.text("SELECT count(DISTINCT lo || '|' || hi) FROM pairs")).scalar_one()
        labels = conn.execute(sa.text("SELECT count(*) FROM labels")).scalar_one()
    assert pairs == distinct == labels == 90
    assert all(s.wins <= 2 and s.open == 0 and s.pairs <= project.max_candidates for s in stats.values())


def test_status_reports_agreement_with_redundancy(tmp_path):
    from popalign.label.status import format_status, project_status

    store, who, _ = make_store(tmp_path, redundancy=3)
    for name, choice in (("ann", "a"), ("bob", "a"), ("cy", "b")):
        served = store.next_for(who[name])
        assert served.pair_id == 1
        store.submit(who[name], served.assignment_id, choice)
    status = project_status(store.engine, store.project)
    # One pair, three judges: 1 of 3 judge pairs agree.
    assert status["agreement"]["pairs"] == 1 and status["agreement"]["pairwise"] == pytest.approx(1 / 3)
    assert status["exportable"] == 1 and status["counted"] == 1 and status["judgements"] == 3
    text = format_status(status)
    assert "agreement: 1 pairs with 2+ judges, pairwise 33.3%" in text
    assert [p["judgements"] for p in status["annotators"]] == [1, 1, 1]
