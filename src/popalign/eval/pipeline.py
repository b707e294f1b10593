"""What each ``popalign eval`` sub-command does, as plain functions: load, score, compute, write.

Each function evaluates one or more targets and writes into each target's evaluation folder:
``--out`` for a single target, ``--out/<name>`` for several, else ``<model_dir>/eval``.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from popalign.errors import PopalignError
from popalign.eval import report as rep
from popalign.eval.kinds import get_kind
from popalign.io import atomic_open, atomic_write_json


@dataclass
class ScoringOptions:
    """How models are loaded and scored (see :func:`popalign.eval.scoring.load_scorer`)."""

    kind: str = "auto"
    reference: str | None = None
    beta: float | None = None
    score_fn: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    batch_size: int = 8
    max_length: int | None = None
    max_prompt_length: int | None = None
    # Where the reference's log-probs are cached (like training's reference.cache_dir): evaluating several
    # policies of one reference on the same data then runs the reference once. None: no cache.
    reference_cache_dir: str | None = None


@dataclass
class BootstrapOptions:
    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0


@dataclass
class Target:
    """One thing to evaluate: a model folder (or None for a scoring function), its name and output folder."""

    model: str | None
    name: str
    out: Path
    extra: dict[str, Any] = field(default_factory=dict)


def plan_targets(models: list[str], out: str | None, names: list[str] | None = None) -> list[Target]:
    """Name and output folder of each model (``[]`` with ``out`` set means one scoring-function target)."""
    if not models:
        if not out:
            raise PopalignError("without a model folder, say where results go with --out")
        return [Target(None, (names or [Path(out).resolve().name])[0], Path(out))]
    if names and len(names) != len(models):
        raise PopalignError(f"--name was given {len(names)} times for {len(models)} models")
    targets = []
    for i, model in enumerate(models):
        name = names[i] if names else Path(model).resolve().name
        if out and len(models) == 1:
            folder = Path(out)
        elif out:
            folder = Path(out) / name
        else:
            folder = Path(model) / rep.EVAL_DIR
        targets.append(Target(model, name, folder))
    if len({t.name for t in targets}) != len(targets):
        raise PopalignError("two models share a name; pass --name for each")
    return targets


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    import json

    with atomic_open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _scorer(target: Target, opts: ScoringOptions):
    from popalign.eval.scoring import load_scorer

    o = asdict(opts)
    return load_scorer(target.model, **o)


def _release() -> None:
    # Two models per target (policy and reference) would otherwise pile up across targets.
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def _data_record(table, report=None, **extra: Any) -> dict[str, Any]:
    rec = {"source": table.source, "rows": len(table), "fingerprint": table.fingerprint(), **extra}
    if report is not None:
        rec["skipped"] = report.skipped
    return rec


def eval_data(data: Any, split: str | None = None, columns: str | None = None, limit: int | None = None):
    """The :class:`DataSpec` of evaluation data: ``data`` itself, or a path with the given options.

    Ties are kept (evaluation reports them apart from accuracy); an unset split reads a folder's ``test``.
    """
    from popalign.data.load import DataSpec, parse_column_map
    from popalign.data.spec import EVAL_DEFAULTS

    if isinstance(data, DataSpec):
        return data
    cols = parse_column_map(columns) if columns else {}
    tie_policy = EVAL_DEFAULTS["tie_policy"]
    return DataSpec(path=str(data), split=split, columns=cols, limit=limit or None, tie_policy=tie_policy)


def load_eval_table(spec: Any):
    """``(table, report)`` of evaluation data (a folder's ``test`` split unless ``spec.split`` says)."""
    from popalign.data.load import load_preferences
    from popalign.data.spec import EVAL_DEFAULTS

    return load_preferences(spec, default_split=EVAL_DEFAULTS["split"])


def _overlap(table, target: Target) -> dict[str, Any] | None:
    """Rows of ``table`` the target's run trained on, with a loud warning on screen when there are any."""
    import sys

    from popalign.data.overlap import overlap_warning, training_overlap

    overlap = training_overlap(table, target.model)
    warning = overlap_warning(overlap)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return overlap


def _score(table, target: Target, scoring: ScoringOptions, progress: bool):
    """``(training overlap, scorer info, chosen rewards, rejected rewards)`` of one target on ``table``."""
    overlap = _overlap(table, target)
    scorer, info = _scorer(target, scoring)
    chosen, rejected = scorer.rewards(table, progress=progress)
    del scorer
    _release()
    return overlap, info, chosen, rejected


def run_discriminative(
    models: list[str],
    data: Any,
    *,
    split: str | None = None,
    columns: str | None = None,
    limit: int | None = None,
    out: str | None = None,
    names: list[str] | None = None,
    compare: list[str] | None = None,
    scoring: ScoringOptions | None = None,
    boot: BootstrapOptions | None = None,
    progress: bool = True,
    plots: bool = True,
) -> list[dict[str, Any]]:
    """Predicted margins, accuracy and correlations of each model on test preferences (Section 4.3).

    ``data`` is a :class:`DataSpec` or a path (then ``split``, ``columns`` and ``limit`` apply).
    ``plots=False`` skips the PNGs (callers that draw their own figures from the JSON, e.g. the testbed).
    """
    from popalign.eval.discriminative import cumulative_accuracy, discriminative_metrics
    from popalign.eval.plots import plot_cumulative_accuracy, plot_margin_scatter

    scoring, boot = scoring or ScoringOptions(), boot or BootstrapOptions()
    targets = plan_targets(models, out, names)
    spec = eval_data(data, split, columns, limit)
    table, load_report = load_eval_table(spec)
    truth = table.margins if table.has_scores else None
    # Earlier evaluations to overlay are read first, so a wrong path fails before any scoring.
    others = [rep.load_run(c) for c in compare or []]
    results = []
    for t in targets:
        overlap, info, chosen, rejected = _score(table, t, scoring, progress)
        predicted = chosen - rejected
        metrics = discriminative_metrics(predicted, truth, **asdict(boot))
        rows = [
            {
                "id": pid,
                "predicted_margin": float(p),
                "gt_margin": None if truth is None else float(truth[i]),
                "chosen_reward": float(c),
                "rejected_reward": float(r),
            }
            for i, (pid, p, c, r) in enumerate(zip(table.ids, predicted, chosen, rejected, strict=True))
        ]
        t.out.mkdir(parents=True, exist_ok=True)
        _write_jsonl(t.out / rep.PREDICTIONS, rows)
        record = {
            "kind": "discriminative",
            "name": t.name,
            "model": info,
            "data": _data_record(
                table, load_report, path=spec.path, split=spec.split, training_overlap=overlap
            ),
            "metrics": metrics,
        }
        if truth is not None:
            curve = cumulative_accuracy(predicted, truth)
            record["cumulative_accuracy"] = {k: np.asarray(v).tolist() for k, v in curve.items()}
        write_record(t.out, record)
        t.extra["predicted"] = predicted
        results.append(record)
    if truth is not None and plots:
        curves = [(t.name, t.extra["predicted"], truth) for t in targets]
        curves += [(r.name, r.predicted, r.truth) for r in others if r.predicted is not None]
        for t in targets:
            plot_cumulative_accuracy(curves, t.out / rep.CUMULATIVE_PNG)
            plot_margin_scatter(t.extra["predicted"], truth, t.out / rep.SCATTER_PNG, t.name)
    for t in targets:
        write_reports(t.out)
    return results


def run_rewardbench(
    models: list[str],
    data: Any,
    *,
    limit: int | None = None,
    include_prior: bool = False,
    out: str | None = None,
    names: list[str] | None = None,
    scoring: ScoringOptions | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Per-subset accuracy and RewardBench section scores of each model on a local RewardBench file."""
    from popalign.eval.rewardbench import read_rewardbench, rewardbench_scores

    scoring = scoring or ScoringOptions()
    targets = plan_targets(models, out, names)
    spec = eval_data(data, limit=limit)
    bench = read_rewardbench(spec)
    results = []
    for t in targets:
        overlap, info, chosen, rejected = _score(bench.table, t, scoring, progress)
        predicted = chosen - rejected
        scores = rewardbench_scores(predicted, bench.subsets, include_prior=include_prior)
        rows = [
            {"id": pid, "subset": s, "predicted_margin": float(p), "correct": bool(p > 0)}
            for pid, s, p in zip(bench.table.ids, bench.subsets, predicted, strict=True)
        ]
        t.out.mkdir(parents=True, exist_ok=True)
        _write_jsonl(t.out / "rewardbench_predictions.jsonl", rows)
        record = {
            "kind": "rewardbench",
            "name": t.name,
            "model": info,
            "data": _data_record(bench.table, path=spec.path, training_overlap=overlap),
            "scores": scores,
        }
        write_record(t.out, record)
        write_reports(t.out)
        results.append(record)
    return results


def _kl_reference(model_dir: str, reference: str | None, kl: bool, spec: Any, policy, dtype: str):
    """``(reference model, its name)`` for the KL estimate, or ``(None, why there is none)``."""
    from popalign.eval.scoring import load_reference_model, read_run_config

    if not kl:
        return None, "not asked (--no-kl)"
    if spec.temperature == 0:
        return None, "greedy decoding draws no samples"
    run_config = read_run_config(model_dir)
    name = reference or (run_config.get("model") or {}).get("name_or_path")
    if not name:
        return None, "no reference: the folder has no config.yaml naming one; pass --reference PATH"
    return load_reference_model(str(name), policy, run_config, dtype), str(name)


def run_generate(
    models: list[str],
    data: Any,
    *,
    spec: Any = None,
    split: str | None = None,
    columns: str | None = None,
    limit: int | None = None,
    out: str | None = None,
    names: list[str] | None = None,
    dtype: str = "auto",
    device: str = "auto",
    reference: str | None = None,
    kl: bool = True,
    boot: BootstrapOptions | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Sample replies of each model to the test prompts; write ``model_outputs.json`` (AlpacaEval layout).

    With ``kl`` (the default) each reply's KL term against the reference (``reference``, else the run's
    initial model) goes into ``model_outputs.json`` and their mean, with its bootstrap interval, into
    ``generate.json`` (estimator: :mod:`popalign.eval.generate`).
    """
    from popalign.eval.generate import (
        KL_ESTIMATOR,
        GenerateSpec,
        generate_responses,
        load_prompts,
        write_model_outputs,
    )
    from popalign.eval.scoring import pick_device
    from popalign.eval.stats import estimate
    from popalign.modeling.load import load_causal_lm, load_tokenizer

    spec = spec or GenerateSpec()
    spec.validate()
    boot = boot or BootstrapOptions()
    if not models:
        raise PopalignError("give at least one model folder to generate from")
    targets = plan_targets(models, out, names)
    data_spec = eval_data(data, split, columns, limit)
    table = _prompt_table(data_spec)
    if table is None:  # a file of AlpacaEval instructions
        ids, prompts = load_prompts(data_spec.path, limit=data_spec.limit)
    else:
        ids, prompts = list(table.ids), list(table.prompts)
    results = []
    for t in targets:
        overlap = None if table is None else _overlap(table, t)
        tokenizer = load_tokenizer(t.model)
        model = load_causal_lm(t.model, dtype=dtype).to(pick_device(device))
        ref_model, ref_name = _kl_reference(t.model, reference, kl, spec, model, dtype)
        samples = generate_responses(model, tokenizer, prompts, spec, progress=progress, reference=ref_model)
        del model, ref_model
        _release()
        t.out.mkdir(parents=True, exist_ok=True)
        write_model_outputs(t.out / "model_outputs.json", ids, prompts, samples.outputs, t.name, samples.kl)
        record = {
            "kind": "generate",
            "generator": t.name,
            "model": str(t.model),
            "out": str(t.out / "model_outputs.json"),
            "data": {
                "path": data_spec.path,
                "split": data_spec.split,
                "prompts": len(prompts),
                "training_overlap": overlap,
            },
            "settings": asdict(spec),
            "mean_output_chars": float(np.mean([len(o) for o in samples.outputs]))
            if samples.outputs
            else 0.0,
        }
        if samples.kl is not None:
            est = estimate(np.mean, samples.kl, **asdict(boot)).to_dict()
            record["kl"] = {**est, "reference": ref_name, "estimator": KL_ESTIMATOR}
        else:
            record["kl"] = {"value": None, "reason": ref_name}
        write_record(t.out, record)
        write_reports(t.out)
        results.append(record)
    return results


def write_record(out: Path, record: dict[str, Any]) -> None:
    """Write ``record`` atomically as its kind's results file (``record["kind"]`` names the kind)."""
    atomic_write_json(out / get_kind(record["kind"]).file, record)


def write_reports(eval_dir: Path) -> None:
    """``eval.md`` of the folder and, for a run folder's evaluation, its model card: from every result."""
    rep.write_run_markdown(eval_dir)
    _refresh_card(eval_dir)


def _refresh_card(eval_dir: Path) -> None:
    """Rewrite the model card of the run folder above ``eval_dir`` so it shows the new results."""
    from popalign.hub.card import CARD, write_model_card

    run = Path(eval_dir).parent
    if Path(eval_dir).name == rep.EVAL_DIR and (run / CARD).is_file() and (run / "config.yaml").is_file():
        write_model_card(run, rep.card_section(run))


def _prompt_table(spec: Any):
    """The preference table whose prompts are generated from, or ``None`` for an instruction file."""
    from popalign.data.formats import read_rows

    path = Path(spec.path)
    if path.is_file() and not spec.columns:
        raw = read_rows(str(path))
        if raw.rows and "instruction" in raw.rows[0] and "chosen" not in raw.rows[0]:
            return None
    return load_eval_table(spec)[0]


def load_judge(reward_model: str | None, score_fn: str | None, scoring: ScoringOptions):
    """A judge with ``.score(prompts, responses)``: a local reward model or a scoring function."""
    from popalign.eval.scoring import (
        FunctionScorer,
        RewardModelScorer,
        load_reward_model,
        load_score_function,
        pick_device,
        read_run_config,
        tokenize_spec_for,
    )

    if bool(reward_model) == bool(score_fn):
        raise PopalignError("judge with exactly one of --reward-model PATH or --score-fn module:function")
    if score_fn:
        return FunctionScorer(load_score_function(score_fn), score_fn), {"type": "function", "name": score_fn}
    spec = tokenize_spec_for(read_run_config(reward_model), scoring.max_length, scoring.max_prompt_length)
    model, tokenizer = load_reward_model(reward_model, scoring.dtype, pick_device(scoring.device))
    judge = RewardModelScorer(model, tokenizer, spec, scoring.batch_size)
    return judge, {
        "type": "reward-model",
        "name": Path(reward_model).resolve().name,
        "path": str(reward_model),
    }


def run_judge(
    outputs: list[str],
    baseline: str,
    *,
    reward_model: str | None = None,
    score_fn: str | None = None,
    out: str | None = None,
    scoring: ScoringOptions | None = None,
    boot: BootstrapOptions | None = None,
    progress: bool = True,
    plots: bool = True,
) -> list[dict[str, Any]]:
    """Win rate and median advantage of each model's replies over the baseline's (Section 4.4).

    ``plots=False`` skips the advantage histogram.
    """
    from popalign.eval.generate import outputs_file, read_model_outputs
    from popalign.eval.judge import comparison_metrics, judgement_rows, pair_outputs
    from popalign.eval.plots import plot_advantages

    scoring, boot = scoring or ScoringOptions(), boot or BootstrapOptions()
    if not outputs:
        raise PopalignError("give at least one model_outputs.json (or a folder holding one) to judge")
    judge, judge_info = load_judge(reward_model, score_fn, scoring)
    base_records = read_model_outputs(baseline)
    base_name = str(base_records[0].get("generator") or Path(outputs_file(baseline)).parent.name)
    # Keyed by (instruction, reply): the baseline is scored once however many models meet it.
    cache: dict[tuple[str, str], float] = {}
    results = []
    for path in outputs:
        file = outputs_file(path)
        records = read_model_outputs(file)
        generator = str(records[0].get("generator") or file.parent.name)
        folder = Path(out) / generator if out and len(outputs) > 1 else Path(out or file.parent)
        paired = pair_outputs(records, base_records)
        pairs = list(zip(paired.instructions, paired.baseline_outputs, strict=True))
        todo = sorted({p for p in pairs if p not in cache})
        if todo:
            fresh = judge.score([ins for ins, _ in todo], [o for _, o in todo], progress=progress)
            cache.update({p: float(s) for p, s in zip(todo, fresh, strict=True)})
        base_scores = np.array([cache[p] for p in pairs])
        scores = judge.score(paired.instructions, paired.outputs, progress=progress)
        metrics = comparison_metrics(scores, base_scores, **asdict(boot))
        folder.mkdir(parents=True, exist_ok=True)
        _write_jsonl(
            folder / rep.JUDGEMENTS, judgement_rows(paired, scores, base_scores, generator, base_name)
        )
        record = {
            "kind": "judge",
            "generator": generator,
            "baseline": base_name,
            "judge": judge_info,
            "outputs": str(file),
            "baseline_outputs": str(outputs_file(baseline)),
            "unmatched_prompts": paired.unmatched,
            "metrics": metrics,
        }
        write_record(folder, record)
        if plots:
            plot_advantages([(generator, scores - base_scores)], folder / rep.ADVANTAGES_PNG, base_name)
        write_reports(folder)
        results.append(record)
    return results
