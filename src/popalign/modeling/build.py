"""The model a run trains and its tokenizer, from the run's ``model`` settings.

A pretrained name or folder is loaded (:mod:`popalign.modeling.load`); ``random:tiny-llama`` trains a small
byte-level BPE tokenizer on the run's texts and builds a randomly initialised Llama, so tests and the CPU
testbed need no download. ``spec`` is the run's :class:`~popalign.train.config.ModelSpec`, read by field.
"""

from __future__ import annotations

from typing import Any

from popalign.errors import PopalignError

RANDOM_PREFIX = "random:"


def build_model_and_tokenizer(spec: Any, *, texts: list[str], reward_model: bool = False) -> tuple[Any, Any]:
    """The model to train (a causal LM, or a reward model's scalar head) and its tokenizer."""
    from popalign.modeling import load as mload

    if spec.name_or_path.startswith(RANDOM_PREFIX):
        return _random_model(spec, texts, reward_model)
    tokenizer = mload.load_tokenizer(spec.name_or_path)
    if reward_model:
        model = mload.load_reward_model(spec.name_or_path, dtype=spec.dtype)
    else:
        model = mload.load_causal_lm(spec.name_or_path, dtype=spec.dtype)
    if tokenizer.pad_token_id is None:
        # Padding is masked out everywhere, so reusing eos as pad changes no result.
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _random_model(spec: Any, texts: list[str], reward_model: bool) -> tuple[Any, Any]:
    from popalign.modeling.tiny import tiny_causal_lm, tiny_reward_model
    from popalign.modeling.tokenizer import build_local_tokenizer

    arch = spec.name_or_path[len(RANDOM_PREFIX) :]
    if arch != "tiny-llama":
        raise PopalignError(f"model.name_or_path: unknown random architecture {arch!r} (known: tiny-llama)")
    tokenizer = build_local_tokenizer(texts, vocab_size=spec.tiny_vocab_size)
    build = tiny_reward_model if reward_model else tiny_causal_lm
    model = build(
        tokenizer,
        seed=spec.seed,
        hidden_size=spec.tiny_hidden_size,
        intermediate_size=spec.tiny_hidden_size * 2,
        num_hidden_layers=spec.tiny_layers,
    )
    return model, tokenizer


def training_texts(table: Any) -> list[str]:
    """Every prompt and response of a preference table: what a ``random:`` model's tokenizer learns from."""
    texts: list[str] = []
    for p, c, r in zip(table.prompts, table.chosen, table.rejected, strict=True):
        texts.append(p if isinstance(p, str) else "\n".join(m["content"] for m in p))
        texts.extend((c, r))
    return texts
