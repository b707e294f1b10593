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
    """Builds the batch a preference loss needs.

    Keys for the strong pair: ``input_ids``, ``attention_mask``, ``completion_mask`` of shape ``(2B, T)``
    (rows ``:B`` chosen, ``B:`` rejected), ``reference_chosen_logps``/``reference_rejected_logps`` ``(B,)``
    when reference log-probs are precomputed, ``gt_margins`` ``(B,)`` (the score differences) when the
    data has scores, ``margin_column`` ``(B,)`` when the data's per-row margin column is given (margin
    source ``column``). With ``with_weak`` the same pair keys prefixed ``weak_`` describe the weak pair of
    each PoP example, and ``weak_index`` ``(B,)`` holds its row in the table (the key of the trainer's
    margin cache).

    With ``prefix_sharing`` the pair tensors are instead ``input_ids`` ``(B, L)`` rows
    ``prompt + chosen + rejected`` and ``prompt_lengths``/``chosen_lengths``/``rejected_lengths`` ``(B,)``
    (see :func:`popalign.modeling.prefix_sharing.shared_rows`). With ``padding_free`` they are packed rows
    (:func:`popalign.modeling.packing.pack_pairs`: ``input_ids``, ``position_ids``, ``completion_mask``,
    ``sequence_index`` ``(R, T)`` and ``sequence_lengths`` ``(2B,)``, chosen sequences first).

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

    def _side(self, idx: list[int], prefix: str) -> dict[str, torch.Tensor]:
        if self.padding_free:
            from popalign.modeling.packing import pack_pairs

            tensors = pack_pairs(self.tok, idx, self.pad, self.multiple_of)
        elif self.prefix_sharing:
            tensors = self.shared_tensors(idx)
        else:
            tensors = self.pair_tensors(idx)
        out = {f"{prefix}{k}": v for k, v in tensors.items()}
        if self.ref_c is not None and self.ref_r is not None:
            out[f"{prefix}reference_chosen_logps"] = torch.tensor(self.ref_c[idx], dtype=torch.float32)
            out[f"{prefix}reference_rejected_logps"] = torch.tensor(self.ref_r[idx], dtype=torch.float32)
        return out

    def __call__(self, items: list[Any]) -> dict[str, torch.Tensor]:
        if items and isinstance(items[0], list):
            items = [it for group in items for it in group]
        strong = [int(it["strong"]) for it in items]
        batch = self._side(strong, "")
        if self.gt is not None:
            batch["gt_margins"] = torch.tensor(self.gt[strong], dtype=torch.float32)
        if self.margin_column is not None:
            batch["margin_column"] = torch.tensor(self.margin_column[strong], dtype=torch.float32)
        if self.with_weak:
            weak = [int(it["weak"]) for it in items]
            if min(weak) < 0:
                raise ValueError("a PoP method was given examples without a weak preference")
            batch.update(self._side(weak, "weak_"))
            batch["weak_index"] = torch.tensor(weak, dtype=torch.long)
        return batch
