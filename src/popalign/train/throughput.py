"""Training throughput for the logs: real (non-pad) tokens per second, the padding share, MFU.

Counted over the strong pair's rows, the tokens a step trains on, in any batch layout (padded, prefix
sharing, padding-free); DPO-PoP's weak pair, a no-grad forward, enters MFU's numerator only. MFU is an
estimate: ``6 N`` FLOPs per trained token for full fine-tuning and ``4 N`` with LoRA (no weight gradients
of the frozen base), ``2 N`` per weak-pair token, ``N`` the non-embedding parameters; attention's
quadratic term is left out. It is reported only on CUDA devices whose dense bfloat16 peak is listed here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from popalign.modeling.pair_batch import STRONG, WEAK, PairBatch, layout

# Dense (no sparsity) bfloat16 peak FLOP/s per GPU, from NVIDIA's data sheets (SXM parts).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def peak_flops(device: Any) -> float | None:
    """The listed bfloat16 peak of a CUDA ``device``, else None (CPUs, unlisted GPUs)."""
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def row_tokens(pair: Mapping[str, Any]) -> tuple[int, int]:
    """``(real tokens, row positions)`` of one pair of a batch (:meth:`PairBatch.pair`), any layout; 0s for
    an empty pair (a batch without a weak pair)."""
    ids = pair.get("input_ids")
    if ids is None:
        return 0, 0
    kind = layout(pair)
    if kind == "packed":
        real = int((pair["sequence_index"] >= 0).sum())
    elif kind == "shared":
        real = int(sum(pair[p].sum() for p in ("prompt_lengths", "chosen_lengths", "rejected_lengths")))
    else:
        real = int(pair["attention_mask"].sum())
    return real, int(ids.numel())


class ThroughputMeter:
    """Tokens counted batch by batch, turned into rates at each log.

    Args:
        parameters: the model's non-embedding parameters (MFU's ``N``).
        lora: whether only an adapter trains (``4 N`` per token instead of ``6 N``).
        peak: the device's peak FLOP/s (None: no MFU).
    """

    def __init__(self, parameters: int, *, lora: bool, peak: float | None):
        self.per_token = (4 if lora else 6) * parameters
        self.per_weak_token = 2 * parameters
        self.peak = peak
        self.counts = [0, 0, 0]  # real strong tokens, strong row positions, real weak tokens
        self.since: float | None = None

    def add(self, batch: PairBatch) -> None:
        if self.since is None:
            self.since = time.perf_counter()
        real, positions = row_tokens(batch.pair(STRONG))
        self.counts[0] += real
        self.counts[1] += positions
        self.counts[2] += row_tokens(batch.pair(WEAK))[0]

    def take(self, reduce=None, processes: int = 1) -> dict[str, float]:
        """The rates since the last call (``reduce`` sums a list of counts over processes), then restart."""
        if self.since is None:
            return {}
        elapsed = max(time.perf_counter() - self.since, 1e-9)
        real, positions, weak = reduce(self.counts) if reduce else self.counts
        self.counts, self.since = [0, 0, 0], None
        out = {
            "throughput/real_tokens_per_s": round(real / elapsed, 2),
            "throughput/padding_share": round(1.0 - real / positions, 4) if positions else 0.0,
        }
        if self.peak:
            flops = self.per_token * real + self.per_weak_token * weak
            out["throughput/mfu"] = round(flops / (elapsed * self.peak * processes), 4)
        return out


def non_embedding_parameters(model: Any) -> int:
    """Parameters outside the input embeddings (the LM head counts: it is a matmul per token)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    skip = {id(p) for p in embeddings.parameters()} if embeddings is not None else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
