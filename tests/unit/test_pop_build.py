"""PoP builder (paper Section 4.1, Appendices E and F): invariants, hand-worked cases, files, CLI."""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from itertools import combinations

import numpy as np
import pytest
from scipy.stats import spearmanr

from popalign.config import ConfigError, load_config
from popalign.data.schema import PreferenceTable
from popalign.errors import DataError, PopalignError
from popalign.pop.build import (
    PoPSpec,
    _distinct_below,
    _sample_prefix_without_replacement,
    build_pop,
    build_pop_for_table,
    weaker_candidates,
)
from popalign.pop.pairs import PoPPairs, sidecar_path

HAND_MARGINS = np.array([0.0, 0.5, 1.0, 1.0, 2.0, 3.0, 3.5, 5.0])


def make_table(margins, with_scores: bool = True) -> PreferenceTable:
    n = len(margins)
    return PreferenceTable(
        ids=[f"p{i}" for i in range(n)],
        prompts=[f"prompt {i}" for i in range(n)],
        chosen=[f"good {i}" for i in range(n)],
        rejected=[f"bad {i}" for i in range(n)],
        score_chosen=np.asarray(margins, dtype=float) + 1.0 if with_scores else None,
        score_rejected=np.ones(n) if with_scores else None,
        source="memory-table",
    )


def ultrafeedback_like(n: int, seed: int) -> np.ndarray:
    """Margins on a 0.5 grid with about 11% ties, skewed towards small margins."""
    rng = np.random.default_rng(seed)
    margins = np.minimum(rng.geometric(0.3, n) * 0.5, 8.0)
    return np.where(rng.random(n) < 0.11, 0.0, margins)


def brute_candidates(margins, min_gap):
    """For each i, the set of j with margins[j] <= margins[i] - min_gap, by definition (O(N^2))."""
    return [
        {j for j in range(len(margins)) if margins[j] <= margins[i] - min_gap + 1e-9}
        for i in range(len(margins))
    ]


def true_orientation(pairs: PoPPairs):
    """Undo the label noise: (truly stronger, truly weaker)."""
    s = np.where(pairs.flipped, pairs.weak_idx, pairs.strong_idx)
    w = np.where(pairs.flipped, pairs.strong_idx, pairs.weak_idx)
    return s, w


def check_pair_invariants(pairs: PoPPairs, margins, min_gap):
    s, w = true_orientation(pairs)
    assert pairs.strong_idx.dtype == np.int64 and pairs.flipped.dtype == bool
    assert np.all(margins[s] - margins[w] >= min_gap - 1e-9), "gap below min_gap"
    assert np.all(s != w), "self-pair"
    unordered = {(min(a, b), max(a, b)) for a, b in zip(s.tolist(), w.tolist(), strict=True)}
    assert len(unordered) == len(pairs), "a pair appears twice (in some order)"


# --- hand-worked cases -------------------------------------------------------------------------------


def test_weaker_candidate_counts_by_hand():
    # margin-1 rows compare only against the margin-0 row; 5.0 against everything up to 4.0.
    _, count = weaker_candidates(HAND_MARGINS, 1.0)
    assert count.tolist() == [0, 0, 1, 1, 4, 5, 5, 7]


def test_iterative_hand_case_coverage_and_shortfall():
    pairs = build_pop(HAND_MARGINS, PoPSpec(strategy="iterative", k=2, min_gap=1.0))
    check_pair_invariants(pairs, HAND_MARGINS, 1.0)
    # quotas min(2, count) = 0,0,1,1,2,2,2,2 -> 10 pairs of a target 16; rows 0-3 are short by 2,2,1,1.
    assert np.bincount(pairs.strong_idx, minlength=8).tolist() == [0, 0, 1, 1, 2, 2, 2, 2]
    assert len(pairs) == 10
    assert pairs.meta["counts"]["target"] == 16
    assert pairs.meta["shortfall"] == {"preferences_short": 4, "pairs_missing": 6}
    # Rows 2 and 3 (margin 1) have exactly one candidate: row 0 (margin 0).
    assert sorted(pairs.weak_idx[pairs.strong_idx == 2].tolist()) == [0]
    assert sorted(pairs.weak_idx[pairs.strong_idx == 3].tolist()) == [0]


