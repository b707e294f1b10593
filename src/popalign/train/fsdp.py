"""A frozen copy of an FSDP2-sharded model, sharded exactly like it: DPO-PoP's target under full fine-tuning.

FSDP2 (``torch.distributed.fsdp.fully_shard``) shards every parameter along its first dimension over the
device mesh, whatever the wrapping. A copy sharded on the same mesh therefore holds, on every process, the
same slice of every parameter as the policy, and the Polyak update ``theta_hat <- lerp(theta_hat, theta,
tau)`` runs on the local shards with no communication. The copy costs ``1 / world_size`` of a model per
process; its forward gathers its weights like the policy's does.

The copy is built in two steps because the Trainer wraps the policy late:

1. :func:`meta_skeleton` before wrapping: the module structure with parameters on the ``meta`` device (no
   memory, no copy of the weights);
2. :func:`shard_like` after wrapping: the skeleton is sharded group by group like the policy, materialised,
   and its shards and buffers are copied from the policy's.

FSDP1 (``FullyShardedDataParallel``) flattens parameters per wrapped unit, so shards of two separately
wrapped models need not line up; it is not supported (the trainer says so).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from popalign.errors import PopalignError
from popalign.train.sharding import local_shard

if TYPE_CHECKING:
    from torch import nn


def is_fsdp2_sharded(model: nn.Module) -> bool:
    """True when the model's parameters are FSDP2 shards (``DTensor``)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def meta_skeleton(model: nn.Module) -> nn.Module:
    """A frozen structural copy of an unwrapped ``model`` whose parameters live on the ``meta`` device.

    Buffers are copied as they are (they are small and some, such as rotary frequencies, are not part of
    any state dict). Tied parameters stay tied.
    """
    import torch

    memo: dict[int, Any] = {}
    for param in model.parameters():
        memo[id(param)] = torch.nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=False)
    skeleton = copy.deepcopy(model, memo)
    skeleton.eval()
    skeleton.requires_grad_(False)
    return skeleton


def shard_like(skeleton: nn.Module, policy: nn.Module, *, mp_policy=None, offload_policy=None) -> nn.Module:
    """Shard ``skeleton`` like the FSDP2-wrapped ``policy`` and fill it with the policy's current weights.

    Args:
        skeleton: from :func:`meta_skeleton` of the same model before it was wrapped.
        policy: the wrapped policy; every process must call this (the copy's forward is collective).
        mp_policy, offload_policy: the policy's FSDP2 mixed-precision and offload policies, so the copy's
            forward computes in the same precision as the policy's.

    Returns:
        ``skeleton``, now FSDP2-sharded, on the policy's device, equal to the policy.
    """
    import torch
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
    from torch.distributed.tensor import DTensor

    params = dict(policy.named_parameters())
    sharded = [p for p in params.values() if isinstance(p, DTensor)]
    if not sharded:
        raise PopalignError("the policy is not sharded by FSDP2 (fully_shard); cannot shard a copy like it")
    mesh = sharded[0].device_mesh
    device = sharded[0].to_local().device
    # Parameters the policy left unsharded (accelerate's ignored modules) stay whole in the copy too.
    whole = {name for name, p in params.items() if not isinstance(p, DTensor)}
    kwargs = {
        "mesh": mesh,
        "ignored_params": {p for name, p in skeleton.named_parameters() if name in whole},
        # The copy never runs a backward, so nothing is gained by keeping gathered weights after forward.
        "reshard_after_forward": True,
        "mp_policy": mp_policy or MixedPrecisionPolicy(),
        "offload_policy": offload_policy or OffloadPolicy(),
    }
    # Same grouping as the policy, innermost first, so the forward gathers one layer at a time.
    groups = [name for name, module in policy.named_modules() if name and isinstance(module, FSDPModule)]
    for name in sorted(groups, key=lambda n: -len(n.split("."))):
        fully_shard(skeleton.get_submodule(name), **kwargs)
    # The root last: it holds whatever no inner group took (embeddings, final norm, head).
    fully_shard(skeleton, **kwargs)
    skeleton.to_empty(device=device)
    copied = dict(skeleton.named_parameters())
    if copied.keys() != params.keys():
        missing = sorted(copied.keys() ^ params.keys())[:5]
        raise PopalignError(f"the sharded copy's parameters differ from the policy's (e.g. {missing})")
    with torch.no_grad():
        for name, param in params.items():
            local, source = local_shard(copied[name]), local_shard(param)
            if local.shape != source.shape:
                raise PopalignError(
                    f"parameter {name}: the copy's shard {tuple(local.shape)} differs from the policy's "
                    f"{tuple(source.shape)}"
                )
            local.copy_(source)
        buffers = dict(policy.named_buffers())
        for name, buf in skeleton.named_buffers():
            if name in buffers:
                buf.copy_(buffers[name])
    skeleton.eval()
    skeleton.requires_grad_(False)
    return skeleton
