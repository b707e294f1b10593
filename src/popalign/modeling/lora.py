"""LoRA: the run's adapter on the model it trains, and the one place that calls ``peft.get_peft_model``.

Training wraps the model it trains (:func:`apply_lora`); saving (``train/save.py``) rebuilds an unsharded
copy to merge a gathered adapter (:func:`peft_wrap`). Both come here, so neither needs the other.
"""

from __future__ import annotations

from typing import Any

from popalign.errors import PopalignError


def apply_lora(model: Any, spec: Any, *, reward_model: bool = False) -> Any:
    """``model`` with a LoRA adapter as ``spec`` (the run's :class:`~popalign.train.config.LoraSpec`)
    says, or ``model`` itself when LoRA is off. ``last_layers`` puts it in the last blocks only."""
    if not spec.enabled:
        return model
    from peft import LoraConfig, TaskType

    layers = None
    if spec.last_layers:
        total = model.config.num_hidden_layers
        if not 0 < spec.last_layers <= total:
            raise PopalignError(f"lora.last_layers: 1..{total} (the model's blocks), got {spec.last_layers}")
        layers = list(range(total - spec.last_layers, total))
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        layers_to_transform=layers,
        task_type=TaskType.SEQ_CLS if reward_model else TaskType.CAUSAL_LM,
    )
    return peft_wrap(model, config)


def peft_wrap(model: Any, config: Any, **kwargs: Any) -> Any:
    """``peft.get_peft_model``, without the deprecation warning peft's own attribute lookup sets off.

    peft reads ``model.is_gradient_checkpointing``, which transformers 5 deprecates; the warning says
    nothing a popalign user can act on, so it is silenced here and only here.
    """
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        return get_peft_model(model, config, **kwargs)