def test_random_hand_case_infeasible_returns_every_valid_pair():
    # Valid pairs of [0, 1, 2] with gap >= 1: (1,0), (2,0), (2,1). k=2 asks for 6: all 3 come back.
    margins = np.array([0.0, 1.0, 2.0])
    pairs = build_pop(margins, PoPSpec(strategy="random", k=2))
    got = sorted(zip(pairs.strong_idx.tolist(), pairs.weak_idx.tolist(), strict=True))
    assert got == [(1, 0), (2, 0), (2, 1)]
    assert pairs.meta["counts"]["valid_pairs"] == 3
    assert pairs.meta["shortfall"] == {"preferences_short": None, "pairs_missing": 3}


def test_gap_of_exactly_min_gap_counts_despite_float_rounding():
    # 7.3 - 6.2 and 0.3 - 0.2 differ by 0.9999999999999996 in floats; on the score grid that is 1.0.
    margins = np.array([7.3 - 6.2, 0.3 - 0.2])
    assert margins[0] - margins[1] < 1.0
    pairs = build_pop(margins, PoPSpec(strategy="iterative", k=1, min_gap=1.0))
    assert (pairs.strong_idx.tolist(), pairs.weak_idx.tolist()) == ([0], [1])


def test_no_valid_pair_and_tiny_inputs():
    for margins in (np.array([]), np.array([3.0]), np.array([2.0, 2.5, 2.0])):
        for strategy in ("iterative", "random"):
            pairs = build_pop(margins, PoPSpec(strategy=strategy, k=2))
            assert len(pairs) == 0
            assert pairs.meta["shortfall"]["pairs_missing"] == 2 * len(margins)


# --- invariants on random inputs ---------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["iterative", "random"])
def test_invariants_on_random_inputs(strategy):
    rng = np.random.default_rng(123)
    for trial in range(25):
        n = int(rng.integers(2, 50))
        margins = rng.integers(0, 19, n) / 2.0
        k = int(rng.integers(1, 4))
        min_gap = float(rng.choice([0.5, 1.0, 2.0]))
        pairs = build_pop(margins, PoPSpec(strategy=strategy, k=k, min_gap=min_gap, seed=trial, noise=0.2))
        check_pair_invariants(pairs, margins, min_gap)
        cands = brute_candidates(margins, min_gap)
        valid = sum(len(c) for c in cands)
        assert pairs.meta["counts"]["valid_pairs"] == valid
        s, w = true_orientation(pairs)
        for a, b in zip(s.tolist(), w.tolist(), strict=True):
            assert b in cands[a]
        if strategy == "iterative":
            quota = [min(k, len(c)) for c in cands]
            assert np.bincount(s, minlength=n).tolist() == quota
            assert pairs.meta["shortfall"] == {
                "preferences_short": sum(len(c) < k for c in cands),
                "pairs_missing": k * n - sum(quota),
            }
        else:
            assert len(pairs) == min(k * n, valid)
            assert pairs.meta["shortfall"]["pairs_missing"] == max(k * n - valid, 0)


def test_counts_equal_k_times_n_when_feasible():
    # Two well-separated groups: every high row has all 30 low rows as candidates.
    margins = np.concatenate([np.zeros(30), np.full(30, 5.0)])
    for k in (1, 2, 4):
        it = build_pop(margins, PoPSpec(strategy="iterative", k=k))
        assert len(it) == k * 30  # only the 30 high rows can be strong
        rnd = build_pop(margins, PoPSpec(strategy="random", k=k))
        assert len(rnd) == k * 60 and rnd.meta["shortfall"]["pairs_missing"] == 0


def test_random_accepts_fractional_k():
    margins = ultrafeedback_like(400, 0)
    pairs = build_pop(margins, PoPSpec(strategy="random", k=0.25))
    assert len(pairs) == 100 and pairs.meta["counts"]["target"] == 100


