"""The batch a preference loss reads, typed: the strong pair, the weak pair of a PoP example, and the row
columns (score differences, the data's margin column, the weak pairs' table rows).

A *pair* is one side's tensors in one of three layouts, told apart by their keys:

- padded (:func:`popalign.modeling.batching.pair_tensors`): ``input_ids``, ``attention_mask``,
  ``completion_mask`` of ``2B`` rows, chosen first;
- shared prefix (:func:`popalign.modeling.prefix_sharing.shared_rows`): ``B`` rows
  ``prompt + chosen + rejected`` with ``prompt_lengths``, ``chosen_lengths``, ``rejected_lengths``;
- packed (:func:`popalign.modeling.packing.pack_pairs`): ``input_ids``, ``position_ids``,
  ``completion_mask``, ``sequence_index`` and ``sequence_lengths`` (``2B`` sequences, chosen first);

plus, when precomputed, ``reference_chosen_logps`` / ``reference_rejected_logps`` ``(B,)``.

transformers' Trainer and accelerate move a batch to its device as a mapping and rebuild it with its own
type, so :class:`PairBatch` is a ``dict`` of flat names; this module is the only place that spells them.
The collator builds one with :meth:`PairBatch.build`, the trainer reads :meth:`PairBatch.pair` and the row
columns, and the margin cache narrows a pair with :func:`select_pairs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import Tensor

Side = Literal["strong", "weak"]
STRONG: Side = "strong"
WEAK: Side = "weak"
_WEAK_PREFIX = "weak_"
_ROW_PREFIX = "row:"  # a margin source's further per-row inputs, by name
_GT_MARGINS, _MARGIN_COLUMN, _WEAK_INDEX = "gt_margins", "margin_column", "weak_index"
_ROW_COLUMNS = (_GT_MARGINS, _MARGIN_COLUMN, _WEAK_INDEX)

# A padded pair's tensors with 2B rows (chosen, then rejected); a shared-prefix pair has B rows of them, and
# every other tensor of a pair has B rows.
PAIR_ROW_KEYS = ("input_ids", "attention_mask", "completion_mask")


class PairBatch(dict):
    """One micro-batch of preferences (see the module's docstring for what a pair holds)."""

    @classmethod
    def build(
        cls,
        strong: Mapping[str, Tensor],
        *,
        weak: Mapping[str, Tensor] | None = None,
        weak_index: Tensor | None = None,
        gt_margins: Tensor | None = None,
        margin_column: Tensor | None = None,
        rows: Mapping[str, Tensor] | None = None,
    ) -> PairBatch:
        """The batch of a strong pair and, for PoP, the weak pair with its table rows ``weak_index`` (the
        margin cache's key); ``gt_margins`` are the strong preferences' score differences, ``margin_column``
        the data's own margin column, ``rows`` a margin source's further inputs by name, each ``(B,)``."""
        batch = cls(strong)
        batch.update({f"{_ROW_PREFIX}{k}": v for k, v in (rows or {}).items()})
        if gt_margins is not None:
            batch[_GT_MARGINS] = gt_margins
        if margin_column is not None:
            batch[_MARGIN_COLUMN] = margin_column
        if weak is not None:
            batch.update({f"{_WEAK_PREFIX}{k}": v for k, v in weak.items()})
            if weak_index is not None:
                batch[_WEAK_INDEX] = weak_index
        return batch

    def pair(self, side: Side) -> dict[str, Tensor]:
        """The tensors of one pair, under their layout's names; empty when the batch has no such pair."""
        if side == WEAK:
            return {
                k[len(_WEAK_PREFIX) :]: v
                for k, v in self.items()
                if k.startswith(_WEAK_PREFIX) and k != _WEAK_INDEX
            }
        return {
            k: v
            for k, v in self.items()
            if not k.startswith((_WEAK_PREFIX, _ROW_PREFIX)) and k not in _ROW_COLUMNS
        }

    @property
    def rows(self) -> dict[str, Tensor]:
        """``(B,)`` a margin source's further per-row inputs, by name (``MarginSource.row_inputs``)."""
        return {k[len(_ROW_PREFIX) :]: v for k, v in self.items() if k.startswith(_ROW_PREFIX)}

    @property
    def gt_margins(self) -> Tensor | None:
        """``(B,)`` score differences ``score_chosen - score_rejected`` of the strong preferences."""
        return self.get(_GT_MARGINS)

    @property
    def margin_column(self) -> Tensor | None:
        """``(B,)`` the data's own per-row margin column (margin source ``column``)."""
        return self.get(_MARGIN_COLUMN)

    @property
    def weak_index(self) -> Tensor | None:
        """``(B,)`` the table row of each weak pair (PoP only)."""
        return self.get(_WEAK_INDEX)


def layout(pair: Mapping[str, Tensor]) -> Literal["packed", "shared", "padded"]:
    """Which of the three layouts ``pair`` is in."""
    if "sequence_index" in pair:
        return "packed"
    if "prompt_lengths" in pair:
        return "shared"
    return "padded"


def preference_count(pair: Mapping[str, Tensor]) -> int:
    """The preferences of a pair (or of a batch's strong pair), in any layout."""
    kind = layout(pair)
    if kind == "shared":
        return int(pair["prompt_lengths"].shape[0])
    if kind == "packed":
        return int(pair["sequence_lengths"].shape[0]) // 2
    return int(pair["input_ids"].shape[0]) // 2


def select_pairs(pair: Mapping[str, Tensor], rows: Tensor) -> dict[str, Tensor]:
    """The pair's tensors for the preferences ``rows`` (a (k,) index into its ``B``) only.

    Padded layout: the ``2B``-row tensors keep rows ``rows`` and ``B + rows`` (chosen, then rejected).
    Packed layout: the sequences ``rows`` and ``B + rows`` are packed anew.
    """
    import torch

    if layout(pair) == "packed":
        return _select_packed(pair, rows)
    n = preference_count(pair)
    shared = layout(pair) == "shared"
    both = rows if shared else torch.cat([rows, rows + n])
    return {
        key: value[both] if key in PAIR_ROW_KEYS else value[rows]
        for key, value in pair.items()
        if torch.is_tensor(value)
    }


def _select_packed(pair: Mapping[str, Tensor], rows: Tensor) -> dict[str, Tensor]:
    import torch

    from popalign.modeling.packing import PACKED_ROW_KEYS, select_sequences

    n = preference_count(pair)
    packed = {k: pair[k] for k in (*PACKED_ROW_KEYS, "sequence_lengths")}
    out = select_sequences(packed, torch.cat([rows, rows + n]))
    for key, value in pair.items():
        if torch.is_tensor(value) and key not in out:
            out[key] = value[rows]
    return out
