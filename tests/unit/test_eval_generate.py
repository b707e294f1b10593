"""Sampling from a tiny policy and the AlpacaEval ``model_outputs.json`` round trip."""

from __future__ import annotations

import json

import pytest
import torch

from popalign.errors import DataError, PopalignError
from popalign.eval.generate import (
    GenerateSpec,
    generate_responses,
    instruction_text,
    load_prompts,
    outputs_file,
    read_model_outputs,
    write_model_outputs,
)

PROMPTS = ["Say hi.", "What is the capital of France?", "Write a poem about the sea, please, in two lines."]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from popalign.modeling.tiny import tiny_causal_lm
    from popalign.modeling.tokenizer import build_local_tokenizer

    tokenizer = build_local_tokenizer()
    return tiny_causal_lm(
        tokenizer, seed=0, hidden_size=32, intermediate_size=64, num_hidden_layers=1
    ), tokenizer


def test_sampling_is_reproducible_and_order_preserving(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    spec = GenerateSpec(max_new_tokens=6, temperature=1.0, seed=3, batch_size=2)
    torch.manual_seed(123)
    before = torch.rand(1)
    first = generate_responses(model, tokenizer, PROMPTS, spec, progress=False).outputs
    assert len(first) == 3 and all(isinstance(o, str) for o in first)
    assert generate_responses(model, tokenizer, PROMPTS, spec, progress=False).outputs == first
    # The caller's random state is left as it was.
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)
    # Greedy decoding of one prompt alone gives what it gave in a padded batch: padding does not leak.
    greedy = GenerateSpec(max_new_tokens=6, temperature=0.0, batch_size=3)
    batched = generate_responses(model, tokenizer, PROMPTS, greedy, progress=False).outputs
    alone = [generate_responses(model, tokenizer, [p], greedy, progress=False).outputs[0] for p in PROMPTS]
    assert batched == alone


def _perturbed(model, scale=0.3, seed=1):
    import copy

    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return other.eval()


def test_kl_of_a_policy_against_itself_is_zero(model_and_tokenizer):
    import copy

    model, tokenizer = model_and_tokenizer
    spec = GenerateSpec(max_new_tokens=8, temperature=0.7, seed=0, batch_size=2)
    samples = generate_responses(
        model, tokenizer, PROMPTS, spec, progress=False, reference=copy.deepcopy(model)
    )
    assert samples.kl is not None and samples.kl.shape == (3,)
    assert (samples.kl == 0).all()
    assert generate_responses(model, tokenizer, PROMPTS, spec, progress=False).kl is None
    greedy = GenerateSpec(max_new_tokens=4, temperature=0.0)
    assert generate_responses(model, tokenizer, PROMPTS, greedy, progress=False, reference=model).kl is None


def test_kl_matches_a_token_by_token_computation(model_and_tokenizer, monkeypatch):
    """Each prompt alone, unpadded, one forward per generated token: sum of log pi_T - log pi_ref,T."""
    from popalign.data.tokenize import render_prompt

    model, tokenizer = model_and_tokenizer
    reference = _perturbed(model)
    temperature = 0.8
    spec = GenerateSpec(max_new_tokens=7, temperature=temperature, seed=5, batch_size=2)
    drawn = {}
    real_generate = type(model).generate

    def recording_generate(self, input_ids, attention_mask, **kw):
        out = real_generate(self, input_ids=input_ids, attention_mask=attention_mask, **kw)
        for row in range(len(input_ids)):
            prompt = input_ids[row][attention_mask[row].bool()].tolist()
            drawn[tuple(prompt)] = out[row, input_ids.shape[1] :].tolist()
        return out

    monkeypatch.setattr(type(model), "generate", recording_generate)
    samples = generate_responses(model, tokenizer, PROMPTS, spec, progress=False, reference=reference)
    monkeypatch.undo()
    eos = tokenizer.eos_token_id
    for i, text in enumerate(PROMPTS):
        prompt = tokenizer(render_prompt(text, tokenizer, True), add_special_tokens=False)["input_ids"]
        reply = drawn[tuple(prompt)]
        total = 0.0
        for t, token in enumerate(reply):
            prefix = torch.tensor([prompt + reply[:t]])
            with torch.no_grad():
                lp = torch.log_softmax(model(prefix).logits[0, -1].double() / temperature, -1)[token]
                lr = torch.log_softmax(reference(prefix).logits[0, -1].double() / temperature, -1)[token]
            total += float(lp - lr)
            if token == eos:
                break
        assert samples.kl[i] == pytest.approx(total, abs=1e-4)
    assert samples.kl.mean() > 0  # a perturbed reference is measurably far


def test_model_outputs_round_trip(tmp_path):
    prompts = [
        "Hi?",
        [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second"},
        ],
    ]
    write_model_outputs(tmp_path / "eval" / "model_outputs.json", ["1", "2"], prompts, ["a", "b"], "dpo")
    records = json.loads((tmp_path / "eval" / "model_outputs.json").read_text())
    assert records == [
        {"instruction": "Hi?", "output": "a", "generator": "dpo", "id": "1"},
        {"instruction": "second", "output": "b", "generator": "dpo", "id": "2"},
    ]
    assert read_model_outputs(tmp_path) == records  # a run folder finds eval/model_outputs.json
    write_model_outputs(tmp_path / "kl.json", ["1", "2"], prompts, ["a", "b"], "dpo", kl=[0.5, -0.25])
    assert [r["kl"] for r in read_model_outputs(tmp_path / "kl.json")] == [0.5, -0.25]
    assert outputs_file(tmp_path / "eval") == tmp_path / "eval" / "model_outputs.json"
    assert instruction_text("plain") == "plain"


def test_bad_outputs_files(tmp_path):
    with pytest.raises(PopalignError, match="model_outputs.json"):
        outputs_file(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "x"}]))
    with pytest.raises(DataError, match="output"):
        read_model_outputs(bad)
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_model_outputs(bad)


def test_prompts_from_an_instruction_file_and_from_preferences(tmp_path, ultrafeedback_dir):
    path = tmp_path / "alpaca.json"
    path.write_text(
        json.dumps([{"instruction": "a", "dataset": "x"}, {"instruction": "b"}, {"instruction": "c"}])
    )
    assert load_prompts(str(path), limit=2) == (["0", "1"], ["a", "b"])
    ids, prompts = load_prompts(str(ultrafeedback_dir), split="test", limit=4)
    assert len(ids) == len(prompts) == 4 and all(isinstance(p, str) and p for p in prompts)


def test_settings_are_checked():
    with pytest.raises(PopalignError, match="temperature"):
        GenerateSpec(temperature=-1).validate()
    with pytest.raises(PopalignError, match="max-new-tokens"):
        GenerateSpec(max_new_tokens=0).validate()
