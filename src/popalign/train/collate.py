"""Training examples and collators.

An example is a pair of row indices into the tokenised preference table: ``strong`` (the preference
trained on) and, for PoP, ``weak`` (whose target-policy reward difference becomes the margin).
Collators turn a list of examples into padded tensors; chosen and rejected go in one batch of
``2B`` rows so the policy runs one forward pass for both, or, with prefix sharing, in ``B`` rows
``prompt + chosen + rejected`` so the prompt is computed once (:mod:`popalign.modeling.prefix_sharing`),
or, padding-free, end to end in a few rows without padding (:mod:`popalign.modeling.packing`).

With a token budget (``training.max_tokens_per_batch``) a micro-batch is not a fixed number of examples:
:class:`BudgetBatches` groups whole examples (a pair is never split) until the next would pass the budget.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from popalign.data.tokenize import TokenizedPreferences
from popalign.modeling.batching import pair_tensors
from popalign.modeling.pair_batch import PairBatch

__all__ = ["BudgetBatches", "PairExamples", "PreferenceCollator"]


class PairExamples(Dataset):
    """``{"strong": i, "weak": j}`` items; ``weak`` is -1 when examples are plain preferences."""

    def __init__(self, strong_idx: np.ndarray, weak_idx: np.ndarray | None = None):
        self.strong = np.asarray(strong_idx, dtype=np.int64)
        self.weak = None if weak_idx is None else np.asarray(weak_idx, dtype=np.int64)
        if self.weak is not None and len(self.weak) != len(self.strong):
            raise ValueError("strong and weak index arrays differ in length")

    def __len__(self) -> int:
        return len(self.strong)

    def __getitem__(self, i: int) -> dict[str, int]:
        return {"strong": int(self.strong[i]), "weak": -1 if self.weak is None else int(self.weak[i])}


class BudgetBatches(Dataset):
    """Micro-batches of whole examples, each holding at most ``budget`` tokens of strong-pair sequences
    (``prompt + chosen`` and ``prompt + rejected``, before any padding); an item is a list of examples.

    Examples are grouped in a seeded random order, then the Trainer's sampler shuffles the groups. One
    example longer than the budget forms a micro-batch of its own (nothing is dropped).
    """

    def __init__(self, examples: PairExamples, tokenized: TokenizedPreferences, budget: int, seed: int = 0):
        if budget < 1:
            raise ValueError(f"the token budget must be >= 1, got {budget}")
        order = np.random.default_rng(seed).permutation(len(examples))
        self.batches: list[list[int]] = []
        used = budget
        for i in order.tolist():
            s = int(examples.strong[i])
            tokens = (
                2 * len(tokenized.prompt_ids[s])
                + len(tokenized.chosen_ids[s])
                + len(tokenized.rejected_ids[s])
            )
            if used + tokens > budget:
                self.batches.append([])
                used = 0
            self.batches[-1].append(i)
            used += tokens
        self.examples = examples

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> list[dict[str, int]]:
        return [self.examples[j] for j in self.batches[i]]


class PreferenceCollator:
    """Builds the :class:`~popalign.modeling.pair_batch.PairBatch` a preference loss needs.

    The strong pair in one layout (padded, ``2B`` rows, chosen first; with ``prefix_sharing`` one row
    ``prompt + chosen + rejected`` per preference; with ``padding_free`` packed rows), with the reference
    log-probs when they are precomputed; the score differences (``gt_margins``) when the data has scores;
    the data's margin column when given (margin source ``column``); a margin source's further per-row
    inputs (``row_inputs``, by name). With ``with_weak`` the weak pair of
    each PoP example in the same layout, and its row in the table (the key of the trainer's margin cache).

    Items may be examples or lists of examples (:class:`BudgetBatches`), which are concatenated.
    """

    def __init__(
        self,
        tokenized: TokenizedPreferences,
        pad_token_id: int,
        *,
        reference_chosen_logps: np.ndarray | None = None,
        reference_rejected_logps: np.ndarray | None = None,
        gt_margins: np.ndarray | None = None,
        margin_column: np.ndarray | None = None,
        row_inputs: dict[str, np.ndarray] | None = None,
        with_weak: bool = False,
        pad_to_multiple_of: int | None = None,
        prefix_sharing: bool = False,
        padding_free: bool = False,
    ):
        if prefix_sharing and padding_free:
            raise ValueError("prefix sharing and padding-free rows are two layouts; choose one")
        self.tok = tokenized
        self.pad = pad_token_id
        self.ref_c = reference_chosen_logps
        self.ref_r = reference_rejected_logps
        self.gt = gt_margins
        self.margin_column = margin_column
        self.row_inputs = row_inputs or {}
        self.with_weak = with_weak
        self.multiple_of = pad_to_multiple_of
        self.prefix_sharing = prefix_sharing
        self.padding_free = padding_free

    def pair_tensors(self, idx: list[int]) -> dict[str, torch.Tensor]:
        return pair_tensors(self.tok, idx, self.pad, self.multiple_of)

    def shared_tensors(self, idx: list[int]) -> dict[str, torch.Tensor]:
        from popalign.modeling.prefix_sharing import shared_rows

        return shared_rows(
            [self.tok.prompt_ids[i] for i in idx],
            [self.tok.chosen_ids[i] for i in idx],
            [self.tok.rejected_ids[i] for i in idx],
            self.pad,
            self.multiple_of,
        )

    def _pair(self, idx: list[int]) -> dict[str, torch.Tensor]:
        if self.padding_free:
            from popalign.modeling.packing import pack_pairs

            tensors = pack_pairs(self.tok, idx, self.pad, self.multiple_of)
        elif self.prefix_sharing:
            tensors = self.shared_tensors(idx)
        else:
            tensors = self.pair_tensors(idx)
        out = dict(tensors)
        if self.ref_c is not None and self.ref_r is not None:
            out["reference_chosen_logps"] = torch.tensor(self.ref_c[idx], dtype=torch.float32)
            out["reference_rejected_logps"] = torch.tensor(self.ref_r[idx], dtype=torch.float32)
        return out

    def __call__(self, items: list[Any]) -> PairBatch:
        if items and isinstance(items[0], list):
            items = [it for group in items for it in group]
        strong = [int(it["strong"]) for it in items]
        weak = weak_index = None
        if self.with_weak:
            weak_rows = [int(it["weak"]) for it in items]
            if min(weak_rows) < 0:
                raise ValueError("a PoP method was given examples without a weak preference")
            weak, weak_index = self._pair(weak_rows), torch.tensor(weak_rows, dtype=torch.long)
        return PairBatch.build(
            self._pair(strong),
            weak=weak,
            weak_index=weak_index,
            gt_margins=None if self.gt is None else torch.tensor(self.gt[strong], dtype=torch.float32),
            margin_column=(
                None
                if self.margin_column is None
                else torch.tensor(self.margin_column[strong], dtype=torch.float32)
            ),
            rows={k: torch.tensor(v[strong], dtype=torch.float32) for k, v in self.row_inputs.items()},
        )
