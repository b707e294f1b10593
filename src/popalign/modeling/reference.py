"""The reference model: its log-probs computed once per preference and cached on disk, or a live copy.

The reference policy never changes during training, so ``log pi_ref(y|x)`` for every chosen and
rejected response is computed once, before training, and stored under a key made of the model's and
the tokenised data's fingerprints. Every PoP example then reads both of its pairs from that table.
With ``reference.precompute=false`` a full fine-tune runs a frozen copy of the starting model instead
(:func:`frozen_copy`); a LoRA model is its own reference with its adapters off.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from popalign.data.tokenize import TokenizedPreferences
from popalign.io import atomic_path

log = logging.getLogger(__name__)


def frozen_copy(model: torch.nn.Module, device: Any) -> torch.nn.Module:
    """A copy of ``model`` on ``device`` in eval mode with no gradients: the live reference model."""
    return copy.deepcopy(model).eval().requires_grad_(False).to(device)


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of the architecture and every weight's shape and summary statistics.

    Reading each weight once costs far less than the forward passes it saves, and any fine-tuning
    step changes the sums, so a stale cache cannot be reused by mistake.
    """
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        h.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    idle = _idle_adapter_weights(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if id(p) in idle:
                continue
            t = p.detach().float()
            h.update(f"{name}:{tuple(t.shape)}:{t.sum().item():.8e}:{t.abs().sum().item():.8e}".encode())
    return h.hexdigest()[:16]


def _idle_adapter_weights(model: torch.nn.Module) -> set[int]:
    """ids of the peft adapter weights that take no part in the forward pass as the model stands.

    The reference of a LoRA run is its policy with the adapters disabled: their weights (randomly
    initialised per seed, a Polyak target adapter beside them) do not change its log-probs, so they must
    not change its cache key either, or every run would recompute the same reference. Active adapters
    stay in the fingerprint.
    """
    import sys

    if "peft" not in sys.modules:  # no peft layer can exist without it
        return set()
    from peft.tuners.tuners_utils import BaseTunerLayer

    out: set[int] = set()
    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        active = set() if module.disable_adapters else set(module.active_adapters)
        for attr in module.adapter_layer_names:
            for adapter, weights in getattr(module, attr).items():
                if adapter not in active:
                    params = [weights] if isinstance(weights, torch.nn.Parameter) else weights.parameters()
                    out.update(id(p) for p in params)
    return out


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def compute_reference_logps(
    model: torch.nn.Module,
    tokenized: TokenizedPreferences,
    pad_token_id: int,
    *,
    batch_size: int = 8,
    indices: np.ndarray | None = None,
    progress: bool = True,
    desc: str = "reference log-probs",
) -> tuple[np.ndarray, np.ndarray]:
    """``(reference_chosen_logps, reference_rejected_logps)``, each ``(N,)`` float64 (or ``len(indices)``)."""
    from tqdm.auto import tqdm

    from popalign.modeling.batching import pair_tensors
    from popalign.modeling.logps import completion_logps

    idx = np.arange(len(tokenized)) if indices is None else np.asarray(indices, dtype=np.int64)
    # Similar lengths in a batch waste less padding; the order is undone when writing results.
    lengths = np.array([len(tokenized.prompt_ids[i]) + len(tokenized.chosen_ids[i]) for i in idx])
    order = idx[np.argsort(-lengths, kind="stable")]
    chosen = np.zeros(len(tokenized), dtype=np.float64)
    rejected = np.zeros(len(tokenized), dtype=np.float64)
    device = next(model.parameters()).device
    with _eval_mode(model):
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            part = order[start : start + batch_size].tolist()
            batch = {k: v.to(device) for k, v in pair_tensors(tokenized, part, pad_token_id).items()}
            logps = completion_logps(
                model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
            )
            logps = logps.double().cpu().numpy()
            chosen[part] = logps[: len(part)]
            rejected[part] = logps[len(part) :]
    if indices is not None:
        return chosen[idx], rejected[idx]
    return chosen, rejected


def cached_reference_logps(
    model: torch.nn.Module,
    tokenized: TokenizedPreferences,
    pad_token_id: int,
    cache_dir: str | Path | None,
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Reference log-probs for every preference, from the cache when the same model and data were seen.

    Under ``accelerate launch`` each process computes its share and the results are gathered, so the
    work is split, not repeated. Returns the two arrays and a small record (key, hit or miss, path;
    on a miss also the number of processes that shared the work).
    """
    _require_weights(model)
    key = f"{model_fingerprint(model)}-{tokenized.fingerprint}"
    path = Path(cache_dir) / "reference" / f"{key}.npz" if cache_dir else None
    if path is not None and path.exists():
        with np.load(path) as z:
            return z["chosen"], z["rejected"], {"key": key, "cache": "hit", "path": str(path)}
    chosen, rejected = _distributed_compute(model, tokenized, pad_token_id, batch_size, progress)
    if path is not None and _is_main_process():
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, chosen=chosen, rejected=rejected)
    record = {"key": key, "cache": "miss", "path": str(path) if path else None}
    return chosen, rejected, {**record, "processes": _state().num_processes}


def _require_weights(model: torch.nn.Module) -> None:
    """Refuse a model whose weights this process never loaded (they live on the ``meta`` device).

    That is what FSDP's ``fsdp_cpu_ram_efficient_loading: true`` gives every process but the first: the
    weights arrive only when the model is wrapped, after the reference log-probs are needed.
    """
    empty = [name for name, p in model.named_parameters() if p.is_meta]
    if empty:
        from popalign.errors import PopalignError

        raise PopalignError(
            f"the model's weights are not loaded in this process ({len(empty)} empty, e.g. {empty[0]}), so "
            "its reference log-probs cannot be computed; set fsdp_cpu_ram_efficient_loading: false in the "
            "accelerate config (as configs/accelerate/fsdp.yaml does)"
        )


def _state():
    """The process group as the Trainer will see it.

    This runs before ``TrainingArguments`` sets the state up, and a bare ``PartialState()`` ignores
    ``ACCELERATE_USE_CPU``: on a CPU-only ``accelerate launch`` it would report one process, and every
    process would compute (and write) the whole table.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def _is_main_process() -> bool:
    return _state().is_main_process


def _distributed_compute(model, tokenized, pad_token_id, batch_size, progress):
    from accelerate.utils import gather_object

    state = _state()
    if state.num_processes == 1:
        return compute_reference_logps(
            model, tokenized, pad_token_id, batch_size=batch_size, progress=progress
        )
    # A list, not a numpy array: split_between_processes returns types it does not know whole.
    all_idx = list(range(len(tokenized)))
    with state.split_between_processes(all_idx) as mine:
        c, r = compute_reference_logps(
            model, tokenized, pad_token_id, batch_size=batch_size, indices=mine, progress=progress
        )
        local = list(zip(np.asarray(mine).tolist(), c.tolist(), r.tolist(), strict=True))
    chosen = np.zeros(len(tokenized))
    rejected = np.zeros(len(tokenized))
    for i, ci, ri in gather_object(local):
        chosen[i], rejected[i] = ci, ri
    return chosen, rejected
