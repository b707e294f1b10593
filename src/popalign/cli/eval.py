"""``popalign eval``: discriminative metrics, RewardBench-format scores, generation and judged win rates."""

from __future__ import annotations

import argparse

from popalign.cli._data_options import add_data_options, data_spec

EPILOG = """examples:
  popalign eval discriminative runs/dpo-pop --data ../data --split test
  popalign eval rewardbench runs/dpo-pop --data rewardbench_filtered.jsonl
  popalign eval generate runs/dpo runs/dpo-pop --data ../data --limit 200
  popalign eval judge runs/dpo-pop/eval --baseline runs/dpo/eval --reward-model runs/rm

Results go to <model_dir>/eval (or --out): JSON, eval.md and PNG plots. Compare runs with popalign report.
"""

DISC_EPILOG = """examples:
  popalign eval discriminative runs/dpo-pop --data ../data --split test
  popalign eval discriminative runs/dpo runs/dpo-pop --data ../data/test.jsonl --out runs/compare
  popalign eval discriminative runs/rm --data ../data --kind reward-model
  popalign eval discriminative runs/dpo-pop --data ../data --reference runs/sft --beta 0.1
  popalign eval discriminative --score-fn mytask.py:reward --data prefs.jsonl --out runs/oracle
  popalign eval discriminative runs/dpo-pop --data ../data --compare runs/dpo/eval runs/dpo-sbt/eval

Predicted margin: beta * ((log pi(y+|x) - log ref(y+|x)) - (log pi(y-|x) - log ref(y-|x))) for a DPO policy
(reference: --reference, else model.name_or_path in <model_dir>/config.yaml; beta: --beta, else loss.beta,
else 0.1), r(x,y+) - r(x,y-) for a reward model. Ties (ground-truth margin 0) are reported separately and
left out of accuracy. Writes discriminative.json, discriminative_predictions.jsonl (id, predicted and
ground-truth margin), cumulative_accuracy.png, margin_scatter.png and eval.md.
"""

RB_EPILOG = """examples:
  popalign eval rewardbench runs/dpo-pop --data rewardbench_filtered.jsonl
  popalign eval rewardbench runs/rm --data rb.parquet --limit 500
  popalign eval rewardbench runs/dpo-pop --data rb_with_prior_sets.jsonl --prior-sets

The file has one row per preference with prompt, chosen, rejected and subset (RewardBench's layout), read
locally. Section scores weight subsets by RewardBench's example counts; Overall is the mean of Chat, Chat
Hard, Safety and Reasoning (with --prior-sets: weights 2,2,2,2 and 1 for Prior Sets).
"""

GEN_EPILOG = """examples:
  popalign eval generate runs/dpo-pop --data ../data --limit 200
  popalign eval generate runs/dpo runs/dpo-pop --data ../data --max-new-tokens 512 --temperature 0.7 --seed 1
  popalign eval generate runs/dpo-pop --data alpaca_eval.json --temperature 0 --out runs/alpaca/dpo-pop

--data is a preference dataset (its prompts are used) or a file of {"instruction": ...} rows. Writes
model_outputs.json in AlpacaEval's layout (instruction, output, generator; plus id and kl) and generate.json.
Sampled replies also get an estimate of KL(pi || pi_ref) against the reference (--reference, else the run's
initial model): per prompt the sum over the reply's tokens of log pi - log pi_ref at the sampling
temperature, averaged over prompts, with a bootstrap interval (docs/evaluation.md).
"""

JUDGE_EPILOG = """examples:
  popalign eval judge runs/dpo-pop/eval --baseline runs/dpo/eval --reward-model runs/rm
  popalign eval judge runs/a/eval runs/b/eval --baseline runs/dpo/eval --score-fn mytask.py:reward
  popalign eval judge outputs.json --baseline base.json --score-fn mypkg.rewards:score --out runs/judged

Each reply is scored by the judge and compared with the baseline's reply to the same prompt (matched by
id, else by instruction): advantage = score - baseline score; win rate counts ties as half. A scoring
function is any Python callable f(prompt, response) -> float.
"""


