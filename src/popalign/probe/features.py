"""Frozen features of every prompt+reply, extracted once and kept in a sharded, content-keyed cache.

**Pooling.** A reply's feature is the frozen model's final hidden state (after its last norm) at the
reply's last token (the end-of-sequence token the tokenisation appends, which has seen the whole reply),
concatenated with the mean of the final hidden states over the reply's tokens: ``2 * hidden_size``
numbers. The last token is what a sequence-classification reward head reads; the mean adds what the reply
says as a whole, which the last token of a long reply summarises poorly.

**Cache.** Each sequence is keyed by its token ids and prompt length; the folder is keyed by the model's
weights, dtype and the pooling (:data:`POOLING`). The sequences the folder lacks are sorted by length (so
a batch pads little) and cut into shards of ``shard_size``; a shard file holds its features and keys, is
named by its keys and written atomically. A killed run loses at most the shard it was computing; a rerun
looks every sequence up by key in all shards and computes only the ones it lacks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from popalign.config import ConfigError, help_field

if TYPE_CHECKING:
    from popalign.data.schema import PreferenceTable

POOLING = "last-token+reply-mean/1"
"""The pooling's name and version: part of the cache key, so a change of pooling never reads old shards."""


@dataclass
class FeatureSpec:
    """How features are extracted (``features.*`` keys)."""

    max_length: int = help_field(1024, help="Longest prompt+reply in tokens; longer ones are cut (counted).")
    max_prompt_length: int = help_field(
        512, help="Longest prompt kept when a pair must be cut (the prompt's end is kept)."
    )
    batch_tokens: int = help_field(
        8192, help="Tokens per forward batch, padding included (sequences are sorted by length)."
    )
    shard_size: int = help_field(
        128, help="Sequences per cache shard: a kill loses at most one shard's work."
    )
    torch_threads: int | None = help_field(None, help="CPU threads for torch (None: torch's default).")
    dtype: str = help_field(
        "bfloat16",
        help="Model dtype for extraction: bfloat16 (about twice float32's speed on a CPU with bfloat16 "
        "instructions) or float32; features are pooled and stored in float32.",
    )
    cache_dir: str | None = help_field(
        None, help="Cache root (None: $POPALIGN_CACHE, else ~/.cache/popalign); shards go to <root>/probe/."
    )
    progress: bool = help_field(True, help="Show a progress bar over shards.")

    def validate(self) -> None:
        if self.max_prompt_length >= self.max_length:
            raise ConfigError("features.max_prompt_length must be smaller than features.max_length")
        if self.batch_tokens < self.max_length:
            raise ConfigError("features.batch_tokens must be at least features.max_length")
        if self.shard_size < 1:
            raise ConfigError("features.shard_size must be at least 1")


@dataclass
class Sequences:
    """The distinct prompt+reply token rows of a table, and where each preference's replies are.

    ``chosen[i]`` / ``rejected[i]`` index ``ids`` for preference ``i``; ``keys[j]`` is row ``j``'s content
    key; ``prompt_lengths[j]`` where its reply starts.
    """

    ids: list[list[int]]
    prompt_lengths: np.ndarray
    keys: list[str]
    chosen: np.ndarray
    rejected: np.ndarray
    stats: dict[str, Any]


def sequences_for(table: PreferenceTable, tokenizer: Any, spec: FeatureSpec) -> Sequences:
    """Tokenise every prompt+reply as training does (chat template, truncation counted), deduplicated."""
    from popalign.data.tokenize import TokenizeSpec, tokenize_preferences

    tok = tokenize_preferences(table, tokenizer, TokenizeSpec(spec.max_length, spec.max_prompt_length))
    where: dict[str, int] = {}
    ids: list[list[int]] = []
    prompt_lengths: list[int] = []
    keys: list[str] = []
    index = {"chosen": [], "rejected": []}
    for i, prompt in enumerate(tok.prompt_ids):
        for side, replies in (("chosen", tok.chosen_ids), ("rejected", tok.rejected_ids)):
            row = prompt + replies[i]
            key = sequence_key(row, len(prompt))
            if key not in where:
                where[key] = len(ids)
                ids.append(row)
                prompt_lengths.append(len(prompt))
                keys.append(key)
            index[side].append(where[key])
    stats = dict(tok.stats, sequences=len(ids), tokens=int(sum(len(r) for r in ids)))
    return Sequences(
        ids,
        np.asarray(prompt_lengths),
        keys,
        np.asarray(index["chosen"]),
        np.asarray(index["rejected"]),
        stats,
    )


def sequence_key(ids: list[int], prompt_length: int) -> str:
    """A content key of one token row and where its reply starts."""
    h = hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=16)
    h.update(prompt_length.to_bytes(8, "little"))
    return h.hexdigest()


def model_fingerprint(model: Any) -> str:
    """A hash of the model's weights, dtype, config and :data:`POOLING`: the cache folder's name."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{POOLING} {model.dtype}".encode())
    h.update(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def shard_plan(seqs: Sequences, rows: list[int], shard_size: int) -> list[np.ndarray]:
    """``rows`` cut into shards: sorted by length (then key, so the plan depends on content only)."""
    order = sorted(rows, key=lambda j: (len(seqs.ids[j]), seqs.keys[j]))
    return [np.asarray(order[s : s + shard_size]) for s in range(0, len(order), shard_size)]


def cached_rows(folder: Path) -> dict[str, tuple[Path, int]]:
    """Every sequence key already in ``folder``'s shards: key -> (shard file, row in it)."""
    found: dict[str, tuple[Path, int]] = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as shard:
            for row, key in enumerate(shard["keys"].tolist()):
                found[key] = (path, row)
    return found