def test_random_favours_strong_preferences_and_iterative_is_even():
    margins = ultrafeedback_like(3000, 1)
    rnd = build_pop(margins, PoPSpec(strategy="random", k=2, seed=3))
    assert margins[rnd.strong_idx].mean() > margins[rnd.weak_idx].mean() + 1.0
    strong_counts = np.bincount(rnd.strong_idx, minlength=margins.size)
    assert spearmanr(strong_counts, margins).statistic > 0.5
    it = build_pop(margins, PoPSpec(strategy="iterative", k=2, seed=3))
    it_counts = np.bincount(it.strong_idx, minlength=margins.size)
    _, count = weaker_candidates(margins, 1.0)
    assert np.array_equal(it_counts, np.minimum(count, 2))  # equal representation where possible


def test_floyd_sampler_is_uniform_over_subsets():
    # 4 choose 2 = 6 subsets, each with probability 1/6; 60,000 rows -> 10,000 each, sd ~91.
    rng = np.random.default_rng(0)
    picks = _sample_prefix_without_replacement(np.full(60_000, 4, dtype=np.int64), 2, rng)
    assert np.all(picks[:, 0] != picks[:, 1]) and picks.min() == 0 and picks.max() == 3
    freq = Counter(tuple(sorted(p)) for p in picks.tolist())
    assert set(freq) == set(combinations(range(4), 2))
    for c in freq.values():
        assert abs(c - 10_000) < 5 * math.sqrt(60_000 * (1 / 6) * (5 / 6))


@pytest.mark.parametrize("total,size", [(10, 3), (10, 8)])  # sparse (draw + dedup) and dense (shuffle)
def test_distinct_below_is_uniform(total, size):
    rng = np.random.default_rng(1)
    reps = 3000
    hits = np.zeros(total)
    for _ in range(reps):
        keys = _distinct_below(total, size, rng)
        assert keys.size == size and np.unique(keys).size == size and keys.min() >= 0 and keys.max() < total
        hits[keys] += 1
    p = size / total
    assert np.all(np.abs(hits - reps * p) < 5 * math.sqrt(reps * p * (1 - p)))


# --- label noise (Appendix F) ------------------------------------------------------------------------


def test_noise_rate_and_flipped_pairs_are_exactly_the_swapped_ones():
    margins = ultrafeedback_like(10_000, 2)
    clean = build_pop(margins, PoPSpec(strategy="random", k=2, seed=5))
    noisy = build_pop(margins, PoPSpec(strategy="random", k=2, seed=5, noise=0.3))
    p = len(noisy)
    assert p == 20_000
    rate = noisy.flipped.mean()
    assert abs(rate - 0.3) < 3 * math.sqrt(0.3 * 0.7 / p)
    assert noisy.meta["counts"]["flipped"] == int(noisy.flipped.sum())
    f = noisy.flipped
    # Same pairs as without noise; flipped ones swapped, the others untouched.
    assert np.array_equal(noisy.strong_idx[f], clean.weak_idx[f])
    assert np.array_equal(noisy.weak_idx[f], clean.strong_idx[f])
    assert np.array_equal(noisy.strong_idx[~f], clean.strong_idx[~f])
    # A stored label is against the margins exactly when it was flipped.
    assert np.array_equal(margins[noisy.strong_idx] < margins[noisy.weak_idx], f)
    assert noisy.meta["appearances"]["labels_against_margins"] == int(f.sum())


def test_lower_noise_flips_a_subset_of_higher_noise():
    margins = ultrafeedback_like(2000, 3)
    low = build_pop(margins, PoPSpec(strategy="iterative", k=2, noise=0.1))
    high = build_pop(margins, PoPSpec(strategy="iterative", k=2, noise=0.3))
    assert np.all(high.flipped[low.flipped]) and high.flipped.sum() > low.flipped.sum()
    assert not build_pop(margins, PoPSpec(noise=0.0)).flipped.any()
    assert build_pop(margins, PoPSpec(noise=1.0)).flipped.all()


# --- determinism, spec, table ------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["iterative", "random"])
def test_determinism_per_seed(strategy):
    margins = ultrafeedback_like(500, 4)
    a = build_pop(margins, PoPSpec(strategy=strategy, seed=11, noise=0.2))
    b = build_pop(margins, PoPSpec(strategy=strategy, seed=11, noise=0.2))
    c = build_pop(margins, PoPSpec(strategy=strategy, seed=12, noise=0.2))
    for name in ("strong_idx", "weak_idx", "flipped"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.strong_idx, c.strong_idx) or not np.array_equal(a.weak_idx, c.weak_idx)
    assert a.meta == b.meta


