"""Skips, lease renewal, gold pairs, several projects in one database, sessions and per-annotator
agreement, on a SQLite file through the store."""

from __future__ import annotations

import numpy as np
import pytest

sa = pytest.importorskip("sqlalchemy")

from popalign.errors import PopalignError  # noqa: E402
from popalign.label.accounts import (  # noqa: E402
    add_annotator,
    authenticate,
    end_session,
    session_user,
    start_session,
)
from popalign.label.db import make_engine  # noqa: E402
from popalign.label.export import Judgement, annotator_agreement, cohen_kappa, label_rows  # noqa: E402
from popalign.label.project import LabelSettings, load_project, open_project  # noqa: E402
from popalign.label.sampling import GoldPair, gold_pairs  # noqa: E402
from popalign.label.status import project_status  # noqa: E402
from popalign.label.store import Refused  # noqa: E402
from tests.unit.test_label_store import IDS, count, make_store  # noqa: E402

# --- skip -----------------------------------------------------------------------------------------------


def test_a_skip_is_recorded_with_its_reason_and_is_never_a_label(tmp_path):
    from popalign.label.export import skipped

    store, who, clock = make_store(tmp_path, target=3)
    served = store.next_for(who["ann"])
    clock.now += 5
    assert store.skip(who["ann"], served.assignment_id, "broken", "  the reply is cut off ") == "skipped"
    assert store.skip(who["ann"], served.assignment_id, "broken") == "already skipped"  # a retry
    with pytest.raises(Refused) as err:
        store.submit(who["ann"], served.assignment_id, "a")
    assert err.value.status == 409
    assert count(store, "SELECT count(*) FROM labels") == 0
    p = store.progress(who["ann"])
    assert (p.mine, p.mine_skipped, p.counted, p.in_flight) == (0, 1, 0, 0)
    nxt = store.next_for(who["ann"])
    assert nxt.pair_id != served.pair_id  # a skipped pair is not shown again; another one is served
    rows = skipped(store.engine, store.project.project_id)
    assert [(r["id_a"], r["id_b"], r["annotator"], r["reason"], r["note"]) for r in rows] == [
        (served.id_a, served.id_b, "ann", "broken", "the reply is cut off")
    ]


def test_skips_are_checked_and_undo_brings_a_skipped_pair_back(tmp_path):
    store, who, _ = make_store(tmp_path)
    served = store.next_for(who["ann"])
    for reason, note, field in (("bored", None, "reason"), (None, None, "reason"), ("other", "", "note")):
        with pytest.raises(Refused, match=field) as err:
            store.skip(who["ann"], served.assignment_id, reason, note)
        assert err.value.status == 400
    with pytest.raises(Refused, match="note"):
        store.skip(who["ann"], served.assignment_id, "unsure", "x" * 501)
    with pytest.raises(Refused) as err:
        store.skip(who["bob"], served.assignment_id, "unsure")
    assert err.value.status == 403
    store.skip(who["ann"], served.assignment_id, "unsafe")
    assert store.last_decision(who["ann"]).choice == "skip"
    back = store.undo(who["ann"])
    assert back.assignment_id == served.assignment_id
    assert count(store, "SELECT count(*) FROM skips") == 0
    assert store.submit(who["ann"], served.assignment_id, "b") == "recorded"


# --- leases ---------------------------------------------------------------------------------------------


def test_renewing_keeps_a_slow_readers_pair_from_going_to_someone_else(tmp_path):
    store, who, clock = make_store(tmp_path, lease_s=60)
    held = store.next_for(who["ann"])
    for _ in range(5):  # five minutes on one pair, renewed every 40 s
        clock.now += 40
        assert store.renew(who["ann"], held.assignment_id).expires_at == clock.now + 60
        assert store.next_for(who["bob"]).assignment_id != held.assignment_id
    assert store.submit(who["ann"], held.assignment_id, "a") == "recorded"
    with pytest.raises(Refused) as err:
        store.renew(who["ann"], held.assignment_id)
    assert err.value.status == 409


def test_a_lapsed_lease_is_still_accepted_until_the_pair_is_given_to_someone_else(tmp_path):
    store, who, clock = make_store(tmp_path, lease_s=60)
    mine = store.next_for(who["ann"])
    theirs = store.next_for(who["bob"])
    clock.now += 3600
    assert store.submit(who["ann"], mine.assignment_id, "a") == "recorded"  # nobody took it
    assert store.next_for(who["cy"]).assignment_id == theirs.assignment_id  # bob's went to cy
    for call in (lambda: store.renew(who["bob"], theirs.assignment_id),
                 lambda: store.submit(who["bob"], theirs.assignment_id, "b")):  # fmt: skip
        with pytest.raises(Refused) as err:
            call()
        assert err.value.status == 403


# --- gold pairs -----------------------------------------------------------------------------------------


