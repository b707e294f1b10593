"""How `popalign reproduce` evaluates a model: the code behind `popalign eval`, with the testbed's settings.

A run's final model gets discriminative metrics on the test preferences, sampled replies to the test prompts
and their r* judgement against vanilla DPO's (:func:`evaluate`); tuning runs also get the validation split
(:func:`evaluate_validation`); a run's curve gets its KL-screened, KL-spaced checkpoints
(:func:`evaluate_curve_points`, :mod:`popalign.testbed.curves`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from popalign.testbed import tuning
from popalign.testbed.curves import (
    drop_snapshots,
    evaluate_curve,
    evaluate_point,
    screen_curve,
    select_points,
)
from popalign.testbed.plan import Layout, RunSpec
from popalign.testbed.settings import BASELINE, ReproduceConfig

SCORE_FN = "popalign.testbed.task:reward"
PointEval = Callable[[Path, Path, str], None]


def evaluate(
    cfg: ReproduceConfig, layout: Layout, model_dir: Path, name: str, seed: int, baseline: Path | None
) -> None:
    """Discriminative metrics, sampled replies and (against ``baseline``'s replies) the r* judgement."""
    from popalign.eval.pipeline import (
        BootstrapOptions,
        ScoringOptions,
        run_discriminative,
        run_generate,
        run_judge,
    )

    out = model_dir / "eval"
    boot = BootstrapOptions(n_resamples=cfg.bootstrap, seed=seed)
    data = str(layout.data)
    run_discriminative(
        [str(model_dir)],
        data,
        split="test",
        limit=cfg.test_rows,
        out=str(out),
        names=[name],
        scoring=ScoringOptions(
            batch_size=64 if cfg.generative else 8, device="cpu", reference_cache_dir=str(layout.cache)
        ),
        boot=boot,
        progress=False,
        # The report draws its own figures from the per-run JSON; per-run PNGs would go unused.
        plots=False,
    )
    if not cfg.generative:
        return
    run_generate(
        [str(model_dir)],
        data,
        spec=_generate_spec(cfg, seed),
        split="test",
        out=str(out),
        names=[name],
        device="cpu",
        boot=boot,
        progress=False,
    )
    if baseline is not None:
        run_judge(
            [str(out)], str(baseline), score_fn=SCORE_FN, out=str(out), boot=boot, progress=False, plots=False
        )


def evaluate_validation(cfg: ReproduceConfig, layout: Layout, model_dir: Path, name: str, seed: int) -> None:
    """Accuracy and sampled replies on the validation split, for :mod:`popalign.testbed.tuning` alone."""
    from popalign.eval.pipeline import BootstrapOptions, ScoringOptions, run_discriminative, run_generate

    out = str(model_dir / tuning.VALIDATION_DIR)
    boot = BootstrapOptions(n_resamples=cfg.bootstrap, seed=seed)
    scoring = ScoringOptions(batch_size=64, device="cpu", reference_cache_dir=str(layout.cache))
    common = {"split": "validation", "out": out, "names": [name], "progress": False}
    run_discriminative([str(model_dir)], str(layout.data), scoring=scoring, boot=boot, plots=False, **common)
    run_generate(
        [str(model_dir)], str(layout.data), spec=_generate_spec(cfg, seed), device="cpu", kl=False, **common
    )


def _generate_spec(cfg: ReproduceConfig, seed: int):
    from popalign.eval.generate import GenerateSpec

    g = cfg.generation
    return GenerateSpec(
        max_new_tokens=g.max_new_tokens,
        temperature=g.temperature,
        seed=seed,
        batch_size=g.batch_size,
        max_prompt_length=cfg.max_prompt_length,
    )


def _point_evaluator(cfg: ReproduceConfig, layout: Layout, seed: int, reference: str) -> PointEval:
    """``evaluate(model_dir, eval_dir, name)``: r* of sampled replies, KL to ``reference``, vs vanilla DPO."""
    from popalign.eval.pipeline import BootstrapOptions

    def evaluate(model_dir: Path, eval_dir: Path, name: str) -> None:
        evaluate_point(
            model_dir,
            eval_dir,
            name=name,
            data=str(layout.data),
            spec=_generate_spec(cfg, seed),
            reference=reference,
            baseline=layout.run(BASELINE, seed) / "eval",
            score_fn=SCORE_FN,
            boot=BootstrapOptions(n_resamples=cfg.bootstrap, seed=seed),
        )

    return evaluate


def _screen_kl(cfg: ReproduceConfig, layout: Layout, seed: int, reference: str, model_dir: Path) -> float:
    """A snapshot's mean KL to ``reference`` on the first ``curve.screen_prompts`` test prompts."""
    import tempfile

    from popalign.eval.pipeline import BootstrapOptions, run_generate

    # The screen needs the mean alone; its interval would cost resamples for nothing.
    boot = BootstrapOptions(n_resamples=1, seed=seed)
    with tempfile.TemporaryDirectory(dir=model_dir) as tmp:
        (record,) = run_generate(
            [str(model_dir)],
            str(layout.data),
            spec=_generate_spec(cfg, seed),
            split="test",
            limit=cfg.curve.screen_prompts,
            out=tmp,
            names=["screen"],
            device="cpu",
            reference=reference,
            boot=boot,
            progress=False,
        )
    return float(record["kl"]["value"])


def evaluate_curve_points(
    cfg: ReproduceConfig, layout: Layout, spec: RunSpec, seed: int, steps: list[int], final: int, sft: str
) -> list[int]:
    """Step 0 (the SFT model, shared by every run of ``seed``), then the snapshots kept by their KL.

    Returns the evaluated steps (:mod:`popalign.testbed.curves`: screen, select, evaluate).
    """
    evaluate = _point_evaluator(cfg, layout, seed, sft)
    evaluate(Path(sft), layout.origin(seed) / "eval", "sft")
    folder = layout.run(spec.name, seed)
    final_kl = json.loads((folder / "eval" / "generate.json").read_text("utf-8"))["kl"]["value"]
    c = cfg.curve
    screened = screen_curve(
        folder,
        steps,
        final,
        final_kl,
        lambda m: _screen_kl(cfg, layout, seed, sft, m),
        every=c.screen_every,
        max_ratio=c.max_ratio,
        min_gap=c.min_gap,
    )
    order = list(screened)
    kept = [order[i] for i in select_points([screened[s] for s in order], c.max_ratio, c.min_gap)]
    drop_snapshots(folder, kept)
    evaluate_curve(
        folder, kept, final, folder / "eval", lambda m, e, step: evaluate(m, e, f"{spec.name}@{step}")
    )
    return kept


def mean_reward(outputs_file: Path) -> float:
    from popalign.testbed.task import reward

    records = json.loads(outputs_file.read_text(encoding="utf-8"))
    return sum(reward(r["instruction"], r["output"]) for r in records) / len(records)
