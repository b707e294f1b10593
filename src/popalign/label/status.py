"""What ``popalign label status`` and the admin page show: settings, progress, per-annotator counts."""

from __future__ import annotations

import time
from typing import Any

from popalign.label.export import agreement, judgements, label_rows
from popalign.label.project import Project
from popalign.label.store import counted_and_open


def project_status(engine: Any, project: Project | None, now: float | None = None) -> dict[str, Any]:
    """A JSON-able summary of the project in ``engine``."""
    import sqlalchemy as sa

    now = time.time() if now is None else now
    t = engine.popalign_tables
    a, ann = t["assignments"], t["annotators"]
    items = judgements(engine)
    with engine.connect() as conn:
        people = conn.execute(
            sa.select(ann.c.annotator_id, ann.c.name, ann.c.is_admin).order_by(ann.c.annotator_id)
        ).all()
        open_rows = conn.execute(
            sa.select(a.c.annotator_id, a.c.expires_at).where(a.c.status == "open")
        ).all()
        pairs = conn.execute(sa.select(sa.func.count()).select_from(t["pairs"])).scalar_one()
        iterative = project is not None and project.strategy == "iterative"
        counted, in_flight = counted_and_open(conn, t, iterative=iterative)
    per_person = []
    for pid, name, is_admin in people:
        mine = [j for j in items if j.annotator == name]
        per_person.append(
            {
                "name": name,
                "admin": bool(is_admin),
                "judgements": len(mine),
                "a": sum(j.choice == "a" for j in mine),
                "b": sum(j.choice == "b" for j in mine),
                "same": sum(j.choice == "same" for j in mine),
                "open": sum(r.annotator_id == pid for r in open_rows),
            }
        )
    return {
        "project": None if project is None else _settings(project),
        "pairs": int(pairs),
        "judgements": len(items),
        "counted": counted,
        "target": None if project is None else project.target,
        "in_flight": in_flight,
        "expired_leases": sum(r.expires_at < now for r in open_rows),
        "exportable": len(label_rows(items, project)),
        "annotators": per_person,
        "agreement": agreement(items),
    }


def _settings(project: Project) -> dict[str, Any]:
    keys = ("strategy", "k", "target", "min_gap", "max_candidates", "redundancy", "lease_s", "seed")
    out = {key: getattr(project, key) for key in keys}
    out.update(prefs=project.prefs, preferences=project.preferences, fingerprint=project.fingerprint)
    return out


def format_status(status: dict[str, Any]) -> str:
    """The summary as plain text for the terminal."""
    lines = []
    proj = status["project"]
    if proj is None:
        lines.append("project: not served yet (settings are fixed by the first `popalign label serve`)")
    else:
        lines.append(
            f"project: {proj['strategy']} sampling, k={proj['k']:g}, target {proj['target']:,}, "
            f"redundancy {proj['redundancy']}, min gap {proj['min_gap']:g}"
        )
        lines.append(f"data: {proj['prefs']} ({proj['preferences']:,} preferences, {proj['fingerprint']})")
        what = "anchor wins" if proj["strategy"] == "iterative" else "pairs labelled a or b"
        share = status["counted"] / proj["target"] if proj["target"] else 0.0
        lines.append(f"progress: {status['counted']:,} / {proj['target']:,} {what} ({share:.1%})")
    lines.append(
        f"pairs served: {status['pairs']:,}; judgements: {status['judgements']:,}; "
        f"in flight: {status['in_flight']:,} ({status['expired_leases']:,} leases expired); "
        f"rows an export writes: {status['exportable']:,}"
    )
    agree = status["agreement"]
    if agree["pairs"]:
        kappa = "n/a" if agree["fleiss_kappa"] is None else f"{agree['fleiss_kappa']:.3f}"
        lines.append(
            f"agreement: {agree['pairs']:,} pairs with 2+ judges, pairwise {agree['pairwise']:.1%}, "
            f"Fleiss' kappa {kappa}"
        )
    if status["annotators"]:
        lines.append("")
        lines.append(f"{'annotator':<24} {'judged':>7} {'a':>6} {'b':>6} {'same':>6} {'open':>5}")
        for p in status["annotators"]:
            name = p["name"] + (" (admin)" if p["admin"] else "")
            lines.append(
                f"{name:<24} {p['judgements']:>7,} {p['a']:>6,} {p['b']:>6,} {p['same']:>6,} {p['open']:>5,}"
            )
    else:
        lines.append("annotators: none yet (popalign label add-annotator NAME --db ...)")
    return "\n".join(lines)
