"""Tokens per second of ``popalign probe``'s feature extraction on a slice of the UltraFeedback sample.

    python benchmarks/probe_features.py [--model smollm2-135m-instruct] [--rows 32] [--dtype bfloat16]
        [--max-length 1024] [--threads 2]

The slice is ``--rows`` replies spread evenly over the length distribution of the sample's 2,395
distinct replies (so its mean length is the sample's), extracted into an empty cache folder; the printed
projection scales the measured rate to every reply of the sample. Run it on an idle machine: other jobs
on the same cores slow it several times over.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ultrafeedback-binarized-sample"


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from popalign.data.load import load_preferences
    from popalign.data.schema import concat_tables
    from popalign.modeling.load import load_causal_lm, load_tokenizer
    from popalign.probe.features import FeatureSpec, Sequences, extract_features, sequences_for

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tables = [load_preferences(str(DATA / f"{split}.jsonl"))[0] for split in ("train", "test")]
    table = concat_tables(tables, ["train", "test"])
    tokenizer = load_tokenizer(args.model)
    spec = FeatureSpec(max_length=args.max_length, max_prompt_length=args.max_length // 2, progress=False)
    spec.dtype = args.dtype
    seqs = sequences_for(table, tokenizer, spec)
    lengths = np.array([len(r) for r in seqs.ids])
    pick = np.argsort(lengths)[:: max(1, len(lengths) // args.rows)][: args.rows]
    sub = Sequences(
        [seqs.ids[j] for j in pick], seqs.prompt_lengths[pick], [seqs.keys[j] for j in pick],
        np.arange(0), np.arange(0), {},
    )  # fmt: skip
    model = load_causal_lm(args.model, dtype=args.dtype).eval()
    with tempfile.TemporaryDirectory() as cache:
        _, info = extract_features(model, sub, Path(cache), spec, tokenizer.pad_token_id)
    rate = info["tokens_computed"] / info["seconds"]
    result = {
        "model": args.model, "dtype": args.dtype, "threads": args.threads, "max_length": args.max_length,
        "replies": len(pick), "tokens": info["tokens_computed"], "seconds": info["seconds"],
        "tokens_per_second": round(rate, 1), "sample_tokens": int(lengths.sum()),
        "projected_minutes": round(lengths.sum() / rate / 60, 1),
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