def test_gold_pairs_pair_the_top_and_bottom_quarter_by_margin():
    ids = [f"g{i}" for i in range(40)]
    margins = np.arange(40, dtype=float)
    pool = gold_pairs(ids, margins, seed=3, size=25)
    assert len(pool) == 25 and len({frozenset((g.id_a, g.id_b)) for g in pool}) == 25
    for g in pool:
        strong, weak = (g.id_a, g.id_b) if g.stronger == "a" else (g.id_b, g.id_a)
        assert int(strong[1:]) >= 30 and int(weak[1:]) < 10
    assert {g.stronger for g in pool} == {"a", "b"}  # the known answer is on either side
    assert gold_pairs(ids, margins, seed=3, size=25) == pool


def test_gold_pairs_are_mixed_in_and_measure_accuracy_but_never_count_or_export(tmp_path):
    gold = [GoldPair("p0", "p7", "b"), GoldPair("p6", "p1", "a")]
    store, who, _ = make_store(tmp_path, gold=gold, gold_fraction=0.5, target=20)
    served = []
    for name, answer in (("ann", "right"), ("bob", "wrong")):
        for _ in range(8):
            s = store.next_for(who[name])
            if s is None:
                break
            truth = next((g.stronger for g in gold if {g.id_a, g.id_b} == {s.id_a, s.id_b}), None)
            if truth is None:
                choice = "a"
            else:
                choice = truth if answer == "right" else ("b" if truth == "a" else "a")
            store.submit(who[name], s.assignment_id, choice)
            served.append((name, frozenset((s.id_a, s.id_b)), truth))
    golds = [s for s in served if s[2] is not None]
    # Both annotators met both gold pairs (each once), mixed in among the others.
    assert sorted((n, tuple(sorted(p))) for n, p, _ in golds) == [
        ("ann", ("p0", "p7")), ("ann", ("p1", "p6")), ("bob", ("p0", "p7")), ("bob", ("p1", "p6")),
    ]  # fmt: skip
    status = project_status(store.engine, store.project)
    by = {p["name"]: p for p in status["annotators"]}
    assert (by["ann"]["gold"], by["ann"]["gold_accuracy"]) == (2, 1.0)
    assert (by["bob"]["gold"], by["bob"]["gold_accuracy"]) == (2, 0.0)
    plain = len(served) - len(golds)
    assert status["counted"] == plain == status["pairs"] == 12  # gold pairs never count toward the target
    from popalign.label.export import judgements

    rows = label_rows(judgements(store.engine, store.project.project_id), store.project)
    assert len(rows) == plain and not any(
        {r["id_a"], r["id_b"]} in ({"p0", "p7"}, {"p1", "p6"}) for r in rows
    )


# --- projects and sessions --------------------------------------------------------------------------------


def test_two_projects_in_one_database_share_nothing(tmp_path):
    engine = make_engine(tmp_path / "labels.sqlite")
    one, p1, _ = make_store(tmp_path, project="one", engine=engine, target=3)
    two, p2, _ = make_store(tmp_path, project="two", engine=engine, strategy="iterative", k=1)
    assert (load_project(engine, "one").strategy, load_project(engine, "two").strategy) == (
        "random",
        "iterative",
    )
    assert p1["ann"].annotator_id != p2["ann"].annotator_id  # same name, two accounts
    a = one.next_for(p1["ann"])
    b = two.next_for(p2["ann"])
    # The same pair of ids may be served in both; each project has its own rows.
    with pytest.raises(Refused) as err:
        two.submit(p2["ann"], a.assignment_id, "a")
    assert err.value.status == 404
    one.submit(p1["ann"], a.assignment_id, "a")
    two.submit(p2["ann"], b.assignment_id, "b")
    assert one.progress(p1["ann"]).counted == 1
    assert project_status(engine, one.project)["judgements"] == 1
    assert [x["name"] for x in project_status(engine, two.project)["annotators"]] == ["ann", "bob", "cy"]
    with pytest.raises(PopalignError, match="project 'one' was set up with other settings"):
        open_project(engine, LabelSettings(strategy="iterative"), "prefs.jsonl", "fp", len(IDS), name="one")
    with pytest.raises(PopalignError, match="project name"):
        open_project(engine, LabelSettings(), "prefs.jsonl", "fp", len(IDS), name="../x")


def test_a_token_signs_in_only_to_its_own_project(tmp_path):
    engine = make_engine(tmp_path / "labels.sqlite")
    token = add_annotator(engine, "ann", project="one")
    add_annotator(engine, "ann", project="two")
    one = load_project_id(engine, "one")
    two = load_project_id(engine, "two")
    assert authenticate(engine, token, one).name == "ann"
    assert authenticate(engine, token, two) is None


def load_project_id(engine, name):
    from popalign.label.project import project_row

    with engine.connect() as conn:
        return project_row(conn, engine.popalign_tables, name).project_id