def test_spec_validation_and_config_overrides():
    spec = load_config(PoPSpec, None, ["strategy=random", "k=4", "min_gap=0.5", "noise=0.1", "seed=3"])
    assert spec == PoPSpec(strategy="random", k=4.0, min_gap=0.5, noise=0.1, seed=3)
    with pytest.raises(ConfigError, match="whole"):
        load_config(PoPSpec, None, ["k=1.5"])  # iterative needs a whole k
    for bad in (["k=0"], ["min_gap=0"], ["noise=1.5"], ["noise=-0.1"], ["strategy=greedy"]):
        with pytest.raises(ConfigError):
            load_config(PoPSpec, None, bad)


def test_margins_must_be_finite():
    with pytest.raises(DataError) as err:
        build_pop(np.array([1.0, np.nan, 2.0]), PoPSpec())
    assert err.value.row == 2 and err.value.field == "margin"


def test_table_without_scores_is_refused_and_meta_names_the_source():
    with pytest.raises(DataError, match="no scores"):
        build_pop_for_table(make_table(HAND_MARGINS, with_scores=False), PoPSpec())
    table = make_table(HAND_MARGINS)
    pairs = build_pop_for_table(table, PoPSpec(seed=2))
    assert pairs.meta["source"] == {
        "path": "memory-table",
        "fingerprint": table.fingerprint(),
        "preferences": 8,
    }
    assert pairs.meta["settings"] == {
        "strategy": "iterative",
        "k": 2.0,
        "min_gap": 1.0,
        "noise": 0.0,
        "seed": 2,
        "fill_shortfall": False,
    }
    by_margin = pairs.meta["appearances"]["by_margin"]
    assert [r["margin_lo"] for r in by_margin] == [0.0, 0.5, 1.0, 2.0, 3.0, 3.5, 5.0]
    assert sum(r["strong"] for r in by_margin) == len(pairs) == sum(r["weak"] for r in by_margin)


# --- files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pop.parquet", "pop.jsonl"])
def test_save_load_round_trip(tmp_path, name):
    table = make_table(ultrafeedback_like(300, 5))
    pairs = build_pop_for_table(table, PoPSpec(strategy="random", noise=0.25))
    path = tmp_path / "out" / name
    pairs.save(path, table)
    assert sidecar_path(path).name == name + ".meta.json"
    assert json.loads(sidecar_path(path).read_text()) == json.loads(json.dumps(pairs.meta))
    back = PoPPairs.load(path, table)
    assert np.array_equal(back.strong_idx, pairs.strong_idx)
    assert np.array_equal(back.weak_idx, pairs.weak_idx)
    assert np.array_equal(back.flipped, pairs.flipped)
    assert back.meta["counts"] == pairs.meta["counts"]
    # Ids, not positions, are stored: the same pairs load into a reordered table.
    rev = table.select(np.arange(len(table))[::-1])
    moved = PoPPairs.load(path, rev)
    assert [rev.ids[i] for i in moved.strong_idx] == [table.ids[i] for i in pairs.strong_idx]


def test_pair_file_holds_ids_not_text(tmp_path):
    table = make_table(HAND_MARGINS)
    path = tmp_path / "pop.jsonl"
    build_pop_for_table(table, PoPSpec()).save(path, table)
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"strong_id", "weak_id", "flipped"} and first["strong_id"] in table.ids


def test_load_errors_name_file_row_and_field(tmp_path):
    table = make_table(HAND_MARGINS)
    path = tmp_path / "pop.jsonl"
    path.write_text('{"strong_id": "p4", "weak_id": "p0"}\n{"strong_id": "p5", "weak_id": "nope"}\n')
    with pytest.raises(DataError) as err:
        PoPPairs.load(path, table)
    assert (err.value.file, err.value.row, err.value.field) == (str(path), 2, "weak_id")
    path.write_text('{"strong_id": "p4", "weak_id": "p4"}\n')
    with pytest.raises(DataError, match="itself"):
        PoPPairs.load(path, table)
    path.write_text('{"strong_id": "p4", "weak_id": "p0"}\n')
    loaded = PoPPairs.load(path, table)  # flipped may be omitted in a hand-made file; no sidecar
    assert loaded.flipped.tolist() == [False] and loaded.meta == {}
    with pytest.raises(PopalignError, match="parquet or .jsonl"):
        loaded.save(tmp_path / "pop.csv", table)


