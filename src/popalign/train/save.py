"""Saving the trained model so that ``from_pretrained`` loads it, whatever the distribution was.

Single process, DDP and DeepSpeed ZeRO-1/2: the Trainer's own ``save_model`` (or peft's merge) does it.
FSDP and ZeRO-3: the weights are sharded across processes, so the Trainer would save shards (FSDP under a
sharded state-dict setting) or nothing loadable for a LoRA model, and peft cannot merge partitioned
weights. Here every process takes part in gathering whole tensors (``accelerator.get_state_dict``) and the
first one saves them: the plain model, the live adapter, or the adapter merged into the base, which is
rebuilt unsharded on the first process to merge.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from popalign.errors import PopalignError


def save_final_model(trainer: Any, tokenizer: Any, output_dir: str | Path, how: str) -> str:
    """Save the trained model so ``AutoModelForCausalLM.from_pretrained(output_dir)`` (or peft) loads it.

    ``how``: ``full`` (plain model), ``adapter`` (LoRA adapter alone) or ``merged`` (adapter merged into
    the base). The PoP target adapter is never part of the saved model. Every process must call this.
    """
    from popalign.modeling.target import TARGET_ADAPTER

    output_dir = str(output_dir)
    model = trainer.accelerator.unwrap_model(trainer.model)
    is_peft = hasattr(model, "peft_config")
    if _weights_are_sharded(trainer):
        _save_gathered(trainer, model, output_dir, how)
    else:
        if is_peft and TARGET_ADAPTER in model.peft_config:
            model.delete_adapter(TARGET_ADAPTER)
        if is_peft and how in ("merged", "full"):
            model = model.merge_and_unload()
            if trainer.args.should_save:
                model.save_pretrained(output_dir)
        else:
            trainer.save_model(output_dir)
    if trainer.args.should_save:
        tokenizer.save_pretrained(output_dir)
    return output_dir


def _weights_are_sharded(trainer: Any) -> bool:
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(getattr(trainer, "is_deepspeed_enabled", False) and plugin and plugin.zero_stage == 3)


def _save_gathered(trainer: Any, model: Any, output_dir: str, how: str) -> None:
    """FSDP and ZeRO-3: gather whole tensors on every process, save from the first."""
    from popalign.modeling.target import TARGET_ADAPTER

    # The DeepSpeed engine (model_wrapped) is what gathers ZeRO-3 partitions; under FSDP it is the model.
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if not trainer.args.should_save:
        return
    if not hasattr(model, "peft_config"):
        model.save_pretrained(output_dir, state_dict=state_dict)
        return
    state_dict = {k: v for k, v in state_dict.items() if f".{TARGET_ADAPTER}." not in k}
    live = [name for name in model.peft_config if name != TARGET_ADAPTER]
    if how == "adapter":
        model.save_pretrained(output_dir, state_dict=state_dict, selected_adapters=live)
        return
    merged = _unsharded_peft(model, live[0], state_dict).merge_and_unload()
    merged.save_pretrained(output_dir)


def _unsharded_peft(model: Any, adapter: str, state_dict: dict[str, Any]) -> Any:
    """A plain (unsharded) copy of the peft ``model`` holding ``state_dict``, built from its config.

    Built on the ``meta`` device and given the gathered tensors as they are (no random initialisation, no
    second copy). The class is called directly rather than through ``from_config``, which under ZeRO-3
    would partition the new model collectively while only this process builds it.
    """
    import torch
    from torch.distributed.fsdp import FSDPModule

    from popalign.modeling.lora import peft_wrap

    base = model.get_base_model()
    # fully_shard swaps classes for FSDP subclasses; the plain class is the first one that is not.
    cls = next(c for c in type(base).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):
        plain = cls(copy.deepcopy(base.config))
    rebuilt = peft_wrap(plain, copy.deepcopy(model.peft_config[adapter]), adapter_name=adapter)
    result = rebuilt.load_state_dict(state_dict, strict=False, assign=True)
    empty = [name for name, p in rebuilt.named_parameters() if p.is_meta]
    if result.missing_keys or result.unexpected_keys or empty:
        raise PopalignError(
            "could not rebuild the LoRA model to merge its adapter: "
            f"missing {(result.missing_keys or empty)[:3]}, unexpected {result.unexpected_keys[:3]}; "
            "use save_final=adapter"
        )
    # assign=True replaced tied parameters one by one; tie them again as the config says.
    rebuilt.get_base_model().tie_weights()
    return rebuilt
