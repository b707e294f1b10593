"""Predicted margins from tiny models, checked against a direct, unbatched computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from popalign.data.schema import PreferenceTable
from popalign.data.tokenize import TokenizeSpec, tokenize_preferences
from popalign.errors import PopalignError
from popalign.eval.scoring import (
    PolicyScorer,
    RewardModelScorer,
    detect_kind,
    load_scorer,
    resolve_beta,
    tokenize_spec_for,
)

SIZE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
SPEC = TokenizeSpec(max_length=64, max_prompt_length=32)


@pytest.fixture(scope="module")
def tokenizer():
    from popalign.modeling.tokenizer import build_local_tokenizer

    return build_local_tokenizer()


@pytest.fixture(scope="module")
def table() -> PreferenceTable:
    return PreferenceTable(
        ids=["a", "b", "c", "d", "e"],
        prompts=["What is 2+2?", "Name a colour.", "Say hi.", "Write a long sentence about the sea.", "Why?"],
        chosen=["4", "Blue is a colour.", "Hi!", "The sea is wide and deep and full of fish.", "Because."],
        rejected=["5", "Dog.", "Bye", "Sea.", "I cannot say why, sorry."],
        score_chosen=np.array([5.0, 4.0, 3.0, 5.0, 2.0]),
        score_rejected=np.array([1.0, 4.0, 2.0, 1.0, 1.5]),
    )


def _causal(tokenizer, seed):
    from popalign.modeling.tiny import tiny_causal_lm

    return tiny_causal_lm(tokenizer, seed=seed, **SIZE).eval()


def _direct_logp(model, prompt_ids, completion_ids) -> float:
    """log pi(completion | prompt) from one unpadded forward and a full log-softmax."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    start = len(prompt_ids)
    return float(sum(logprobs[t - 1, ids[0, t]] for t in range(start, ids.shape[1])))


def test_policy_margins_equal_the_dpo_formula(tokenizer, table):
    policy, reference = _causal(tokenizer, 1), _causal(tokenizer, 2)
    beta = 0.3
    scorer = PolicyScorer(policy, reference, tokenizer, beta, SPEC, batch_size=2)
    chosen, rejected = scorer.rewards(table, progress=False)
    tok = tokenize_preferences(table, tokenizer, SPEC)
    for i in range(len(table)):
        p, c, r = tok.prompt_ids[i], tok.chosen_ids[i], tok.rejected_ids[i]
        expected_c = beta * (_direct_logp(policy, p, c) - _direct_logp(reference, p, c))
        expected_r = beta * (_direct_logp(policy, p, r) - _direct_logp(reference, p, r))
        assert chosen[i] == pytest.approx(expected_c, abs=1e-4)
        assert rejected[i] == pytest.approx(expected_r, abs=1e-4)


def test_policy_equal_to_reference_predicts_zero_margins(tokenizer, table):
    policy = _causal(tokenizer, 1)
    chosen, rejected = PolicyScorer(policy, policy, tokenizer, 0.1, SPEC).rewards(table, progress=False)
    np.testing.assert_array_equal(chosen - rejected, np.zeros(len(table)))


def test_reward_model_scores_do_not_depend_on_batching(tokenizer, table):
    from popalign.modeling.tiny import tiny_reward_model

    rm = tiny_reward_model(tokenizer, seed=3, **SIZE).eval()
    chosen, rejected = RewardModelScorer(rm, tokenizer, SPEC, batch_size=3).rewards(table, progress=False)
    tok = tokenize_preferences(table, tokenizer, SPEC)
    with torch.no_grad():
        for i in range(len(table)):
            for side, got in ((tok.chosen_ids, chosen), (tok.rejected_ids, rejected)):
                ids = torch.tensor([tok.prompt_ids[i] + side[i]])
                assert got[i] == pytest.approx(float(rm(input_ids=ids).logits[0, 0]), abs=1e-5)
    single = RewardModelScorer(rm, tokenizer, SPEC, batch_size=2).score(
        table.prompts, table.chosen, progress=False
    )
    np.testing.assert_allclose(single, chosen, atol=1e-5)


def _save_run(folder, model, tokenizer, config: dict | None):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if config is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return str(folder)


def test_load_scorer_reads_the_run_config(tokenizer, table, tmp_path):
    ref = _save_run(tmp_path / "ref", _causal(tokenizer, 2), tokenizer, None)
    config = {"objective": "policy", "model": {"name_or_path": ref}, "loss": {"beta": 0.25}}
    config["tokenize"] = {"max_length": 48, "max_prompt_length": 16}
    run = _save_run(tmp_path / "run", _causal(tokenizer, 1), tokenizer, config)
    scorer, info = load_scorer(run, device="cpu")
    assert isinstance(scorer, PolicyScorer)
    assert info["beta"] == 0.25 and info["reference"] == ref and info["kind"] == "policy"
    assert (scorer.spec.max_length, scorer.spec.max_prompt_length) == (48, 16)
    overridden, info = load_scorer(run, beta=1.0, reference=run, device="cpu", max_length=40)
    assert info["beta"] == 1.0 and overridden.spec.max_length == 40
    c, r = overridden.rewards(table, progress=False)
    np.testing.assert_array_equal(c - r, 0.0)  # its own reference


def test_a_random_initial_model_is_rebuilt_as_the_reference(tokenizer, table, tmp_path):
    """A run from ``random:tiny-llama`` has no reference folder; the same seed rebuilds the same weights."""
    from popalign.modeling.tiny import tiny_causal_lm

    untrained = tiny_causal_lm(tokenizer, seed=7, **SIZE)
    run = _save_run(
        tmp_path / "run", untrained, tokenizer, {"model": {"name_or_path": "random:tiny-llama", "seed": 7}}
    )
    scorer, info = load_scorer(run, device="cpu")
    c, r = scorer.rewards(table, progress=False)
    np.testing.assert_array_equal(c, 0.0)
    np.testing.assert_array_equal(r, 0.0)
    assert info["reference"] == "random:tiny-llama" and info["beta"] == 0.1


def test_reward_models_are_detected(tokenizer, tmp_path):
    from popalign.modeling.tiny import tiny_reward_model

    rm_dir = _save_run(tmp_path / "rm", tiny_reward_model(tokenizer, seed=0, **SIZE), tokenizer, None)
    assert detect_kind(rm_dir) == "reward-model"
    scorer, info = load_scorer(rm_dir, device="cpu")
    assert isinstance(scorer, RewardModelScorer) and info["kind"] == "reward-model"
    assert detect_kind(rm_dir, {"objective": "policy"}) == "policy"


def test_user_errors(tokenizer, tmp_path):
    run = _save_run(tmp_path / "run", _causal(tokenizer, 1), tokenizer, None)
    with pytest.raises(PopalignError, match="--reference"):
        load_scorer(run, device="cpu")
    with pytest.raises(PopalignError, match="does not exist"):
        load_scorer(str(tmp_path / "absent"))
    with pytest.raises(PopalignError, match="max_prompt_length"):
        tokenize_spec_for({}, max_length=10, max_prompt_length=20)
    assert resolve_beta(None, {}) == 0.1 and resolve_beta(None, {"loss": {"beta": 0.5}}) == 0.5
