"""Training examples and the preference collator, on token rows small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from popalign.data.tokenize import TokenizedPreferences
from popalign.modeling.pair_batch import STRONG, WEAK, preference_count
from popalign.train.collate import BudgetBatches, PairExamples, PreferenceCollator

PAD = 0
# Three preferences: prompt lengths 2, 1, 3; replies of 1-3 tokens.
TOKENS = TokenizedPreferences(
    prompt_ids=[[5, 6], [7], [8, 9, 10]],
    chosen_ids=[[11], [12, 13], [14]],
    rejected_ids=[[21, 22], [23], [24, 25, 26]],
)


def test_pair_examples_carry_a_weak_index_only_for_pop():
    plain = PairExamples(np.array([2, 0]))
    assert len(plain) == 2 and plain[0] == {"strong": 2, "weak": -1}
    pop = PairExamples(np.array([2, 0]), np.array([1, 1]))
    assert pop[1] == {"strong": 0, "weak": 1}
    with pytest.raises(ValueError, match="differ in length"):
        PairExamples(np.array([0, 1]), np.array([0]))


def test_strong_pair_rows_masks_and_row_columns():
    gt = np.array([0.5, 1.5, 3.0])
    column = np.array([9.0, 8.0, 7.0])
    collate = PreferenceCollator(TOKENS, PAD, gt_margins=gt, margin_column=column)
    batch = collate([{"strong": 2, "weak": -1}, {"strong": 0, "weak": -1}])
    # Rows: chosen of 2 and 0, then rejected of 2 and 0; right-padded to the longest (6 tokens).
    assert batch["input_ids"].tolist() == [
        [8, 9, 10, 14, 0, 0],
        [5, 6, 11, 0, 0, 0],
        [8, 9, 10, 24, 25, 26],
        [5, 6, 21, 22, 0, 0],
    ]
    assert batch["attention_mask"].sum(dim=1).tolist() == [4, 3, 6, 4]
    assert batch["completion_mask"].tolist() == [
        [0, 0, 0, 1, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 1, 1, 0, 0],
    ]
    assert batch.gt_margins.tolist() == [3.0, 0.5]  # the score differences of preferences 2 and 0
    assert batch.margin_column.tolist() == [7.0, 9.0]  # the data's own column, a different thing
    assert batch.pair(WEAK) == {} and batch.weak_index is None
    assert set(batch.pair(STRONG)) == {"input_ids", "attention_mask", "completion_mask"}
    assert preference_count(batch.pair(STRONG)) == 2


def test_a_sources_row_inputs_travel_by_name_beside_the_pair():
    collate = PreferenceCollator(TOKENS, PAD, row_inputs={"chosen_score": np.array([7.0, 8.0, 9.0])})
    batch = collate([{"strong": 2, "weak": -1}, {"strong": 1, "weak": -1}])
    assert {k: v.tolist() for k, v in batch.rows.items()} == {"chosen_score": [9.0, 8.0]}
    assert set(batch.pair(STRONG)) == {"input_ids", "attention_mask", "completion_mask"}
    assert PreferenceCollator(TOKENS, PAD)([{"strong": 0, "weak": -1}]).rows == {}


def test_reference_logps_follow_their_rows():
    collate = PreferenceCollator(
        TOKENS,
        PAD,
        reference_chosen_logps=np.array([-1.0, -2.0, -3.0]),
        reference_rejected_logps=np.array([-4.0, -5.0, -6.0]),
    )
    batch = collate([{"strong": 1, "weak": -1}, {"strong": 2, "weak": -1}])
    strong = batch.pair(STRONG)
    assert strong["reference_chosen_logps"].tolist() == [-2.0, -3.0]
    assert strong["reference_rejected_logps"].tolist() == [-5.0, -6.0]
    assert batch.gt_margins is None and batch.margin_column is None


def test_weak_pairs_get_the_same_keys_prefixed_and_their_table_rows():
    collate = PreferenceCollator(TOKENS, PAD, with_weak=True)
    batch = collate([{"strong": 0, "weak": 1}, {"strong": 2, "weak": 1}])
    alone = PreferenceCollator(TOKENS, PAD)([{"strong": 1, "weak": -1}, {"strong": 1, "weak": -1}])
    weak = batch.pair(WEAK)
    assert set(weak) == {"input_ids", "attention_mask", "completion_mask"}
    for key in weak:
        assert torch.equal(weak[key], alone.pair(STRONG)[key])
    assert batch.weak_index.tolist() == [1, 1]
    with pytest.raises(ValueError, match="without a weak preference"):
        collate([{"strong": 0, "weak": -1}])


def test_prefix_sharing_puts_a_pair_in_one_row():
    pair = PreferenceCollator(TOKENS, PAD, prefix_sharing=True)([{"strong": 0, "weak": -1}]).pair(STRONG)
    assert pair["input_ids"].tolist() == [[5, 6, 11, 21, 22]]  # prompt once, then chosen, then rejected
    assert (pair["prompt_lengths"].tolist(), pair["chosen_lengths"].tolist()) == ([2], [1])
    assert pair["rejected_lengths"].tolist() == [2] and preference_count(pair) == 1
    with pytest.raises(ValueError, match="choose one"):
        PreferenceCollator(TOKENS, PAD, prefix_sharing=True, padding_free=True)


def test_budget_batches_hold_whole_pairs_within_the_budget():
    # Tokens per pair (2 * prompt + chosen + rejected): 7, 5, 10.
    examples = PairExamples(np.arange(3))
    batches = BudgetBatches(examples, TOKENS, budget=12, seed=0)
    groups = [sorted(e["strong"] for e in batches[i]) for i in range(len(batches))]
    assert sorted(i for g in groups for i in g) == [0, 1, 2]  # every pair once, none split
    cost = {0: 7, 1: 5, 2: 10}
    assert all(sum(cost[i] for i in g) <= 12 for g in groups)
    # A pair over the budget forms a micro-batch of its own rather than being dropped.
    alone = BudgetBatches(examples, TOKENS, budget=6, seed=0)
    assert sorted(len(alone[i]) for i in range(len(alone))) == [1, 1, 1]
    collated = PreferenceCollator(TOKENS, PAD)([batches[i] for i in range(len(batches))])
    assert preference_count(collated.pair(STRONG)) == 3  # lists of examples are concatenated
    with pytest.raises(ValueError, match="budget"):
        BudgetBatches(examples, TOKENS, budget=0)


def test_only_pair_batch_spells_the_weak_pairs_keys():
    """The batch's flat key names live in modeling/pair_batch.py; everyone else asks PairBatch."""
    import re
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src" / "popalign"
    spelled = re.compile(
        r"[\"']weak_([\"']|input_ids|attention_mask|completion_mask|index|reference|prompt_lengths|seq)"
    )
    hits = [
        f"{path.relative_to(src)}:{number}"
        for path in src.rglob("*.py")
        if path.name != "pair_batch.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if spelled.search(line)
    ]
    assert not hits, hits
