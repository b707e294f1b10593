"""What ``popalign probe`` does: features once, every arm cross-fitted, the analysis, the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from popalign.probe.config import ProbeConfig, selected_arms

if TYPE_CHECKING:
    from popalign.data.schema import PreferenceTable


def run_probe(table: PreferenceTable, cfg: ProbeConfig, out_dir: str | Path) -> dict[str, Any]:
    """Extract (or read) the features, cross-fit every arm, analyse, write the report; returns the summary."""
    import numpy as np

    from popalign.errors import DataError
    from popalign.probe.analysis import analyse
    from popalign.probe.crossfit import cross_fit
    from popalign.probe.features import table_features
    from popalign.probe.heads import LossSettings
    from popalign.probe.report import write_report

    if not table.has_scores:
        raise DataError(
            "the probe measures accuracy against score margins and builds PoP pairs from them; map "
            "score_chosen/score_rejected with --columns",
            file=table.source,
        )
    import torch

    started = time.monotonic()
    feats = table_features(table, cfg.model, cfg.features)
    extracted = time.monotonic()
    # The heads' matrices are small (batch x 2H): one thread is faster than several that wait on each other.
    torch.set_num_threads(1)
    seeds = list(range(cfg.seeds))
    fit = cross_fit(
        table,
        feats.chosen,
        feats.rejected,
        arms=selected_arms(cfg),
        folds=cfg.folds,
        seeds=seeds,
        head=cfg.head,
        pop=cfg.pop,
        loss=LossSettings(cfg.loss.margin, cfg.loss.max_margin),
    )
    fitted = time.monotonic()
    analysis = analyse(fit.predicted, table.margins)
    timing = {
        "features_seconds": round(extracted - started, 1),
        "heads_seconds": round(fitted - extracted, 1),
        "analysis_seconds": round(time.monotonic() - fitted, 1),
    }
    summary = {
        "data": {"source": table.source, "rows": len(table), "fingerprint": table.fingerprint(),
                 "ties": int(np.sum(table.margins == 0))},
        "features": feats.info,
        "arms_run": {name: fit.info[name] for name in fit.predicted},
        "not_run": fit.not_run,
        "timing": timing,
        **analysis,
    }  # fmt: skip
    write_report(out_dir, cfg, summary, fit, table.margins)
    return summary
