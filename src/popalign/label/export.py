"""From recorded judgements to the PoP label file, plus agreement and status figures.

The export is the ``(id_a, id_b, stronger)`` file that :func:`popalign.pop.labels.load_pop_labels`
reads (so ``popalign pop import-labels`` and ``popalign train pop_labels=...`` accept it): one row per
pair, ``stronger`` ``"a"`` or ``"b"``. "About the same" is no label (the paper withholds near-ties).
With several judges per pair the majority of a/b votes decides; a tie, or a majority for "about the
same", gives no row. Iterative projects export the anchors' wins only by default, as the paper keeps
exactly the ``k`` pairs in which the anchor was judged stronger; ``all_pairs`` keeps the rest too.
Gold pairs (quality control) are left out: their answers measure annotators, they are not sampled.

:func:`export_hf` writes the same rows as a ``datasets`` folder (``save_to_disk``) with who judged each
pair, their answers and seconds; :func:`write_skips` writes the skipped pairs with their reasons.
Agreement: Fleiss' kappa over all pairs with several judges, and per annotator Cohen's kappa against
everyone who judged the same pairs (:func:`annotator_agreement`).
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from popalign.errors import PopalignError
from popalign.io import atomic_open
from popalign.label.db import read_txn
from popalign.label.project import Project
from popalign.pop.agreement import cohen_kappa
from popalign.pop.labels import LABEL_COLUMNS, write_labels

SKIP_FORMATS = (".jsonl", ".csv")
SKIP_COLUMNS = ("id_a", "id_b", "annotator", "reason", "note", "created_at")


@dataclass(frozen=True)
class Judgement:
    pair_id: int
    id_a: str
    id_b: str
    anchor: str | None
    annotator: str
    choice: str
    created_at: float
    gold: str | None = None
    seconds: float | None = None  # from being given the pair to the label


def judgements(engine: Any, project_id: int) -> list[Judgement]:
    """Every recorded judgement of the project, oldest first."""
    import sqlalchemy as sa

    t = engine.popalign_tables
    lab, p, ann, a = t["labels"], t["pairs"], t["annotators"], t["assignments"]
    with read_txn(engine) as conn:
        rows = conn.execute(
            sa.select(
                lab.c.pair_id,
                p.c.id_a,
                p.c.id_b,
                p.c.anchor,
                ann.c.name,
                lab.c.choice,
                lab.c.created_at,
                p.c.gold,
                (lab.c.created_at - a.c.started_at).label("seconds"),
            )
            .join(p, p.c.pair_id == lab.c.pair_id)
            .join(a, a.c.assignment_id == lab.c.assignment_id)
            .join(ann, ann.c.annotator_id == lab.c.annotator_id)
            .where(p.c.project_id == project_id)
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
    return [row for row, _ in _rows_with_groups(items, project, all_pairs)]


def _rows_with_groups(
    items: list[Judgement], project: Project | None, all_pairs: bool
) -> list[tuple[dict, list[Judgement]]]:
    iterative_only_wins = project is not None and project.strategy == "iterative" and not all_pairs
    out = []
    for group in _by_pair(items).values():
        first = group[0]
        if first.gold is not None:
            continue
        stronger = majority([j.choice for j in group])
        if stronger is None:
            continue
        if iterative_only_wins:
            winner = first.id_a if stronger == "a" else first.id_b
            if first.anchor is not None and winner != first.anchor:
                continue
        out.append(({"id_a": first.id_a, "id_b": first.id_b, "stronger": stronger}, group))
    return out


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


def annotator_agreement(items: list[Judgement]) -> dict[str, dict[str, Any]]:
    """Per annotator, agreement with the others who judged the same pairs.

    Every (pair, other judge) gives one item — this annotator's answer and the other's — and
    ``kappa`` is Cohen's kappa over those items; ``items`` counts them and ``agree`` is the share of
    equal answers. Annotators who share no pair with anyone are left out.
    """
    per: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for group in _by_pair(items).values():
        for mine in group:
            per[mine.annotator].extend(
                (mine.choice, o.choice) for o in group if o.annotator != mine.annotator
            )
    return {
        name: {
            "items": len(pairs),
            "agree": sum(x == y for x, y in pairs) / len(pairs),
            "kappa": cohen_kappa(pairs),
        }
        for name, pairs in per.items()
        if pairs
    }


def pairwise_kappas(items: list[Judgement]) -> list[dict[str, Any]]:
    """Cohen's kappa for every two annotators who judged at least one pair in common:
    ``{"annotators": [x, y], "pairs": n, "kappa": k}``, by name."""
    answers: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for group in _by_pair(items).values():
        for x in group:
            for y in group:
                if x.annotator < y.annotator:
                    answers[(x.annotator, y.annotator)].append((x.choice, y.choice))
    return [
        {"annotators": list(names), "pairs": len(pairs), "kappa": cohen_kappa(pairs)}
        for names, pairs in sorted(answers.items())
    ]


def export_labels(engine: Any, project: Project, path: str | Path, all_pairs: bool = False) -> dict:
    """Write the PoP label file; returns counts (``rows``, ``judgements``, ``pairs``, ``without_label``)."""
    items = judgements(engine, project.project_id)
    rows = label_rows(items, project, all_pairs=all_pairs)
    write_labels(rows, path)
    return _counts(items, len(rows))


def skipped(engine: Any, project_id: int) -> list[dict[str, Any]]:
    """Every skip of the project, oldest first: ``SKIP_COLUMNS``."""
    import sqlalchemy as sa

    t = engine.popalign_tables
    sk, p, ann = t["skips"], t["pairs"], t["annotators"]
    with read_txn(engine) as conn:
        rows = conn.execute(
            sa.select(
                p.c.id_a, p.c.id_b, ann.c.name.label("annotator"), sk.c.reason, sk.c.note, sk.c.created_at
            )
            .join(p, p.c.pair_id == sk.c.pair_id)
            .join(ann, ann.c.annotator_id == sk.c.annotator_id)
            .where(p.c.project_id == project_id)
            .order_by(sk.c.skip_id)
        ).all()
    return [dict(r._mapping) for r in rows]


def write_skips(engine: Any, project_id: int, path: str | Path) -> Path:
    """The skipped pairs with annotator, reason and note as ``.jsonl`` or ``.csv``, atomically."""
    path = Path(path)
    if path.suffix.lower() not in SKIP_FORMATS:
        raise PopalignError(f"the skips file must end in {', '.join(SKIP_FORMATS)} (got {path.name})")
    rows = skipped(engine, project_id)
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        if path.suffix.lower() == ".csv":
            writer = csv.DictWriter(fh, fieldnames=SKIP_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        else:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def hf_records(items: list[Judgement], project: Project | None, all_pairs: bool = False) -> list[dict]:
    """The export rows plus, per pair, who judged it, their answers, seconds and the vote counts."""
    out = []
    for row, group in _rows_with_groups(items, project, all_pairs):
        votes = Counter(j.choice for j in group)
        out.append(
            {
                **row,
                "anchor": group[0].anchor,
                "annotators": [j.annotator for j in group],
                "choices": [j.choice for j in group],
                "seconds": [None if j.seconds is None else float(j.seconds) for j in group],
                "votes_a": votes["a"],
                "votes_b": votes["b"],
                "votes_same": votes["same"],
            }
        )
    return out


def export_hf(engine: Any, project: Project, out_dir: str | Path, all_pairs: bool = False) -> dict:
    """Write the labels as a ``datasets`` folder (``Dataset.save_to_disk``), replacing ``out_dir`` whole.

    ``datasets.load_from_disk(out_dir)`` gives one row per exported pair; ``popalign pop import-labels
    out_dir`` reads its ``id_a``, ``id_b`` and ``stronger``. The project's settings are the dataset's
    description. Returns counts as :func:`export_labels` does.
    """
    import shutil
    import tempfile

    import datasets

    items = judgements(engine, project.project_id)
    records = hf_records(items, project, all_pairs)
    features = datasets.Features(
        {
            **{name: datasets.Value("string") for name in (*LABEL_COLUMNS, "anchor")},
            "annotators": datasets.Sequence(datasets.Value("string")),
            "choices": datasets.Sequence(datasets.Value("string")),
            "seconds": datasets.Sequence(datasets.Value("float64")),
            **{name: datasets.Value("int64") for name in ("votes_a", "votes_b", "votes_same")},
        }
    )
    about = f"PoP labels collected with popalign label, project {project.name!r}: {project.to_json()}"
    info = datasets.DatasetInfo(description=about, features=features)
    # Column-wise, so that no records still give every column: from_list([]) infers no columns and
    # then fails against the declared features.
    columns = {name: [r[name] for r in records] for name in features}
    ds = datasets.Dataset.from_dict(columns, features=features, info=info)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and not (out_dir / "state.json").is_file():
        raise PopalignError(f"{out_dir} exists and is not a datasets folder; choose another -o")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        # An empty dataset would otherwise be saved as zero shards, which load_from_disk cannot read.
        ds.save_to_disk(str(tmp / "ds"), num_shards=1 if len(ds) == 0 else None)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        (tmp / "ds").rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _counts(items, len(records))


def _counts(items: list[Judgement], rows: int) -> dict[str, int]:
    pairs = len({j.pair_id for j in items if j.gold is None})
    return {"rows": rows, "judgements": len(items), "pairs": pairs, "without_label": pairs - rows}