def register(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser(
        "eval",
        help=summary,
        description=summary,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=lambda args: _print_help(p))
    eval_sub = p.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")

    d = _sub(eval_sub, "discriminative", "accuracy and margin correlations on test preferences", DISC_EPILOG)
    d.add_argument(
        "models", nargs="*", metavar="MODEL", help="model folder(s): DPO policies or reward models"
    )
    _data_args(d)
    _scoring_args(d)
    _bootstrap_args(d)
    d.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="EVAL_DIR",
        help="earlier evaluations to overlay in the plot",
    )
    _output_args(d)
    d.set_defaults(func=run_discriminative)

    r = _sub(eval_sub, "rewardbench", "per-subset and section scores on a RewardBench-format file", RB_EPILOG)
    r.add_argument(
        "models", nargs="*", metavar="MODEL", help="model folder(s): DPO policies or reward models"
    )
    _data_args(r)
    r.add_argument("--prior-sets", action="store_true", help="average Prior Sets into Overall at half weight")
    _scoring_args(r)
    _output_args(r)
    r.set_defaults(func=run_rewardbench)

    g = _sub(
        eval_sub, "generate", "sample replies to test prompts (AlpacaEval model_outputs.json)", GEN_EPILOG
    )
    g.add_argument("models", nargs="+", metavar="MODEL", help="policy folder(s)")
    _data_args(g)
    g.add_argument("--max-new-tokens", type=int, default=256, help="default: %(default)s")
    g.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default: %(default)s)")
    g.add_argument("--top-p", type=float, default=1.0, help="default: %(default)s")
    g.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    g.add_argument("--batch-size", type=int, default=8, help="prompts per batch (default: %(default)s)")
    g.add_argument(
        "--max-prompt-length", type=int, default=1024, help="prompt tokens kept (default: %(default)s)"
    )
    g.add_argument(
        "--no-chat-template", action="store_true", help="plain-text prompts even if a template exists"
    )
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: %(default)s)")
    g.add_argument(
        "--reference",
        metavar="PATH",
        help="reference model of the KL estimate (default: the run's initial model from its config.yaml)",
    )
    g.add_argument("--no-kl", action="store_true", help="skip the KL(pi || pi_ref) estimate")
    _bootstrap_args(g)
    _output_args(g)
    g.set_defaults(func=run_generate)

    j = _sub(eval_sub, "judge", "win rate and median advantage over a baseline's replies", JUDGE_EPILOG)
    j.add_argument("outputs", nargs="+", metavar="OUTPUTS", help="model_outputs.json or a folder holding one")
    j.add_argument("--baseline", required=True, metavar="OUTPUTS", help="the baseline model's outputs")
    judge = j.add_mutually_exclusive_group(required=True)
    judge.add_argument("--reward-model", metavar="PATH", help="a local sequence-classification model folder")
    judge.add_argument("--score-fn", metavar="MODULE:FN", help="a callable f(prompt, response) -> float")
    j.add_argument("--batch-size", type=int, default=8, help="default: %(default)s")
    j.add_argument(
        "--max-length", type=int, default=None, help="tokens per prompt+reply for the reward model"
    )
    j.add_argument("--max-prompt-length", type=int, default=None)
    j.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    j.add_argument("--device", default="auto")
    _bootstrap_args(j)
    j.add_argument("--out", default=None, help="results folder (default: beside each outputs file)")
    j.add_argument("--no-progress", action="store_true", help="hide progress bars")
    j.set_defaults(func=run_judge)


def _sub(eval_sub, name: str, summary: str, epilog: str) -> argparse.ArgumentParser:
    return eval_sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _data_args(p: argparse.ArgumentParser) -> None:
    from popalign.data.spec import EVAL_DEFAULTS

    p.add_argument("--data", required=True, metavar="DATA", help="file or folder of test data")
    add_data_options(p, EVAL_DEFAULTS)


def _data(args: argparse.Namespace):
    from popalign.data.spec import EVAL_DEFAULTS

    return data_spec(args, args.data, tie_policy=EVAL_DEFAULTS["tie_policy"])


def _scoring_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kind", default="auto", choices=("auto", "policy", "reward-model"), help="default: detect"
    )
    p.add_argument("--reference", default=None, metavar="PATH", help="reference model of a DPO policy")
    p.add_argument(
        "--reference-cache-dir",
        default=None,
        metavar="DIR",
        help="cache the reference's log-probs here (as training's reference.cache_dir), so evaluating "
        "several policies of one reference on the same data runs the reference once (default: no cache)",
    )
    p.add_argument(
        "--beta", type=float, default=None, help="DPO beta (default: the run's loss.beta, else 0.1)"
    )
    p.add_argument(
        "--score-fn", default=None, metavar="MODULE:FN", help="score with f(prompt, response) instead"
    )
    p.add_argument("--batch-size", type=int, default=8, help="default: %(default)s")
    p.add_argument("--max-length", type=int, default=None, help="default: the run's tokenize.max_length")
    p.add_argument("--max-prompt-length", type=int, default=None)
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda ... (default: %(default)s)")


