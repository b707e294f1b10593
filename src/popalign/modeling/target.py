"""The slowly updated target policy of DPO-PoP (paper Eq. 7) and the adapter-free reference forward.

DPO-PoP computes the margin of the weaker preference with a target policy ``pi_theta_hat`` whose parameters
follow the policy by Polyak averaging, ``theta_hat <- (1 - tau) * theta_hat + tau * theta`` after every
optimiser step, so margins do not jump with each update. Two storage modes:

- ``copy``: a frozen deep copy of the whole model (full fine-tuning). Costs one more model in memory.
- ``adapter``: for a peft LoRA model, a second adapter ``popalign_target`` next to the live one. The frozen
  base weights are shared, so the target costs only the adapter's size.

Distributed training: how the parameters lie across processes is a :class:`ParameterLayout` handed in by
the caller. The default, :class:`WholeTensors`, is right for one process and DDP (every process holds whole
tensors) and refuses sharded parameters; the trainer passes
:class:`popalign.train.sharding.ShardedLayout`, which knows DeepSpeed ZeRO-3 partitions and FSDP2 shards.
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


def _lerp_all(
    targets: list[torch.Tensor], sources: list[torch.Tensor], tau: float, layout: ParameterLayout
) -> None:
    """``target <- target + tau * (source - target)`` for every pair, in place.

    Sharded pairs are updated shard by shard: both sides are sharded alike, so this needs no communication.
    """
    import torch

    targets, sources = [layout.local(t) for t in targets], [layout.local(s) for s in sources]
    plain = all(type(t) is torch.nn.Parameter or type(t) is torch.Tensor for t in targets + sources)
    same = len({(t.device, t.dtype) for t in targets + sources}) == 1
    if plain and same and targets:
        # One fused launch per group instead of one kernel per tensor: LoRA has hundreds of small ones.
        torch._foreach_lerp_(targets, sources, tau)
        return
    for target, source in zip(targets, sources, strict=True):
        target.lerp_(source.to(target.dtype), tau)


class ParameterLayout:
    """How the target's parameters lie across processes: the distributed details the target must respect.

    The Polyak update and the checkpoint code ask a layout instead of knowing about DeepSpeed or FSDP.
    Subclasses override what their sharding changes; :class:`popalign.train.sharding.ShardedLayout` is the
    one the trainer uses.
    """

    def check(self, model: nn.Module, *, full_copy: bool) -> None:
        """Raise a :class:`PopalignError` if this layout cannot track ``model`` (``full_copy``: copy mode)."""

    def gathered(
        self, params: list[torch.Tensor], modified: list[torch.Tensor]
    ) -> contextlib.AbstractContextManager[None]:
        """A block in which every tensor of ``params`` is whole; writes to ``modified`` must persist."""
        return contextlib.nullcontext()

    def local(self, tensor: torch.Tensor) -> torch.Tensor:
        """The part of ``tensor`` this process holds, as a view that writes reach."""
        return tensor

    def whole_on_first(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Whole tensors of ``params`` for a checkpoint (collective where sharded: every process calls it)."""
        return params

    def is_sharded(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is a shard that :meth:`shard_of` must cut a checkpoint's value for."""
        return False

    def shard_of(self, whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """This process's part of the checkpoint value ``whole`` for the parameter ``like``."""
        return whole


class WholeTensors(ParameterLayout):
    """One process, or DDP: every process holds whole tensors (the default)."""

    def check(self, model: nn.Module, *, full_copy: bool) -> None:
        if any(hasattr(p, "ds_id") or hasattr(p, "to_local") for p in model.parameters()):
            raise PopalignError(
                "the model's parameters are sharded (DeepSpeed ZeRO-3 or FSDP); build the target with "
                "layout=popalign.train.sharding.ShardedLayout(), as the trainer does"
            )


class PolyakTarget:
    """Target policy ``theta_hat <- (1 - tau) * theta_hat + tau * theta``, updated after each optimiser step.

    Args:
        model: the policy (a transformers model, or a peft ``PeftModel`` with one active LoRA adapter).
        tau: the Polyak rate in [0, 1]; the target remembers roughly the last ``1/tau`` steps.
        mode: ``"copy"`` (frozen deep copy), ``"adapter"`` (a second LoRA adapter sharing the frozen base) or
            None: ``"adapter"`` for a peft model, else ``"copy"``.
        made_copy: copy mode only: a frozen copy equal to the policy made by the caller (an FSDP2-sharded one,
            :func:`popalign.train.fsdp.shard_like`) instead of a deep copy.
        layout: how the parameters lie across processes (default :class:`WholeTensors`).

    At construction the target equals the policy, so every target margin starts at 0.
    """

    def __init__(
        self,
        model: nn.Module,
        tau: float = DEFAULT_TAU,
        *,
        mode: Literal["copy", "adapter"] | None = None,
        made_copy: nn.Module | None = None,
        layout: ParameterLayout | None = None,
    ):
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must lie in [0, 1], got {tau}")
        self.tau = float(tau)
        self.mode = mode or ("adapter" if made_copy is None and is_peft_model(model) else "copy")
        if self.mode not in ("copy", "adapter"):
            raise ValueError(f"mode must be 'copy' or 'adapter', got {mode!r}")
        self.layout = layout or WholeTensors()
        model = _unwrap(model)
        self.layout.check(model, full_copy=self.mode == "copy" and made_copy is None)
        if made_copy is not None and self.mode == "copy":
            # Made by the caller, e.g. sharded like an FSDP2 policy; it must equal the policy already.
            self.copy = made_copy
        elif self.mode == "copy":
            self._init_copy(model)
        else:
            self._init_adapter(model)

    def _init_copy(self, model: nn.Module) -> None:
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
        gathered = self.layout.gathered([p for pair in pairs for p in pair], [t for _, t in pairs])
        with torch.no_grad(), gathered:
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
        gathered = self.layout.gathered([p for pair in pairs for p in pair], [t for _, t in pairs])
        with torch.no_grad(), gathered:
            _lerp_all([t for _, t in pairs], [live for live, _ in pairs], self.tau, self.layout)
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
        params = self.layout.whole_on_first(params)
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
            if not any(self.layout.is_sharded(v) for v in named.values()):
                self.copy.load_state_dict(state["params"])
                return
        else:
            named = self._target_params()
        if set(state["params"]) != set(named):
            raise PopalignError(f"the checkpoint's {self.mode} target does not match this model's")
        with torch.no_grad():
            for name, value in state["params"].items():
                self.layout.local(named[name]).copy_(self.layout.shard_of(value, named[name]))

    def _target_params(self) -> dict[str, torch.Tensor]:
        """Adapter mode: the target adapter's parameters by name, looked up afresh (wrappers swap them)."""
        return {
            name: p
            for name, p in self.model.named_parameters()
            if _rename_adapter(name, TARGET_ADAPTER, self.live) is not None
        }


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