def shard_name(keys: list[str]) -> str:
    return hashlib.blake2b("\n".join(keys).encode(), digest_size=12).hexdigest() + ".npz"


def length_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Consecutive positions of length-sorted rows grouped so that ``rows * longest <= batch_tokens``."""
    batches: list[list[int]] = []
    current: list[int] = []
    for pos, n in enumerate(lengths):
        if current and (len(current) + 1) * max(n, lengths[current[-1]]) > batch_tokens:
            batches.append(current)
            current = []
        current.append(pos)
    if current:
        batches.append(current)
    return batches


def pool_batch(model: Any, rows: list[list[int]], prompt_lengths: list[int], pad_id: int) -> np.ndarray:
    """``(B, 2H)`` features of a batch of token rows (see the module doc), right-padded."""
    import torch

    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    with torch.inference_mode():
        hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    hidden = hidden.float()
    lengths = torch.tensor([len(r) for r in rows])
    last = hidden[torch.arange(len(rows)), lengths - 1]
    positions = torch.arange(longest)[None, :]
    reply = (positions >= torch.tensor(prompt_lengths)[:, None]) & (positions < lengths[:, None])
    reply = reply.to(hidden.dtype)[..., None]
    mean = (hidden * reply).sum(1) / reply.sum(1).clamp(min=1.0)
    return torch.cat([last, mean], dim=1).numpy()


def extract_features(
    model: Any,
    seqs: Sequences,
    folder: Path,
    spec: FeatureSpec,
    pad_id: int,
    on_shard: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``(features (rows, 2H), info)``: read the sequences ``folder`` holds, compute and write the rest.

    A sequence is looked up by its key in every shard of the folder, so a change of settings that leaves
    most token rows as they were (a new max_length, more data) recomputes only the rows that changed.
    ``on_shard(n)`` is called after the n-th newly computed shard is written (progress, tests). ``info``
    counts the sequences read and computed, the shards computed, the tokens computed and the seconds.
    """
    import time

    from tqdm.auto import tqdm

    from popalign.io import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    found = cached_rows(folder)
    missing = [j for j, key in enumerate(seqs.keys) if key not in found]
    plan = shard_plan(seqs, missing, spec.shard_size)
    dim = 2 * int(model.config.hidden_size)
    out = np.empty((len(seqs.ids), dim), dtype=np.float32)
    info = {
        "sequences_cached": len(seqs.ids) - len(missing),
        "sequences_computed": len(missing),
        "shards_computed": 0,
        "tokens_computed": 0,
    }
    by_file: dict[Path, list[tuple[int, int]]] = {}
    for j, key in enumerate(seqs.keys):
        if key in found:
            path, row = found[key]
            by_file.setdefault(path, []).append((j, row))
    for path, pairs in by_file.items():
        with np.load(path) as shard:
            feats = shard["features"]
            out[[j for j, _ in pairs]] = feats[[row for _, row in pairs]]
    started = time.monotonic()
    for rows in tqdm(plan, desc="features", unit="shard", disable=not spec.progress):
        tokens = [seqs.ids[j] for j in rows]
        starts = [int(seqs.prompt_lengths[j]) for j in rows]
        parts = [
            pool_batch(model, [tokens[p] for p in b], [starts[p] for p in b], pad_id)
            for b in length_batches([len(t) for t in tokens], spec.batch_tokens)
        ]
        feats = np.concatenate(parts).astype(np.float32)
        keys = [seqs.keys[j] for j in rows]
        with atomic_path(folder / shard_name(keys)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, features=feats, keys=np.asarray(keys))
        out[rows] = feats
        info["shards_computed"] += 1
        info["tokens_computed"] += int(sum(len(t) for t in tokens))
        if on_shard is not None:
            on_shard(info["shards_computed"])
    info["seconds"] = round(time.monotonic() - started, 1)
    if info["seconds"] > 0 and info["tokens_computed"]:
        info["tokens_per_second"] = round(info["tokens_computed"] / info["seconds"], 1)
    return out, info


@dataclass
class TableFeatures:
    """Features of each preference's replies: ``chosen`` and ``rejected`` are ``(N, 2H)``."""

    chosen: np.ndarray
    rejected: np.ndarray
    info: dict[str, Any]


def table_features(
    table: PreferenceTable,
    model_name: str,
    spec: FeatureSpec,
    on_shard: Callable[[int], None] | None = None,
) -> TableFeatures:
    """Load the frozen model and its tokenizer; extract (or read from the cache) every reply's features."""
    import torch

    from popalign.modeling.load import cache_root, load_causal_lm, load_tokenizer

    spec.validate()
    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    tokenizer = load_tokenizer(model_name)
    seqs = sequences_for(table, tokenizer, spec)
    model = load_causal_lm(model_name, dtype=spec.dtype).eval()
    folder = cache_root(spec.cache_dir) / "probe" / model_fingerprint(model)
    feats, info = extract_features(model, seqs, folder, spec, tokenizer.pad_token_id, on_shard)
    # The folder's name, not its path: reports are committed, and the cache root is the machine's own.
    info.update(seqs.stats, cache_key=folder.name, pooling=POOLING, dtype=spec.dtype)
    return TableFeatures(feats[seqs.chosen], feats[seqs.rejected], info)
