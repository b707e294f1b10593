"""PoP shortfall: top-up to k * N pairs, the warning above 10% short, zero pairs as an error; truncation."""

from __future__ import annotations

import numpy as np
import pytest

from popalign.data.tokenize import truncation_warning
from popalign.errors import DataError
from popalign.pop.build import PoPSpec, build_pop, check_pairs, shortfall_warning

# Margins 0..9 with min_gap 3: preference i has max(i - 2, 0) weaker candidates, 28 valid pairs in all;
# k = 4 asks for 40, plain iterative sampling gives 0+0+0+1+2+3+4+4+4+4 = 22.
MARGINS = np.arange(10, dtype=float)


def _pairs(spec: PoPSpec):
    pairs = build_pop(MARGINS, spec)
    strong = np.where(pairs.flipped, pairs.weak_idx, pairs.strong_idx)
    weak = np.where(pairs.flipped, pairs.strong_idx, pairs.weak_idx)
    return pairs, strong, weak


def test_plain_iterative_falls_short_and_warns_with_the_flag_or_key_names():
    pairs, _, _ = _pairs(PoPSpec(k=4, min_gap=3))
    assert len(pairs) == 22 and pairs.meta["shortfall"]["pairs_missing"] == 18
    flag = shortfall_warning(pairs.meta)
    assert "45% short of the target k x N = 40" in flag and "--min-gap" in flag and "--fill-shortfall" in flag
    key = shortfall_warning(pairs.meta, style="key")
    assert "pop.min_gap" in key and "pop.fill_shortfall=true" in key and "--" not in key


def test_fill_shortfall_tops_up_with_distinct_valid_pairs():
    pairs, strong, weak = _pairs(PoPSpec(k=4, min_gap=3, fill_shortfall=True, seed=5))
    assert len(pairs) == 28  # every valid pair: fewer exist than the target of 40
    assert pairs.meta["shortfall"] == {"preferences_short": 6, "pairs_missing": 12, "filled": 6}
    assert np.all(MARGINS[strong] - MARGINS[weak] >= 3)
    assert len({(int(s), int(w)) for s, w in zip(strong, weak, strict=True)}) == 28
    assert pairs.meta["settings"]["fill_shortfall"] is True
    again, s2, w2 = _pairs(PoPSpec(k=4, min_gap=3, fill_shortfall=True, seed=5))
    assert np.array_equal(strong, s2) and np.array_equal(weak, w2)


def test_fill_shortfall_reaches_k_times_n_when_enough_pairs_exist():
    margins = np.arange(40, dtype=float)
    pairs = build_pop(margins, PoPSpec(k=2, min_gap=1, fill_shortfall=True))
    plain = build_pop(margins, PoPSpec(k=2, min_gap=1))
    assert len(plain) == 2 * 40 - 3 and len(pairs) == 80  # margins 0 and 1 lack candidates
    assert pairs.meta["shortfall"]["filled"] == 3 and shortfall_warning(pairs.meta) is None
    # The iterative pairs are kept: the top-up only adds.
    key = {(int(s), int(w)) for s, w in zip(plain.strong_idx, plain.weak_idx, strict=True)}
    assert key <= {(int(s), int(w)) for s, w in zip(pairs.strong_idx, pairs.weak_idx, strict=True)}


def test_small_shortfall_does_not_warn():
    pairs = build_pop(np.arange(40, dtype=float), PoPSpec(k=2, min_gap=1))
    assert pairs.meta["shortfall"]["pairs_missing"] == 3 and shortfall_warning(pairs.meta) is None


def test_zero_pairs_is_an_error_naming_the_option():
    pairs = build_pop(np.zeros(5), PoPSpec(k=2, min_gap=1))
    with pytest.raises(DataError, match=r"prefs.jsonl: no PoP pairs.*lower --min-gap"):
        check_pairs(pairs, "prefs.jsonl")
    with pytest.raises(DataError, match="lower pop.min_gap"):
        check_pairs(pairs, "prefs.jsonl", style="key")
    check_pairs(build_pop(MARGINS, PoPSpec(k=1, min_gap=1)), "prefs.jsonl")  # some pairs: no error


def test_truncation_warning_above_five_percent():
    stats = {"rows": 100, "truncated_rows": 5, "max_length": 128, "longest_pair_tokens": 128}
    assert truncation_warning(stats) is None
    text = truncation_warning({**stats, "truncated_rows": 60})
    assert "60 of 100 pairs (60%)" in text and "tokenize.max_length=128" in text
