"""Tiny randomly initialised Llama models for tests and the CPU testbed (a few hundred thousand parameters).

They share the architecture of SmolLM2 (Llama with grouped-query attention), so every code path that runs on
the real model runs on them, in milliseconds and without any download.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        PreTrainedTokenizerBase,
    )


def tiny_llama_config(
    vocab_size: int,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 512,
    **kw: Any,
) -> LlamaConfig:
    """A small :class:`LlamaConfig`; extra keyword arguments go to the config unchanged."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        **kw,
    )


def _token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _build(cls: type, config: LlamaConfig, seed: int):
    import torch

    # A forked RNG makes the weights a function of the seed alone and leaves the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config)


def tiny_causal_lm(tokenizer: PreTrainedTokenizerBase, seed: int = 0, **config_kw: Any) -> LlamaForCausalLM:
    """A random :class:`LlamaForCausalLM` sized to ``len(tokenizer)``; one seed, one set of weights."""
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(len(tokenizer), **{**_token_ids(tokenizer), **config_kw})
    model = _build(LlamaForCausalLM, config, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def tiny_reward_model(
    tokenizer: PreTrainedTokenizerBase, seed: int = 0, **config_kw: Any
) -> LlamaForSequenceClassification:
    """A randomly initialised scalar reward model (``num_labels=1``) that pools the last non-pad token."""
    from transformers import LlamaForSequenceClassification

    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer needs a pad token: the reward model finds each sequence's end by it")
    config = tiny_llama_config(len(tokenizer), num_labels=1, **{**_token_ids(tokenizer), **config_kw})
    return _build(LlamaForSequenceClassification, config, seed)
