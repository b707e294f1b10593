"""The slowly updated target policy of DPO-PoP (paper Eq. 7) and the adapter-free reference forward.

DPO-PoP computes the margin of the weaker preference with a target policy ``pi_theta_hat`` whose parameters
follow the policy by Polyak averaging, ``theta_hat <- (1 - tau) * theta_hat + tau * theta`` after every
optimiser step, so margins do not jump with each update. Two storage modes:

- ``copy``: a frozen deep copy of the whole model (full fine-tuning). Costs one more model in memory.
- ``adapter``: for a peft LoRA model, a second adapter ``popalign_target`` next to the live one. The frozen
  base weights are shared, so the target costs only the adapter's size.

Distributed training: under DeepSpeed ZeRO-3 the parameters are partitioned (they carry ``ds_id``); the update
gathers them first (see :func:`_gathered`). Under FSDP2 the copy is sharded like the policy
(:mod:`popalign.train.fsdp`, passed in as ``made_copy``) and the update runs on the local shards; with
LoRA the target adapter lives inside the sharded policy and is sharded like the live one. Elsewhere
(single process, DDP) the update is element-wise on whole tensors.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from popalign.errors import PopalignError

if TYPE_CHECKING:
    import torch
    from torch import nn

TARGET_ADAPTER = "popalign_target"
DEFAULT_TAU = 0.01


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP and DeepSpeed engines keep the user's model in ``.module``.
    while isinstance(getattr(model, "module", None), _nn_module()):
        model = model.module
    return model


def _nn_module() -> type:
    from torch import nn

    return nn.Module


def is_peft_model(model: nn.Module) -> bool:
    """True for a peft ``PeftModel`` (checked without importing peft when it is not loaded)."""
    model = _unwrap(model)
    return (
        hasattr(model, "peft_config") and hasattr(model, "disable_adapter") and hasattr(model, "add_adapter")
    )


def _live_adapter(model: nn.Module) -> str:
    adapters = list(getattr(model, "active_adapters", None) or [model.active_adapter])
    adapters = [a for a in adapters if a != TARGET_ADAPTER]
    if len(adapters) != 1:
        raise PopalignError(f"the Polyak target needs exactly one active adapter, found {adapters}")
    return adapters[0]


def _rename_adapter(name: str, old: str, new: str) -> str | None:
    """``...lora_A.default.weight`` -> ``...lora_A.popalign_target.weight``; None if ``old`` is not a part."""
    parts = name.split(".")
    if old not in parts:
        return None
    return ".".join(new if part == old else part for part in parts)


@contextlib.contextmanager
def _gathered(params: list[torch.Tensor], modified: list[torch.Tensor]) -> Iterator[None]:
    """Gather ZeRO-3 partitioned parameters for the duration of the block (no-op otherwise).

    ``modified`` are written in the block. DeepSpeed keeps writes to gathered parameters only when a
    ``modifier_rank`` is given (with None it re-partitions from the old shards); every rank computes the
    same lerp, so rank 0's result is broadcast.
    """
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed  # only reachable when parameters come from DeepSpeed

    writes = any(hasattr(p, "ds_id") for p in modified)
    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0 if writes else None):
        yield


@contextlib.contextmanager
def _frozen_state(model: nn.Module) -> Iterator[None]:
    """Restore every parameter's ``requires_grad`` and every module's train/eval flag afterwards.

    peft's ``set_adapter`` marks the adapter it activates as trainable (and the others frozen); switching to
    the target and back must leave the live adapter exactly as trainable as it was.
    """
    grads = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, flag in modes:
            m.training = flag


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of an FSDP2 ``DTensor`` (a view: writes reach the parameter), else the tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _lerp_all(targets: list[torch.Tensor], sources: list[torch.Tensor], tau: float) -> None:
    """``target <- target + tau * (source - target)`` for every pair, in place.

    Sharded pairs are updated shard by shard: both sides are sharded alike, so this needs no communication.
    """
    import torch

    targets, sources = [local_shard(t) for t in targets], [local_shard(s) for s in sources]
    plain = all(type(t) is torch.nn.Parameter or type(t) is torch.Tensor for t in targets + sources)
    same = len({(t.device, t.dtype) for t in targets + sources}) == 1
    if plain and same and targets:
        # One fused launch per group instead of one kernel per tensor: LoRA has hundreds of small ones.
        torch._foreach_lerp_(targets, sources, tau)
        return
    for target, source in zip(targets, sources, strict=True):
        target.lerp_(source.to(target.dtype), tau)


class PolyakTarget:
    """Target policy ``theta_hat <- (1 - tau) * theta_hat + tau * theta``, updated after each optimiser step.

    Args:
        model: the policy (a transformers model, or a peft ``PeftModel`` with one active LoRA adapter).
        tau: the Polyak rate in [0, 1]; the target remembers roughly the last ``1/tau`` steps.
        mode: ``"copy"`` (frozen deep copy), ``"adapter"`` (a second LoRA adapter sharing the frozen base) or
            None: ``"adapter"`` for a peft model, else ``"copy"``.
        made_copy: copy mode only: a frozen copy equal to the policy made by the caller (an FSDP2-sharded one,
            :func:`popalign.train.fsdp.shard_like`) instead of a deep copy.

    At construction the target equals the policy, so every target margin starts at 0.
    """

    def __init__(
        self,
        model: nn.Module,
        tau: float = DEFAULT_TAU,
        *,
        mode: Literal["copy", "adapter"] | None = None,
        made_copy: nn.Module | None = None,
    ):
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must lie in [0, 1], got {tau}")
        self.tau = float(tau)
        self.mode = mode or ("adapter" if made_copy is None and is_peft_model(model) else "copy")
        model = _unwrap(model)
        if self.mode == "copy" and made_copy is not None:
            # Made by the caller, e.g. sharded like an FSDP2 policy; it must equal the policy already.
            self.copy = made_copy
        elif self.mode == "copy":
            self._init_copy(model)
        elif self.mode == "adapter":
            self._init_adapter(model)
        else:
            raise ValueError(f"mode must be 'copy' or 'adapter', got {mode!r}")

    def _init_copy(self, model: nn.Module) -> None:
        if any(hasattr(p, "ds_id") for p in model.parameters()):
            raise PopalignError(
                "a full-copy target cannot be made from ZeRO-3 partitioned weights; train with LoRA "
                "(the target is then a second adapter), use ZeRO stage 2, or shard the target with the "
                "policy under FSDP2 (configs/accelerate/fsdp.yaml)"
            )
        self.copy = copy.deepcopy(model)
        self.copy.eval()
        self.copy.requires_grad_(False)

    def _init_adapter(self, model: nn.Module) -> None:
        if not is_peft_model(model):
            raise PopalignError("mode='adapter' needs a peft model (LoRA); use mode='copy' for a plain model")
        self.live = _live_adapter(model)
        self.model = model
        config = copy.deepcopy(model.peft_config[self.live])
        # inference_mode makes peft create the adapter frozen.
        config.inference_mode = True
        with _frozen_state(model):
            model.add_adapter(TARGET_ADAPTER, config)
        import torch

        pairs = self._adapter_pairs(model)
        with torch.no_grad(), _gathered([p for pair in pairs for p in pair], [t for _, t in pairs]):
            for live, target in pairs:
                target.copy_(live)
        for _, target in pairs:
            target.requires_grad_(False)

    def _adapter_pairs(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        params = dict(model.named_parameters())
        pairs = []
        for name, param in params.items():
            twin = _rename_adapter(name, self.live, TARGET_ADAPTER)
            if twin is not None and twin in params:
                pairs.append((param, params[twin]))
        if not pairs:
            raise PopalignError(f"found no parameters of adapter {self.live!r} to track")
        return pairs

    def _copy_pairs(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        target = dict(self.copy.named_parameters())
        source = dict(_unwrap(model).named_parameters())
        if source.keys() != target.keys():
            missing = sorted(source.keys() ^ target.keys())[:5]
            raise PopalignError(f"the model's parameters no longer match the target copy (e.g. {missing})")
        return [(source[name], target[name]) for name in target]

    def update(self, model: nn.Module) -> None:
        """``theta_hat <- (1 - tau) * theta_hat + tau * theta`` in place; buffers are copied (copy mode).

        Call after each optimiser step. ``tau=1`` makes the target equal the policy, ``tau=0`` leaves it.
        """
        import torch

        if self.tau == 0.0:
            return
        model = _unwrap(model)
        pairs = self._copy_pairs(model) if self.mode == "copy" else self._adapter_pairs(model)
        with torch.no_grad(), _gathered([p for pair in pairs for p in pair], [t for _, t in pairs]):
            _lerp_all([t for _, t in pairs], [live for live, _ in pairs], self.tau)
            if self.mode == "copy":
                buffers = dict(model.named_buffers())
                for name, buf in self.copy.named_buffers():
                    if name in buffers:
                        buf.copy_(buffers[name])

    @contextlib.contextmanager
    def activated(self, model: nn.Module) -> Iterator[nn.Module]:
        """Yield a module whose forward is the target policy, in eval mode and without autograd (Eq. 7's sg).

        Copy mode yields the copy. Adapter mode switches ``model`` to the target adapter and back, restoring
        the live adapter, every ``requires_grad`` flag and train/eval mode on exit.
        """
        import torch

        if self.mode == "copy":
            with torch.no_grad():
                yield self.copy
            return
        inner = _unwrap(model)
        with _frozen_state(inner), torch.no_grad():
            inner.eval()
            inner.set_adapter(TARGET_ADAPTER)
            try:
                # The caller's handle, not the unwrapped module: some wrappers (FSDP) must run the forward.
                yield model
            finally:
                inner.set_adapter(self.live)

    def state_dict(self) -> dict[str, Any]:
        """The target's weights (references, like ``nn.Module.state_dict``), mode and tau, for checkpoints.

        Sharded weights are gathered into whole tensors, so a checkpoint does not depend on the number of
        processes; gathering is collective, so every process must call this. Only the first process keeps
        the gathered values (on the CPU); the others get ``params == {}``.
        """
        if self.mode == "copy":
            params = self.copy.state_dict()
        else:
            params = {name: p.detach() for name, p in self._target_params().items()}
        if any(hasattr(v, "full_tensor") for v in params.values()):
            params = _gather_to_first(params)
        return {"mode": self.mode, "tau": self.tau, "params": params}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore weights saved by :meth:`state_dict` (the configured ``tau`` is kept)."""
        import torch

        if state.get("mode") != self.mode:
            raise PopalignError(
                f"checkpoint holds a {state.get('mode')!r} target, this run uses {self.mode!r}"
            )
        if self.mode == "copy":
            named = dict(self.copy.state_dict())
            if not any(hasattr(v, "full_tensor") for v in named.values()):
                self.copy.load_state_dict(state["params"])
                return
        else:
            named = self._target_params()
        if set(state["params"]) != set(named):
            raise PopalignError(f"the checkpoint's {self.mode} target does not match this model's")
        with torch.no_grad():
            for name, value in state["params"].items():
                local_shard(named[name]).copy_(_shard_of(value, named[name]))

    def _target_params(self) -> dict[str, torch.Tensor]:
        """Adapter mode: the target adapter's parameters by name, looked up afresh (wrappers swap them)."""
        return {
            name: p
            for name, p in self.model.named_parameters()
            if _rename_adapter(name, TARGET_ADAPTER, self.live) is not None
        }


def _gather_to_first(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole CPU tensors of (possibly sharded) ``params`` on the first process, ``{}`` on the others."""
    import torch.distributed as dist

    first = not dist.is_initialized() or dist.get_rank() == 0
    gathered = {}
    for name, value in params.items():
        # One tensor at a time, so no process ever holds more than one gathered tensor on the device.
        whole = value.full_tensor() if hasattr(value, "full_tensor") else value
        if first:
            gathered[name] = whole.detach().cpu()
    return gathered


def _shard_of(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This process's shard of ``whole`` laid out like the parameter ``like`` (``whole`` if not sharded)."""
    if not hasattr(like, "device_mesh"):
        return whole
    from torch.distributed.tensor import distribute_tensor

    # Every process read the same checkpoint, so each cuts its own shard with no communication.
    return distribute_tensor(
        whole.to(local_shard(like).device), like.device_mesh, like.placements, src_data_rank=None
    ).to_local()


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Yield ``model`` with its peft adapters switched off: the frozen base, i.e. the reference policy.

    A model without adapters is yielded unchanged: that is right before training, when the policy still
    equals the reference (precomputing reference log-probs), and wrong afterwards, where a full fine-tune
    needs a separate frozen reference model.
    """
    inner = _unwrap(model)
    if not is_peft_model(inner):
        yield model
        return
    with inner.disable_adapter():
        yield model