def test_sessions_end_on_sign_out_and_on_a_token_reset_and_expire(tmp_path):
    engine = make_engine(tmp_path / "labels.sqlite")
    token = add_annotator(engine, "ann")
    who = authenticate(engine, token)
    first, second = start_session(engine, who, now=0.0), start_session(engine, who)
    assert session_user(engine, first, who.project_id, now=1.0) == who
    assert session_user(engine, first, who.project_id + 1, now=1.0) is None  # another project
    assert session_user(engine, first, who.project_id, now=40 * 24 * 3600.0) is None  # expired
    end_session(engine, first)
    assert session_user(engine, first, who.project_id, now=1.0) is None
    assert session_user(engine, second, who.project_id) == who  # other sessions live on
    assert authenticate(engine, token) == who  # and the token still works for the API
    add_annotator(engine, "ann", reset=True)
    assert session_user(engine, second, who.project_id) is None
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT secret_hash FROM sessions")).scalars().all()
    assert first not in stored and second not in stored


# --- agreement per annotator ----------------------------------------------------------------------------


def test_cohen_kappa_worked_by_hand():
    # 10 items: both "a" 4 times, both "b" 3 times, (a, b) twice, (b, a) once.
    items = [("a", "a")] * 4 + [("b", "b")] * 3 + [("a", "b")] * 2 + [("b", "a")]
    # p_o = 7/10; first rater a 6, b 4; second a 5, b 5; p_e = (6*5 + 4*5) / 100 = 0.5.
    assert cohen_kappa(items) == pytest.approx((0.7 - 0.5) / 0.5)
    assert cohen_kappa([("a", "a")] * 3) is None  # chance agreement is certain: undefined
    assert cohen_kappa([]) is None
    assert cohen_kappa([("a", "b"), ("b", "a")]) == pytest.approx(-1.0)


def test_each_annotator_is_compared_with_everyone_on_the_same_pairs():
    def j(pair, name, choice):
        return Judgement(pair, "x", "y", None, name, choice, 0.0)

    items = [
        j(1, "ann", "a"),
        j(1, "bob", "a"),
        j(1, "cy", "b"),
        j(2, "ann", "b"),
        j(2, "bob", "b"),
        j(3, "cy", "a"),
    ]
    got = annotator_agreement(items)
    # ann: (a,a) with bob and (a,b) with cy on pair 1, (b,b) with bob on pair 2.
    assert got["ann"]["items"] == 3 and got["ann"]["agree"] == pytest.approx(2 / 3)
    # ann's answers a, a, b; the others' a, b, b: p_o = 2/3, p_e = (2*1 + 1*2) / 9 = 4/9.
    assert got["ann"]["kappa"] == pytest.approx((2 / 3 - 4 / 9) / (1 - 4 / 9))
    assert got["cy"]["items"] == 2 and got["cy"]["agree"] == 0.0
    assert set(got) == {"ann", "bob", "cy"}
    from popalign.label.export import pairwise_kappas

    pairs = {tuple(p["annotators"]): p for p in pairwise_kappas(items)}
    assert set(pairs) == {("ann", "bob"), ("ann", "cy"), ("bob", "cy")}
    assert pairs[("ann", "bob")]["pairs"] == 2 and pairs[("ann", "bob")]["kappa"] == pytest.approx(1.0)
    # ann vs cy on pair 1 only: (a, b); chance agreement 0, observed 0.
    assert pairs[("ann", "cy")]["pairs"] == 1 and pairs[("ann", "cy")]["kappa"] == pytest.approx(0.0)


def test_status_reports_median_seconds_per_label(tmp_path):
    store, who, clock = make_store(tmp_path)
    for wait in (10, 30, 20):
        s = store.next_for(who["ann"])
        clock.now += wait
        store.submit(who["ann"], s.assignment_id, "a")
    status = project_status(store.engine, store.project)
    ann = next(p for p in status["annotators"] if p["name"] == "ann")
    assert ann["median_seconds"] == 20 and status["median_seconds"] == 20


# --- the server's queue log -----------------------------------------------------------------------------


def test_queue_depth_warnings_fold_into_one_line_per_interval():
    import logging

    from popalign.label.server import QueueDepthSummary

    summary = QueueDepthSummary(every_s=3600)
    records = [
        logging.LogRecord(
            "waitress.queue", logging.WARNING, __file__, 1, "Task queue depth is %d", (d,), None
        )
        for d in (1, 5, 2, 9, 3)
    ]
    passed = [r for r in records if summary.filter(r)]
    assert len(passed) == 1 and passed[0].getMessage().startswith("requests are waiting for a free thread")
    assert "up to 1 queued (1 reports" in passed[0].getMessage()
    summary.last = float("-inf")  # the interval is over: the next line says the deepest since
    late = logging.LogRecord(
        "waitress.queue", logging.WARNING, __file__, 1, "Task queue depth is %d", (4,), None
    )
    assert summary.filter(late) and "up to 9 queued (5 reports" in late.getMessage()
