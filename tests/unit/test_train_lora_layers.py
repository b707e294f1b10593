"""``lora.last_layers``: adapters in the last blocks only, and no gradient below them."""

from __future__ import annotations

import pytest
import torch

from popalign.errors import PopalignError
from popalign.modeling.tiny import tiny_causal_lm
from popalign.modeling.tokenizer import build_local_tokenizer
from popalign.train.config import LoraSpec
from popalign.train.setup import apply_lora


@pytest.fixture(scope="module")
def tokenizer():
    return build_local_tokenizer()


def test_adapters_sit_in_the_last_blocks_and_backward_stops_there(tokenizer):
    model = apply_lora(
        tiny_causal_lm(tokenizer, seed=0, num_hidden_layers=3), LoraSpec(enabled=True, r=2, last_layers=1)
    )
    adapted = {n.split(".layers.")[1].split(".")[0] for n, p in model.named_parameters() if "lora_" in n}
    assert adapted == {"2"}
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())
    captured = []
    layer0 = model.base_model.model.model.layers[0]
    layer0.register_forward_hook(
        lambda mod, inp, out: captured.append(out[0] if isinstance(out, tuple) else out)
    )
    model(torch.tensor([[1, 2, 3, 4]])).logits.sum().backward()
    assert not captured[0].requires_grad  # nothing below the adapted block joins the backward pass
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n)


def test_more_layers_than_the_model_has_is_an_error(tokenizer):
    with pytest.raises(PopalignError, match="last_layers"):
        apply_lora(
            tiny_causal_lm(tokenizer, seed=0, num_hidden_layers=2), LoraSpec(enabled=True, last_layers=3)
        )
