"""``lora.last_layers``: adapters in the last blocks only, and no gradient below them."""

from __future__ import annotations

import pytest
import torch

from popalign.errors import PopalignError
from popalign.modeling.lora import apply_lora
from popalign.modeling.tiny import tiny_causal_lm
from popalign.modeling.tokenizer import build_local_tokenizer
from popalign.train.config import LoraSpec


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


def test_reference_fingerprint_ignores_disabled_adapters_only(tokenizer):
    from popalign.modeling.reference import model_fingerprint
    from popalign.modeling.target import adapters_disabled

    def lora(seed):
        torch.manual_seed(seed)  # LoRA's A matrices are drawn from torch's generator
        return apply_lora(tiny_causal_lm(tokenizer, seed=0, num_hidden_layers=2), LoraSpec(enabled=True, r=2))

    a, b = lora(1), lora(2)
    with adapters_disabled(a), adapters_disabled(b):
        # The same frozen base: the same reference, whatever the adapters' initialisation.
        assert model_fingerprint(a) == model_fingerprint(b)
    assert model_fingerprint(a) != model_fingerprint(b)  # active adapters are part of the model
    plain = tiny_causal_lm(tokenizer, seed=0, num_hidden_layers=2)
    other = tiny_causal_lm(tokenizer, seed=1, num_hidden_layers=2)
    assert model_fingerprint(plain) != model_fingerprint(other)  # base weights still count
