"""From recorded judgements to the PoP label file, plus agreement and status figures.

The export is the ``(id_a, id_b, stronger)`` file that :func:`popalign.pop.labels.load_pop_labels`
reads (so ``popalign pop import-labels`` and ``popalign train pop_labels=...`` accept it): one row per
pair, ``stronger`` ``"a"`` or ``"b"``. "About the same" is no label (the paper withholds near-ties).
With several judges per pair the majority of a/b votes decides; a tie, or a majority for "about the
same", gives no row. Iterative projects export the anchors' wins only by default, as the paper keeps
exactly the ``k`` pairs in which the anchor was judged stronger; ``all_pairs`` keeps the rest too.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from popalign.errors import PopalignError
from popalign.io import atomic_open, atomic_path
from popalign.label.db import read_txn
from popalign.label.project import Project
from popalign.pop.labels import LABEL_COLUMNS, LABEL_FORMATS


@dataclass(frozen=True)
class Judgement:
    pair_id: int
    id_a: str
    id_b: str
    anchor: str | None
    annotator: str
    choice: str
    created_at: float


def judgements(engine: Any) -> list[Judgement]:
    """Every recorded judgement, oldest first."""
    import sqlalchemy as sa

    t = engine.popalign_tables
    lab, p, ann = t["labels"], t["pairs"], t["annotators"]
    with read_txn(engine) as conn:
        rows = conn.execute(
            sa.select(
                lab.c.pair_id, p.c.id_a, p.c.id_b, p.c.anchor, ann.c.name, lab.c.choice, lab.c.created_at
            )
            .join(p, p.c.pair_id == lab.c.pair_id)
            .join(ann, ann.c.annotator_id == lab.c.annotator_id)
            .order_by(lab.c.label_id)
        ).all()
    return [Judgement(*r) for r in rows]


def _by_pair(items: list[Judgement]) -> dict[int, list[Judgement]]:
    grouped: dict[int, list[Judgement]] = defaultdict(list)
    for j in items:
        grouped[j.pair_id].append(j)
    return grouped


def majority(choices: list[str]) -> str | None:
    """``"a"`` or ``"b"`` if it has more votes than the other and than "same"; else ``None``."""
    votes = Counter(choices)
    a, b, same = votes["a"], votes["b"], votes["same"]
    if a > b and a > same:
        return "a"
    if b > a and b > same:
        return "b"
    return None


def label_rows(items: list[Judgement], project: Project | None, all_pairs: bool = False) -> list[dict]:
    """The export rows ``{"id_a", "id_b", "stronger"}``, in the order the pairs were first judged."""
    iterative_only_wins = project is not None and project.strategy == "iterative" and not all_pairs
    rows = []
    for group in _by_pair(items).values():
        first = group[0]
        stronger = majority([j.choice for j in group])
        if stronger is None:
            continue
        if iterative_only_wins:
            winner = first.id_a if stronger == "a" else first.id_b
            if first.anchor is not None and winner != first.anchor:
                continue
        rows.append({"id_a": first.id_a, "id_b": first.id_b, "stronger": stronger})
    return rows


def agreement(items: list[Judgement]) -> dict[str, Any]:
    """Inter-annotator agreement over pairs with two or more judges.

    ``pairwise`` is the share of judge pairs on the same pair that gave the same answer (a, b or
    same); ``fleiss_kappa`` corrects it for chance (Fleiss, 1971, with a varying number of judges per
    pair): ``(P_bar - P_e) / (1 - P_e)`` where ``P_e`` is the sum of squared overall answer shares.
    ``None`` where nothing is defined.
    """
    groups = [g for g in _by_pair(items).values() if len(g) >= 2]
    if not groups:
        return {"pairs": 0, "judgements": 0, "pairwise": None, "fleiss_kappa": None}
    agree = total = 0
    per_item = []
    shares: Counter[str] = Counter()
    for g in groups:
        counts = Counter(j.choice for j in g)
        n = len(g)
        same_answer = sum(c * (c - 1) for c in counts.values())
        agree += same_answer // 2
        total += n * (n - 1) // 2
        per_item.append(same_answer / (n * (n - 1)))
        shares.update(counts)
    n_all = sum(shares.values())
    p_e = sum((c / n_all) ** 2 for c in shares.values())
    p_bar = sum(per_item) / len(per_item)
    kappa = None if p_e >= 1.0 else (p_bar - p_e) / (1.0 - p_e)
    return {
        "pairs": len(groups),
        "judgements": n_all,
        "pairwise": agree / total,
        "fleiss_kappa": kappa,
    }


def write_labels(rows: list[dict], path: str | Path) -> Path:
    """Write the rows as ``.jsonl``, ``.csv`` or ``.parquet`` (by suffix), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LABEL_FORMATS:
        raise PopalignError(f"the label file must end in {', '.join(LABEL_FORMATS)} (got {path.name})")
    if suffix == ".jsonl":
        with atomic_open(path, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif suffix == ".csv":
        with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=LABEL_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {name: pa.array([r[name] for r in rows], type=pa.string()) for name in LABEL_COLUMNS}
        with atomic_path(path) as tmp:
            pq.write_table(pa.table(columns), tmp)
    return path


def export_labels(engine: Any, project: Project | None, path: str | Path, all_pairs: bool = False) -> dict:
    """Write the PoP label file; returns counts (``rows``, ``judgements``, ``pairs``, ``without_label``)."""
    items = judgements(engine)
    rows = label_rows(items, project, all_pairs=all_pairs)
    write_labels(rows, path)
    pairs = len(_by_pair(items))
    return {"rows": len(rows), "judgements": len(items), "pairs": pairs, "without_label": pairs - len(rows)}
