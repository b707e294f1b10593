"""K-fold cross-fitting for the real-model track (``folds``): every row scored by models that never saw it.

A real preference folder gives few test rows (200 on the UltraFeedback sample), too few to resolve the
accuracy differences the paper reports. With ``folds = K`` the train and test rows are pooled and split by
prompt into K folds (:func:`popalign.data.split.assign_folds`, as ``popalign probe`` does); each run is
trained K times, on K - 1 folds, and scores the held-out fold, so that every pooled row is scored out of
fold exactly once per seed. PoP pairs are built by the trainer from its fold's training rows only.

Each fold-run is an ordinary run of :func:`popalign.testbed.reproduce.ensure_run` (its own folder,
``done.json``, checkpoints: it resumes like any run) in :class:`FoldLayout`, whose data folder is the
fold's. Once every fold of a (run, seed) is done, :func:`pool` writes the seed's pooled out-of-fold
predictions where a run without folds writes its own (``runs/<name>/seed-<s>/eval``), with a
``done.json``; the report then reads a cross-fitted seed as any other (:mod:`popalign.testbed.results`),
so the discriminative figures and the seed-level verdicts are computed over the pooled predictions.

Layout under ``output_dir``: ``folds/folds.json`` (the assignment and its fingerprint), ``folds/fold-<j>/``
(``train.jsonl``: the other folds' rows; ``test.jsonl``: fold j), ``runs/<name>/seed-<s>/fold-<j>/`` (the
fold-runs), ``runs/<name>/seed-<s>/{done.json,eval/}`` (the pooled seed).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from popalign.data.split import assign_folds, prompt_key
from popalign.errors import PopalignError
from popalign.io import atomic_write_json, atomic_write_text
from popalign.testbed.plan import Layout, RunSpec
from popalign.testbed.settings import ReproduceConfig

MANIFEST = "folds.json"
PREDICTIONS = "discriminative_predictions.jsonl"
SPLITS = ("train", "test")
# Mean of the trainer's logged means of the margin in the loss (a PoP run's clipped PoP margin; 0 without).
MARGIN_LOG = "margin/used"

FoldRunner = Callable[["FoldLayout", Any], tuple[bool, dict[str, Any]]]


@dataclass(frozen=True)
class FoldLayout(Layout):
    """A :class:`Layout` whose data is fold ``fold``'s folder and whose runs sit in their seed's folder."""

    fold: int = 0

    def run(self, name: str, seed: int) -> Path:
        return super().run(name, seed) / f"fold-{self.fold}"


def fold_root(layout: Layout) -> Path:
    return layout.root / "folds"


def fold_layouts(cfg: ReproduceConfig, layout: Layout) -> list[FoldLayout]:
    root = fold_root(layout)
    return [FoldLayout(layout.root, root / f"fold-{j}", fold=j) for j in range(cfg.folds)]


def pooled_rows(source: Path) -> tuple[list[dict[str, Any]], list[Any]]:
    """The train then the test rows of ``source`` as read, each with a unique ``id`` (``<split>-<id>``),
    and their prompts as :func:`popalign.data.load.load_preferences` reads them (whatever the columns).

    The id is the row's own ``id`` when it has one, else its 0-based row number in the split (what
    ``load_preferences`` would give it), so train and test ids never collide.
    """
    from popalign.data.formats import read_rows
    from popalign.data.load import load_preferences

    rows, prompts = [], []
    for split in SPLITS:
        raw = read_rows(str(source), split)
        table = load_preferences(str(source), split=split, tie_policy="keep")[0]
        if len(table) != len(raw.rows):
            raise PopalignError(f"{source}: {split} has rows that are not preferences; fix or remove them")
        rows += [{**row, "id": f"{split}-{row.get('id', i)}"} for i, row in enumerate(raw.rows)]
        prompts += list(table.prompts)
    return rows, prompts


def _fingerprint(rows: list[dict[str, Any]], folds: np.ndarray, cfg: ReproduceConfig) -> str:
    text = json.dumps(
        {"k": cfg.folds, "seed": cfg.fold_seed, "rows": rows, "folds": folds.tolist()},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_folds(cfg: ReproduceConfig, layout: Layout) -> dict[str, Any]:
    """Write the K fold folders once; returns the manifest (ids in pooled order, fold of each).

    A manifest made from other data or fold settings is an error: the finished fold-runs would be mixed
    with new ones.
    """
    rows, prompts = pooled_rows(layout.data)
    folds = assign_folds(prompts, cfg.folds, cfg.fold_seed, source=str(layout.data))
    fingerprint = _fingerprint(rows, folds, cfg)
    root = fold_root(layout)
    path = root / MANIFEST
    if path.is_file():
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest["fingerprint"] != fingerprint:
            raise PopalignError(
                f"{path}: the folds were made from other data or fold settings; use another output_dir"
            )
        return manifest
    for j, fl in enumerate(fold_layouts(cfg, layout)):
        for split, keep in (("train", folds != j), ("test", folds == j)):
            lines = [json.dumps(r, ensure_ascii=False) for r, k in zip(rows, keep, strict=True) if k]
            atomic_write_text(fl.data / f"{split}.jsonl", "\n".join(lines) + "\n")
    manifest = {
        "fingerprint": fingerprint,
        "folds": cfg.folds,
        "fold_seed": cfg.fold_seed,
        "source": str(layout.data),
        "ids": [r["id"] for r in rows],
        "fold": folds.tolist(),
        "prompts": len({prompt_key(p) for p in prompts}),
    }
    atomic_write_json(path, manifest)  # last: its presence means every fold folder is complete
    return manifest


def ensure_crossfit_run(
    cfg: ReproduceConfig, layout: Layout, spec: RunSpec, seed: int, train_fold: FoldRunner
) -> tuple[bool, dict[str, Any]]:
    """Every fold-run of ``(spec, seed)`` (``train_fold(fold_layout, fold_train_table)``: train and score
    one), then the pooled seed; returns ``(ran_now, pooled done record)``.

    Finished fold-runs are skipped by ``train_fold`` itself, so an interruption costs at most the
    unfinished fold-run's progress since its last checkpoint.
    """
    from popalign.data.load import load_preferences

    manifest = json.loads((fold_root(layout) / MANIFEST).read_text(encoding="utf-8"))
    ran, records = False, []
    for fl in fold_layouts(cfg, layout):
        table = load_preferences(str(fl.data), split="train", tie_policy="keep")[0]
        now, record = train_fold(fl, table)
        ran, records = ran or now, [*records, record]
    return ran, pool(cfg, layout, spec, seed, manifest, records)


def pool(
    cfg: ReproduceConfig,
    layout: Layout,
    spec: RunSpec,
    seed: int,
    manifest: dict[str, Any],
    records: list[dict[str, Any]],
) -> dict[str, Any]:
    """Write the seed's pooled out-of-fold predictions and ``done.json`` (again only when a fold-run changed).

    Raises:
        PopalignError: when a pooled row is scored by no fold-run or by more than one.
    """
    from popalign.eval.discriminative import discriminative_metrics

    folder = layout.run(spec.name, seed)
    files = [fl.run(spec.name, seed) / "eval" / PREDICTIONS for fl in fold_layouts(cfg, layout)]
    # The folds, each fold-run's settings and its predictions themselves: a fold-run made again changes it.
    digest = hashlib.sha256(
        json.dumps([manifest["fingerprint"], *(r["fingerprint"] for r in records)]).encode()
    )
    for f in files:
        digest.update(f.read_bytes())
    fingerprint = digest.hexdigest()[:16]
    done = folder / "done.json"
    if done.is_file():
        old = json.loads(done.read_text(encoding="utf-8"))
        if old["fingerprint"] == fingerprint:
            return old
    start = time.time()
    by_id: dict[str, dict[str, Any]] = {}
    for fl, f in zip(fold_layouts(cfg, layout), files, strict=True):
        for row in _jsonl(f):
            if row["id"] in by_id:
                raise PopalignError(f"{folder}: row {row['id']} was scored by two fold-runs")
            by_id[str(row["id"])] = {**row, "fold": fl.fold}
    missing = [i for i in manifest["ids"] if i not in by_id]
    if missing or len(by_id) != len(manifest["ids"]):
        raise PopalignError(
            f"{folder}: {len(missing)} pooled rows were scored by no fold-run, e.g. {missing[:3]}"
        )
    rows = [by_id[i] for i in manifest["ids"]]
    predicted = np.array([r["predicted_margin"] for r in rows], dtype=np.float64)
    truth = np.array([r["gt_margin"] for r in rows], dtype=np.float64)
    out = folder / "eval"
    atomic_write_text(out / PREDICTIONS, "".join(json.dumps(r) + "\n" for r in rows))
    metrics = discriminative_metrics(predicted, truth, n_resamples=cfg.bootstrap, seed=seed)
    atomic_write_json(out / "discriminative.json", {**metrics, "out_of_fold": True, "folds": cfg.folds})
    fold_runs = [fl.run(spec.name, seed) for fl in fold_layouts(cfg, layout)]
    record = {
        "fingerprint": fingerprint,
        **spec.identity(seed),
        # Optimiser steps of all K fold models together; each fold's own count beside it.
        "steps": sum(r["steps"] for r in records),
        "fold_steps": [r["steps"] for r in records],
        "curve_steps": [],
        "pop_labels": None,
        "train_loss": float(np.mean([r["train_loss"] for r in records])),
        "pop_margin": [mean_logged(f / "trainer_state.json", MARGIN_LOG) for f in fold_runs],
        "tokenize": [_tokenize_stats(f) for f in fold_runs],
        "seconds": sum(r["seconds"] for r in records) + time.time() - start,
    }
    atomic_write_json(done, record)
    return record


def mean_logged(state_file: Path, key: str) -> float | None:
    """The mean of ``key`` over a run's training logs (``None`` when it never logged it)."""
    history = (
        json.loads(state_file.read_text(encoding="utf-8"))["log_history"] if state_file.is_file() else []
    )
    values = [h[key] for h in history if key in h]
    return float(np.mean(values)) if values else None


def _tokenize_stats(run_folder: Path) -> dict[str, Any]:
    """Rows and truncated rows of a fold-run's training data, as the trainer recorded them."""
    info = json.loads((run_folder / "run_info.json").read_text(encoding="utf-8"))
    return {k: info["tokenize"][k] for k in ("rows", "truncated_rows")}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
