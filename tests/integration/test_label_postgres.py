"""The same store on PostgreSQL, through a connection URL instead of a SQLite file.

Runs against ``POPALIGN_TEST_POSTGRES_URL`` (a scratch database: its label tables are dropped first),
e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/labels``, or a throwaway local cluster started
from Debian's ``postgresql`` package (:mod:`tests.integration._label_postgres`); skips, saying why,
when neither is there.
"""

from __future__ import annotations

import json
import threading

import pytest

sa = pytest.importorskip("sqlalchemy")

from popalign.label.accounts import add_annotator, authenticate  # noqa: E402
from popalign.label.db import build_metadata  # noqa: E402
from popalign.label.export import export_labels  # noqa: E402
from popalign.label.project import LabelSettings  # noqa: E402
from popalign.label.server import build_context  # noqa: E402
from tests.integration._label_postgres import postgres_url  # noqa: E402

THREADS = 8
PER_THREAD = 25


@pytest.fixture()
def url():
    return postgres_url()


@pytest.fixture()
def prefs(tmp_path, url):
    rows = [{"id": f"p{i}", "prompt": f"q{i}", "chosen": "c", "rejected": "r"} for i in range(40)]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    engine = sa.create_engine(url)
    build_metadata().drop_all(engine)
    engine.dispose()
    return path


def test_concurrent_annotators_on_postgres_lose_nothing_and_share_no_pair(prefs, url, tmp_path):
    from popalign.label.store import Refused

    ctx = build_context(url, prefs, LabelSettings(target=THREADS * PER_THREAD))
    store = ctx.store
    people = [authenticate(store.engine, add_annotator(store.engine, f"ann{i}")) for i in range(THREADS)]
    accepted, errors = [], []

    def work(who):
        try:
            for _ in range(PER_THREAD):
                served = store.next_for(who)
                assert store.submit(who, served.assignment_id, "a") == "recorded"
                accepted.append((who.name, frozenset((served.id_a, served.id_b))))
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(p,)) for p in people]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(accepted) == len({pair for _, pair in accepted}) == THREADS * PER_THREAD
    assert store.next_for(people[0]) is None
    with store.engine.connect() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM labels")).scalar_one()
        theirs = conn.execute(
            sa.text("SELECT min(assignment_id) FROM assignments WHERE annotator_id = :a"),
            {"a": people[0].annotator_id},
        ).scalar_one()
    with pytest.raises(Refused) as err:
        store.submit(people[1], theirs, "b")
    assert err.value.status == 403
    assert n == THREADS * PER_THREAD
    counts = export_labels(store.engine, ctx.project, tmp_path / "out.jsonl")
    assert counts["rows"] == THREADS * PER_THREAD
