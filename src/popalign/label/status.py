"""What ``popalign label status`` and the admin page show: settings, progress, and per annotator their
counts, skips, accuracy on gold pairs, agreement with the others and median seconds per label."""

from __future__ import annotations

import statistics
import time
from typing import Any

from popalign.label.counts import counted_and_open
from popalign.label.export import agreement, annotator_agreement, judgements, label_rows, pairwise_kappas
from popalign.label.project import SETTING_KEYS, Project


def project_status(
    engine: Any, project: Project | None, now: float | None = None, project_id: int | None = None
) -> dict[str, Any]:
    """A JSON-able summary of ``project``; for one not served yet (``None``), of ``project_id``'s
    annotators."""
    import sqlalchemy as sa

    now = time.time() if now is None else now
    t = engine.popalign_tables
    project_id = project.project_id if project is not None else (project_id or 0)
    a, ann, p, sk = t["assignments"], t["annotators"], t["pairs"], t["skips"]
    items = judgements(engine, project_id)
    with engine.connect() as conn:
        people = conn.execute(
            sa.select(ann.c.annotator_id, ann.c.name, ann.c.is_admin)
            .where(ann.c.project_id == project_id)
            .order_by(ann.c.annotator_id)
        ).all()
        open_rows = conn.execute(
            sa.select(a.c.annotator_id, a.c.expires_at).where(
                a.c.project_id == project_id, a.c.status == "open"
            )
        ).all()
        skips = conn.execute(
            sa.select(sk.c.annotator_id, sa.func.count().label("n"))
            .join(p, p.c.pair_id == sk.c.pair_id)
            .where(p.c.project_id == project_id)
            .group_by(sk.c.annotator_id)
        ).all()
        pairs = conn.execute(
            sa.select(sa.func.count()).select_from(p).where(p.c.project_id == project_id, p.c.gold.is_(None))
        ).scalar_one()
        iterative = project is not None and project.strategy == "iterative"
        gold = project is not None and project.gold_fraction > 0
        counted, in_flight = counted_and_open(conn, t, project_id, iterative=iterative, gold=gold)
    skipped = {r.annotator_id: int(r.n) for r in skips}
    agree = annotator_agreement(items)
    per_person = []
    for pid, name, is_admin in people:
        mine = [j for j in items if j.annotator == name]
        gold = [j for j in mine if j.gold is not None]
        seconds = [j.seconds for j in mine if j.seconds is not None]
        per_person.append(
            {
                "name": name,
                "admin": bool(is_admin),
                "judgements": len(mine),
                "a": sum(j.choice == "a" for j in mine),
                "b": sum(j.choice == "b" for j in mine),
                "same": sum(j.choice == "same" for j in mine),
                "skipped": skipped.get(pid, 0),
                "open": sum(r.annotator_id == pid for r in open_rows),
                "gold": len(gold),
                "gold_accuracy": sum(j.choice == j.gold for j in gold) / len(gold) if gold else None,
                "kappa": agree.get(name, {}).get("kappa"),
                "kappa_items": agree.get(name, {}).get("items", 0),
                "median_seconds": statistics.median(seconds) if seconds else None,
            }
        )
    all_seconds = [j.seconds for j in items if j.seconds is not None]
    return {
        "project": None if project is None else _settings(project),
        "pairs": int(pairs),
        "judgements": len(items),
        "counted": counted,
        "target": None if project is None else project.target,
        "in_flight": in_flight,
        "expired_leases": sum(r.expires_at < now for r in open_rows),
        "exportable": len(label_rows(items, project)),
        "skipped": sum(skipped.values()),
        "median_seconds": statistics.median(all_seconds) if all_seconds else None,
        "annotators": per_person,
        "agreement": {**agreement(items), "pairwise_kappa": pairwise_kappas(items)},
    }


def _settings(project: Project) -> dict[str, Any]:
    out = {key: getattr(project, key) for key in SETTING_KEYS}
    out.update(
        name=project.name,
        prefs=project.prefs,
        preferences=project.preferences,
        fingerprint=project.fingerprint,
    )
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_status(status: dict[str, Any]) -> str:
    """The summary as plain text for the terminal."""
    lines = []
    proj = status["project"]
    if proj is None:
        lines.append("project: not served yet (settings are fixed by the first `popalign label serve`)")
    else:
        gold = f", gold {proj['gold_fraction']:.0%}" if proj["gold_fraction"] else ""
        lines.append(
            f"project {proj['name']}: {proj['strategy']} sampling, k={proj['k']:g}, "
            f"target {proj['target']:,}, redundancy {proj['redundancy']}, min gap {proj['min_gap']:g}{gold}"
        )
        lines.append(f"data: {proj['prefs']} ({proj['preferences']:,} preferences, {proj['fingerprint']})")
        what = "anchor wins" if proj["strategy"] == "iterative" else "pairs labelled a or b"
        share = status["counted"] / proj["target"] if proj["target"] else 0.0
        lines.append(f"progress: {status['counted']:,} / {proj['target']:,} {what} ({share:.1%})")
    lines.append(
        f"pairs served: {status['pairs']:,}; judgements: {status['judgements']:,}; "
        f"skipped: {status['skipped']:,}; in flight: {status['in_flight']:,} "
        f"({status['expired_leases']:,} leases expired); rows an export writes: {status['exportable']:,}; "
        f"median {_fmt(status['median_seconds'], '.1f')} s per label"
    )
    agree = status["agreement"]
    if agree["pairs"]:
        kappa = _fmt(agree["fleiss_kappa"], ".3f")
        lines.append(
            f"agreement: {agree['pairs']:,} pairs with 2+ judges, pairwise {agree['pairwise']:.1%}, "
            f"Fleiss' kappa {kappa}"
        )
    if status["annotators"]:
        lines.append("")
        lines.append(
            f"{'annotator':<24} {'judged':>7} {'a':>6} {'b':>6} {'same':>6} {'skip':>5} {'open':>5} "
            f"{'gold acc':>9} {'kappa':>6} {'med s':>6}"
        )
        for p in status["annotators"]:
            name = p["name"] + (" (admin)" if p["admin"] else "")
            gold = "-" if p["gold_accuracy"] is None else f"{p['gold_accuracy']:.0%} /{p['gold']}"
            lines.append(
                f"{name:<24} {p['judgements']:>7,} {p['a']:>6,} {p['b']:>6,} {p['same']:>6,} "
                f"{p['skipped']:>5,} {p['open']:>5,} {gold:>9} {_fmt(p['kappa'], '.2f'):>6} "
                f"{_fmt(p['median_seconds'], '.1f'):>6}"
            )
    else:
        lines.append("annotators: none yet (popalign label add-annotator NAME --db ...)")
    return "\n".join(lines)