def _bootstrap_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap", type=int, default=1000, metavar="N", help="resamples (default: %(default)s)"
    )
    p.add_argument("--confidence", type=float, default=0.95, help="interval level (default: %(default)s)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="default: %(default)s")


def _output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", default=None, help="results folder (default: <model_dir>/eval; several: OUT/<name>)"
    )
    p.add_argument("--name", action="append", default=None, help="run name in tables (once per model)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _scoring(args: argparse.Namespace):
    from popalign.eval.pipeline import ScoringOptions

    return ScoringOptions(
        kind=getattr(args, "kind", "auto"),
        reference=getattr(args, "reference", None),
        beta=getattr(args, "beta", None),
        score_fn=getattr(args, "score_fn", None),
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_prompt_length=args.max_prompt_length,
        reference_cache_dir=getattr(args, "reference_cache_dir", None),
    )


def _boot(args: argparse.Namespace):
    from popalign.errors import PopalignError
    from popalign.eval.pipeline import BootstrapOptions

    if not 0 < args.confidence < 1:
        raise PopalignError(f"--confidence must lie in (0, 1), got {args.confidence}")
    if args.bootstrap < 0:
        raise PopalignError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    return BootstrapOptions(n_resamples=args.bootstrap, confidence=args.confidence, seed=args.bootstrap_seed)


def _check_models(args: argparse.Namespace) -> None:
    from popalign.errors import PopalignError

    if args.models and args.score_fn:
        raise PopalignError("give model folders or --score-fn, not both")
    if not args.models and not args.score_fn:
        raise PopalignError("give at least one model folder (or --score-fn module:function)")


def run_discriminative(args: argparse.Namespace) -> int:
    from popalign.eval.pipeline import run_discriminative as run

    _check_models(args)
    results = run(
        args.models,
        _data(args),
        out=args.out,
        names=args.name,
        compare=args.compare,
        scoring=_scoring(args),
        boot=_boot(args),
        progress=not args.no_progress,
    )
    from popalign.eval.stats import Estimate

    for rec in results:
        m = rec["metrics"]
        line = f"{rec['name']}: accuracy {Estimate.from_dict(m['accuracy']).format()}"
        if m.get("pearson"):
            line += f", pearson {Estimate.from_dict(m['pearson']).format()}"
            line += f", spearman {Estimate.from_dict(m['spearman']).format()}"
        print(f"{line} ({m['n_scored']} scored, {m['ties']['n']} ties)")
    return 0


def run_rewardbench(args: argparse.Namespace) -> int:
    from popalign.eval.pipeline import run_rewardbench as run

    _check_models(args)
    results = run(
        args.models,
        _data(args),
        include_prior=args.prior_sets,
        out=args.out,
        names=args.name,
        scoring=_scoring(args),
        progress=not args.no_progress,
    )
    for rec in results:
        s = rec["scores"]
        parts = [f"{k} {100 * v:.2f}" for k, v in s["sections"].items() if v is not None]
        overall = "-" if s["overall"] is None else f"{100 * s['overall']:.2f}"
        print(f"{rec['name']}: {', '.join(parts)}; Overall {overall} ({s['n']} rows)")
        if s["unmapped_subsets"]:
            print(f"  subsets outside RewardBench's sections: {', '.join(s['unmapped_subsets'])}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from popalign.eval.generate import GenerateSpec
    from popalign.eval.pipeline import run_generate as run

    spec = GenerateSpec(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        batch_size=args.batch_size,
        max_prompt_length=args.max_prompt_length,
        chat_template=not args.no_chat_template,
    )
    results = run(
        args.models,
        _data(args),
        spec=spec,
        out=args.out,
        names=args.name,
        dtype=args.dtype,
        device=args.device,
        reference=args.reference,
        kl=not args.no_kl,
        boot=_boot(args),
        progress=not args.no_progress,
    )
    from popalign.eval.stats import Estimate

    for rec in results:
        kl = rec["kl"]
        shown = (
            f"KL to {kl['reference']} {Estimate.from_dict(kl).format()} nats"
            if kl.get("value") is not None
            else f"no KL estimate: {kl['reason']}"
        )
        print(f"{rec['generator']}: {rec['data']['prompts']} replies -> {rec['out']}; {shown}")
    return 0


def run_judge(args: argparse.Namespace) -> int:
    from popalign.eval.pipeline import ScoringOptions
    from popalign.eval.pipeline import run_judge as run
    from popalign.eval.stats import Estimate

    scoring = ScoringOptions(
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_prompt_length=args.max_prompt_length,
    )
    results = run(
        args.outputs,
        args.baseline,
        reward_model=args.reward_model,
        score_fn=args.score_fn,
        out=args.out,
        scoring=scoring,
        boot=_boot(args),
        progress=not args.no_progress,
    )
    for rec in results:
        m = rec["metrics"]
        win = Estimate.from_dict(m["win_rate"]).format(digits=1, scale=100.0)
        med = Estimate.from_dict(m["median_advantage"]).format()
        who = f"{rec['generator']} vs {rec['baseline']}"
        print(f"{who}: win rate {win}%, median advantage {med} ({m['n']} prompts)")
    return 0
