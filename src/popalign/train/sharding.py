"""Where DPO-PoP's Polyak target meets sharded training: DeepSpeed ZeRO-3 partitions and FSDP2 shards.

:class:`popalign.modeling.target.PolyakTarget` asks a :class:`~popalign.modeling.target.ParameterLayout`
how its parameters lie; this is the layout the trainer hands it.

- **ZeRO-3** partitions every parameter (each carries ``ds_id``). The update gathers them first; a full copy
  of partitioned weights cannot be made, so copy mode is refused (LoRA keeps the target as a second adapter,
  which ZeRO-3 partitions like the live one).
- **FSDP2** shards every parameter as a ``DTensor`` along its first dimension. The target copy is sharded
  like the policy (:mod:`popalign.train.fsdp`), so the update runs shard by shard with no communication;
  checkpoints hold whole tensors (gathered one at a time), so they do not depend on the number of processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from popalign.errors import PopalignError
from popalign.modeling.target import ParameterLayout

if TYPE_CHECKING:
    import torch
    from torch import nn


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of an FSDP2 ``DTensor`` (a view: writes reach the parameter), else the tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class ShardedLayout(ParameterLayout):
    """Whole tensors, ZeRO-3 partitions or FSDP2 shards, told apart parameter by parameter."""

    def check(self, model: nn.Module, *, full_copy: bool) -> None:
        if full_copy and any(hasattr(p, "ds_id") for p in model.parameters()):
            raise PopalignError(
                "a full-copy target cannot be made from ZeRO-3 partitioned weights; train with LoRA "
                "(the target is then a second adapter), use ZeRO stage 2, or shard the target with the "
                "policy under FSDP2 (configs/accelerate/fsdp.yaml)"
            )

    @contextlib.contextmanager
    def gathered(self, params: list[torch.Tensor], modified: list[torch.Tensor]) -> Iterator[None]:
        """Gather ZeRO-3 partitioned parameters for the duration of the block (no-op otherwise).

        DeepSpeed keeps writes to gathered parameters only when a ``modifier_rank`` is given (with None it
        re-partitions from the old shards); every rank computes the same lerp, so rank 0's result is
        broadcast.
        """
        partitioned = [p for p in params if hasattr(p, "ds_id")]
        if not partitioned:
            yield
            return
        import deepspeed  # only reachable when parameters come from DeepSpeed

        writes = any(hasattr(p, "ds_id") for p in modified)
        with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0 if writes else None):
            yield

    def local(self, tensor: torch.Tensor) -> torch.Tensor:
        return local_shard(tensor)

    def whole_on_first(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Where any tensor is an FSDP2 shard: whole CPU tensors on the first process, ``{}`` elsewhere."""
        if not any(self.is_sharded(v) for v in params.values()):
            return params
        import torch.distributed as dist

        first = not dist.is_initialized() or dist.get_rank() == 0
        gathered = {}
        for name, value in params.items():
            # One tensor at a time, so no process ever holds more than one gathered tensor on the device.
            whole = value.full_tensor() if self.is_sharded(value) else value
            if first:
                gathered[name] = whole.detach().cpu()
        return gathered

    def is_sharded(self, tensor: torch.Tensor) -> bool:
        return hasattr(tensor, "full_tensor")

    def shard_of(self, whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """This process's shard of ``whole``, laid out like the parameter ``like`` (or ``whole``)."""
        if not hasattr(like, "device_mesh"):
            return whole
        from torch.distributed.tensor import distribute_tensor

        # Every process read the same checkpoint, so each cuts its own shard with no communication.
        return distribute_tensor(
            whole.to(local_shard(like).device), like.device_mesh, like.placements, src_data_rank=None
        ).to_local()
