"""``popalign reproduce``: the paper's experiments end to end on the testbed, resumable, with a report."""

from __future__ import annotations

import argparse

from popalign.cli._runconfig import add_config_arguments

EPILOG = """examples:
  popalign reproduce                                    # the default preset: 5 seeds, minutes on 2 CPU cores
  popalign reproduce --config configs/testbed/seeds10.yaml            # 10 seeds
  popalign reproduce --config configs/testbed/sweeps.yaml             # + Appendix E (k) and F (noise)
  popalign reproduce --config configs/testbed/tuned.yaml              # each method tuned on validation
  popalign reproduce --config configs/testbed/real.yaml               # SmolLM2 + LoRA on UltraFeedback
  popalign reproduce curve.max_ratio=1.25                             # a finer reward-KL frontier
  popalign reproduce seeds=[0] task.train_prompts=500 output_dir=runs/quick
  popalign reproduce --help-config                      # every setting, its default and meaning

Every run is also evaluated at checkpoints spaced by KL (curve.*): the report compares methods at matched
KL(pi || pi_SFT) (the reward-KL frontier) besides the paper's end-of-epoch protocol. Interrupted (Ctrl-C)
or killed? Run the same command again: finished runs are kept, an unfinished run resumes from its last
checkpoint. The report is <output_dir>/report/report.html (and report.md).
"""


def register(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser(
        "reproduce",
        help=summary,
        description=summary
        + ": SFT, the six methods of the paper, its controls and the oracle-margin positive control, "
        "several seeds, "
        "discriminative and generative evaluation judged by the testbed's ground-truth reward, and a report "
        "of which claims hold.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p)
    p.set_defaults(func=run)


def print_outcome(outcome: dict) -> None:
    """The verdict of each claim, then where the report is."""
    import json
    from pathlib import Path

    results = json.loads(Path(outcome["report"]["json"]).read_text(encoding="utf-8"))
    width = max((len(v["verdict"]) for v in results["verdicts"]), default=0)
    for v in results["verdicts"]:
        where = (
            f" (at {v['budget']})"
            if v.get("budget")
            else " (tuned per method)"
            if v["group"] == "tuned"
            else ""
        )
        print(f"  {v['verdict']:<{width}}  {v['claim']}{where}")
    print(f"finished in {outcome['wall_seconds'] / 60:.1f} min")
    print(f"report: {outcome['report']['html']}")
    print(f"        {outcome['report']['markdown']}")


def run(args: argparse.Namespace) -> int:
    from popalign.cli._runconfig import resolve
    from popalign.testbed.settings import ReproduceConfig

    cfg = resolve(ReproduceConfig, args)
    if cfg is None:
        return 0
    from popalign.testbed.reproduce import reproduce

    print_outcome(reproduce(cfg))
    return 0
