"""Token rows as padded tensors: what every forward over preferences (training, reference, scoring) feeds in.

A preference ``i`` becomes two rows, ``prompt + chosen`` and ``prompt + rejected``; a batch of ``B``
preferences is ``2B`` rows, chosen first, with a completion mask that is 1 on the reply tokens only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from popalign.data.tokenize import TokenizedPreferences


def pad_rows(
    rows: list[list[int]], pad_id: int, multiple_of: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to ``(N, T)`` ids and a 0/1 attention mask."""
    width = max(len(r) for r in rows)
    if multiple_of:
        width = -(-width // multiple_of) * multiple_of
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def pair_tensors(
    tokenized: TokenizedPreferences, idx: list[int], pad_id: int, multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask``, ``completion_mask``, each ``(2B, T)``.

    Rows ``:B`` are ``prompt + chosen``, rows ``B:`` ``prompt + rejected``, of the preferences ``idx``.
    """
    prompts = [tokenized.prompt_ids[i] for i in idx]
    rows = [p + tokenized.chosen_ids[i] for p, i in zip(prompts, idx, strict=True)]
    rows += [p + tokenized.rejected_ids[i] for p, i in zip(prompts, idx, strict=True)]
    ids, mask = pad_rows(rows, pad_id, multiple_of)
    completion = mask.clone()
    for r, p in enumerate(prompts + prompts):
        completion[r, : len(p)] = 0
    return {"input_ids": ids, "attention_mask": mask, "completion_mask": completion}
