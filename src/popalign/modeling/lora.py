"""Wrapping a model with a peft adapter: the one place that calls ``peft.get_peft_model``.

Training (``train/setup.py``) wraps the model it trains; saving (``train/save.py``) rebuilds an unsharded
copy to merge a gathered adapter. Both come here, so neither needs the other.
"""

from __future__ import annotations

from typing import Any


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
