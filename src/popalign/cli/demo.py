"""``popalign demo``: the main job on its built-in default, run by ``make demo``.

It inspects the UltraFeedback sample, builds PoP datasets with both strategies, fine-tunes a tiny
random Llama (SFT) and trains vanilla DPO and DPO-PoP from it, printing where everything went.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_DATA = Path("..") / "shared" / "data" / "ultrafeedback-binarized-sample"

EPILOG = """examples:
  popalign demo                                    # uses the UltraFeedback sample beside the project
  popalign demo --data my_prefs.jsonl --out runs/demo --steps 20
"""


def register(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser(
        "demo",
        help=summary,
        description=summary,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default=str(DEFAULT_DATA), help="scored preference data (default: %(default)s)")
    p.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    p.add_argument(
        "--rows", type=int, default=128, help="preferences used for training (default: %(default)s)"
    )
    p.add_argument(
        "--steps", type=int, default=12, help="optimiser steps per training run (default: %(default)s)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from popalign.config import load_config
    from popalign.data.inspect import preference_stats
    from popalign.data.load import load_preferences
    from popalign.errors import PopalignError
    from popalign.pop.build import PoPSpec, build_pop_for_table
    from popalign.train.config import SFTConfig, TrainConfig
    from popalign.train.run import run_train
    from popalign.train.sft import run_sft

    if not Path(args.data).exists():
        raise PopalignError(f"{args.data}: no such data; pass --data with a scored preference file or folder")
    out = Path(args.out)
    table, report = load_preferences(args.data)
    print(report.summary())
    stats = preference_stats(table)
    print(f"margins: mean {stats['margin']['mean']:.2f}, ties {stats['ties']}")
    for strategy in ("iterative", "random"):
        pairs = build_pop_for_table(table, PoPSpec(strategy=strategy, k=2))
        pairs.save(out / f"pop_{strategy}.parquet", table)
        print(f"PoP {strategy}: {len(pairs)} pairs -> {out / f'pop_{strategy}.parquet'}")

    tiny = [
        f"data.path={args.data}",
        f"data.limit={args.rows}",
        "tokenize.max_length=128",
        "tokenize.max_prompt_length=64",
        f"training.max_steps={args.steps}",
        "training.per_device_train_batch_size=8",
        "training.gradient_accumulation_steps=1",
        "training.warmup_ratio=0",
        "training.report_to=none",
        f"training.save_steps={args.steps}",
    ]
    sft = load_config(SFTConfig, None, [*tiny, f"output_dir={out / 'sft'}", "training.learning_rate=1e-3"])
    sft_dir = run_sft(sft)["model"]
    for method in ("dpo", "dpo-pop-random"):
        cfg = load_config(
            TrainConfig,
            None,
            [
                *tiny,
                f"method={method}",
                f"model.name_or_path={sft_dir}",
                f"output_dir={out / method}",
                "training.learning_rate=1e-4",
                f"reference.cache_dir={out / 'cache'}",
            ],
        )
        summary = run_train(cfg)
        print(f"{method}: train loss {summary['metrics']['train_loss']:.4f} -> {summary['model']}")
    print(f"demo finished; everything is under {out}")
    return 0