def test_hand_made_parquet_with_numeric_ids_and_bad_flipped(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = PreferenceTable(ids=["10", "20", "30"], prompts=["x"] * 3, chosen=["c"] * 3, rejected=["r"] * 3)
    path = tmp_path / "pop.parquet"
    pq.write_table(pa.table({"strong_id": [30, 20], "weak_id": [10, 10]}), path)
    loaded = PoPPairs.load(path, table)
    assert (loaded.strong_idx.tolist(), loaded.weak_idx.tolist(), loaded.flipped.tolist()) == (
        [2, 1],
        [0, 0],
        [False, False],
    )
    pq.write_table(
        pa.table({"strong_id": ["30", "20"], "weak_id": ["10", "10"], "flipped": [True, None]}), path
    )
    with pytest.raises(DataError) as err:
        PoPPairs.load(path, table)
    assert (err.value.row, err.value.field) == (2, "flipped")
    pq.write_table(pa.table({"strong": ["30"], "weak_id": ["10"]}), path)
    with pytest.raises(DataError, match="missing column"):
        PoPPairs.load(path, table)


# --- UltraFeedback sample and CLI --------------------------------------------------------------------


def test_ultrafeedback_sample_builds(ultrafeedback_dir):
    from popalign.data.load import load_preferences

    table, _ = load_preferences(str(ultrafeedback_dir / "train.jsonl"))
    margins = table.margins
    for strategy in ("iterative", "random"):
        pairs = build_pop_for_table(table, PoPSpec(strategy=strategy, k=2, noise=0.1, seed=0))
        check_pair_invariants(pairs, margins, 1.0)
        assert pairs.meta["source"]["preferences"] == len(table) == 1000
    it = build_pop_for_table(table, PoPSpec(strategy="iterative"))
    # Margins below 1 have no candidate 1 lower; every margin >= 1 has at least the ties (margin 0).
    short = int(np.count_nonzero(margins < 1.0))
    assert it.meta["shortfall"] == {"preferences_short": short, "pairs_missing": 2 * short}
    assert len(it) == 2 * (len(table) - short)


def run_cli(argv):
    from popalign.cli import pop

    parser = argparse.ArgumentParser(prog="popalign")
    pop.register(parser.add_subparsers(dest="command"), "PoP datasets")
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_build_writes_pairs_and_sidecar(tmp_path, capsys):
    data = tmp_path / "prefs.jsonl"
    with data.open("w") as fh:
        for i, m in enumerate(HAND_MARGINS):
            row = {"id": f"p{i}", "prompt": f"q{i}", "chosen": "c", "rejected": "r",
                   "score_chosen": 1.0 + m, "score_rejected": 1.0}  # fmt: skip
            fh.write(json.dumps(row) + "\n")
    assert run_cli(["pop", "build", str(data), "-k", "2", "--seed", "1", "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "PoP pairs: 10 (target 16)" in out and "6 pairs missing" in out
    path = tmp_path / "out" / "pop_pairs.parquet"
    table = make_table(HAND_MARGINS)
    loaded = PoPPairs.load(path, table)
    assert len(loaded) == 10 and loaded.meta["settings"]["seed"] == 1
    assert np.bincount(loaded.strong_idx, minlength=8).tolist() == [0, 0, 1, 1, 2, 2, 2, 2]
    with pytest.raises(ConfigError):
        run_cli(["pop", "build", str(data), "-k", "1.5", "-o", str(tmp_path / "x.parquet")])


def test_cli_build_on_ultrafeedback(ultrafeedback_dir, tmp_path, capsys):
    out = tmp_path / "random.jsonl"
    argv = ["pop", "build", str(ultrafeedback_dir), "--split", "test", "--strategy", "random", "-o", str(out)]
    assert run_cli(argv) == 0
    assert "PoP pairs: 400 (target 400)" in capsys.readouterr().out
    assert json.loads(sidecar_path(out).read_text())["source"]["preferences"] == 200
