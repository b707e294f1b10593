"""``popalign push``: upload a trained model, with its model card, to the Hugging Face Hub."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  popalign push runs/dpo-pop --repo you/llama-dpo-pop --dry-run     # list what would be uploaded
  popalign push runs/dpo-pop --repo you/llama-dpo-pop --private
  popalign push runs/dpo-pop --card-only                            # (re)write README.md, upload nothing

Uploads README.md (the model card: method, loss settings, data fingerprint, evaluation results), the
weights or the LoRA adapter, the tokenizer and the configs; never checkpoints, logs or caches. Needs a
token with write access (`hf auth login` or HF_TOKEN) and a network; otherwise it says so and uploads
nothing.
"""


def register(sub: argparse._SubParsersAction, summary: str) -> None:
    p = sub.add_parser(
        "push",
        help=summary,
        description=summary,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="a finished run folder (train or sft)")
    p.add_argument("--repo", metavar="OWNER/NAME", help="the model repository on the Hub")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded and stop")
    p.add_argument(
        "--card-only", action="store_true", help="rewrite the model card (README.md) from the run and stop"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from popalign.errors import PopalignError
    from popalign.eval.report import card_section
    from popalign.hub.card import write_model_card
    from popalign.hub.push import files_to_upload, push

    evaluation = card_section(args.run)
    if args.card_only:
        print(f"wrote {write_model_card(args.run, evaluation)}")
        return 0
    if not args.repo:
        raise PopalignError("--repo OWNER/NAME: say which Hub repository to upload to")
    files = files_to_upload(args.run, evaluation)
    if args.dry_run:
        print(f"would upload {len(files)} files from {args.run} to {args.repo}:")
        for name in files:
            print(f"  {name}  ({(Path(args.run) / name).stat().st_size:,} bytes)")
        return 0
    url = push(args.run, args.repo, private=args.private, evaluation=evaluation)
    print(f"uploaded {len(files)} files to {url}")
    return 0
