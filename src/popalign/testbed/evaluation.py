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

from popalign.eval.kinds import KINDS
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
        spec=generate_spec(cfg, seed),
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
        [str(model_dir)], str(layout.data), spec=generate_spec(cfg, seed), device="cpu", kl=False, **common
    )


def generate_spec(cfg: ReproduceConfig, seed: int):
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
            spec=generate_spec(cfg, seed),
            reference=reference,
            baseline=layout.run(BASELINE, seed) / "eval",
            score_fn=SCORE_FN,
            boot=BootstrapOptions(n_resamples=cfg.bootstrap, seed=seed),
        )

    return evaluate


class KLScreen:
    """The cheap KL screen of one run's snapshots: ``KLScreen(...)(model_dir)`` is the snapshot's mean KL
    to the SFT model on the first ``curve.screen_prompts`` test prompts, sampled as the full evaluation
    samples them. The prompts, the tokenizer and the reference are loaded once per run (at the first
    snapshot: a resumed run with nothing left to screen loads nothing), not once per snapshot.
    """

    def __init__(self, cfg: ReproduceConfig, layout: Layout, seed: int, reference: str) -> None:
        self.cfg, self.layout, self.seed, self.reference_path = cfg, layout, seed, reference
        self.loaded: tuple | None = None

    def _load(self) -> tuple:
        from popalign.eval.pipeline import eval_data, load_eval_table
        from popalign.modeling.load import load_causal_lm, load_tokenizer

        if self.loaded is None:
            data = eval_data(str(self.layout.data), "test", None, self.cfg.curve.screen_prompts)
            prompts = list(load_eval_table(data)[0].prompts)
            reference = load_causal_lm(self.reference_path).eval()
            self.loaded = (prompts, load_tokenizer(self.reference_path), reference)
        return self.loaded

    def __call__(self, model_dir: Path) -> float:
        import numpy as np

        from popalign.eval.generate import generate_responses
        from popalign.modeling.load import load_causal_lm

        prompts, tokenizer, reference = self._load()
        model = load_causal_lm(str(model_dir)).eval()
        spec = generate_spec(self.cfg, self.seed)
        samples = generate_responses(model, tokenizer, prompts, spec, progress=False, reference=reference)
        return float(np.mean(samples.kl))


def evaluate_curve_points(
    cfg: ReproduceConfig, layout: Layout, spec: RunSpec, seed: int, steps: list[int], final: int, sft: str
) -> list[int]:
    """Step 0 (the SFT model, shared by every run of ``seed``), then the snapshots kept by their KL.

    Returns the evaluated steps (:mod:`popalign.testbed.curves`: screen, select, evaluate).
    """
    evaluate = _point_evaluator(cfg, layout, seed, sft)
    evaluate(Path(sft), layout.origin(seed) / "eval", "sft")
    folder = layout.run(spec.name, seed)
    final_kl = json.loads((folder / "eval" / KINDS["generate"].file).read_text("utf-8"))["kl"]["value"]
    c = cfg.curve
    screened = screen_curve(
        folder,
        steps,
        final,
        final_kl,
        KLScreen(cfg, layout, seed, sft),
        every=c.screen_every,
        max_ratio=c.max_ratio,
        min_gap=c.min_gap,
        max_kl=c.max_kl,
    )
    order = list(screened)
    kept = [order[i] for i in select_points([screened[s] for s in order], c.max_ratio, c.min_gap, c.max_kl)]
    drop_snapshots(folder, kept)
    evaluate_curve(
        folder, kept, final, folder / "eval", lambda m, e, step: evaluate(m, e, f"{spec.name}@{step}")
    )
    return kept


def mean_reward(outputs_file: Path) -> float:
    from popalign.testbed.task import reward

    records = json.loads(outputs_file.read_text(encoding="utf-8"))
    return sum(reward(r["instruction"], r["output"]) for r in records) / len(records)
