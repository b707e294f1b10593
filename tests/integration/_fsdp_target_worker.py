"""One process of the FSDP2 target check (run by ``test_fsdp_target.py`` under torchrun, gloo, CPU).

Every process builds the same tiny Llama, shards it with ``fully_shard`` the way accelerate's
TRANSFORMER_BASED_WRAP does (each decoder layer, then the root), and builds the Polyak target sharded like
it. The first process compares everything with plain whole-tensor arithmetic and writes the differences
to the JSON file named on the command line.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import distribute_tensor

from popalign.modeling.logps import completion_logps
from popalign.modeling.target import PolyakTarget
from popalign.modeling.tiny import tiny_causal_lm
from popalign.modeling.tokenizer import build_local_tokenizer
from popalign.train.fsdp import meta_skeleton, shard_like
from popalign.train.sharding import ShardedLayout, local_shard
from popalign.train.trainer import PreferenceTrainer

TAU = 0.3


def _shard(policy: torch.nn.Module) -> None:
    for layer in policy.model.layers:
        fully_shard(layer)
    fully_shard(policy)


def _full(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    params = module.named_parameters()
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach() for n, p in params}


def _worst(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())[:5]
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _set_weights(policy: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in policy.named_parameters():
            local_shard(p).copy_(
                distribute_tensor(weights[name], p.device_mesh, p.placements, src_data_rank=None).to_local()
            )


def _batch(tokenizer, n: int = 3, length: int = 24) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(11)
    ids = torch.randint(3, len(tokenizer), (n, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, -5:] = 0  # a padded row
    completion = torch.zeros_like(ids)
    completion[:, 10:] = 1
    return ids, mask, completion * mask


def main() -> None:
    out_path, state_path = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tokenizer = build_local_tokenizer()
    whole = tiny_causal_lm(tokenizer, seed=1).eval()
    policy = copy.deepcopy(whole)
    # The trainer's own steps: the skeleton before wrapping, the target once the policy is wrapped.
    plugin = SimpleNamespace(fsdp_version=2, mixed_precision_policy=None, cpu_offload=None)
    trainer = SimpleNamespace(
        _target_skeleton=meta_skeleton(policy),
        model=policy,
        tau=TAU,
        target=None,
        accelerator=SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)),
    )
    _shard(policy)
    PreferenceTrainer.ensure_target(trainer)
    target = trainer.target
    result: dict[str, object] = {"world": world}

    before = _full(whole)
    result["initial_diff"] = _worst(_full(target.copy), before)
    local = sum(local_shard(p).numel() for p in target.copy.parameters())
    result["local_fraction"] = local / sum(p.numel() for p in whole.parameters())

    # The policy moves (as an optimiser step would move it); the target follows by tau.
    gen = torch.Generator().manual_seed(5)
    after = {n: w + 0.05 * torch.randn(w.shape, generator=gen) for n, w in before.items()}
    _set_weights(policy, after)
    target.update(policy)
    expected = {n: torch.lerp(before[n], after[n], TAU) for n in before}
    result["update_diff"] = _worst(_full(target.copy), expected)
    result["policy_diff"] = _worst(_full(policy), after)

    # The target's forward (every process runs it: it gathers) equals a whole model holding those weights.
    ids, mask, completion = _batch(tokenizer)
    reference = copy.deepcopy(whole)
    reference.load_state_dict(expected, strict=False)
    with torch.no_grad():
        with target.activated(policy) as target_model:
            sharded_logps = completion_logps(target_model, ids, mask, completion)
        whole_logps = completion_logps(reference.eval(), ids, mask, completion)
    result["forward_diff"] = (sharded_logps - whole_logps).abs().max().item()
    result["logps"] = whole_logps.tolist()

    # The policy still trains after the target's forward: its backward sees only its own weights.
    policy.train()
    loss = completion_logps(policy, ids, mask, completion).sum()
    loss.backward()
    result["policy_grads"] = all(p.grad is not None for p in policy.parameters())

    # Checkpoint round trip: whole tensors on the first process, loaded back into a fresh sharded copy.
    state = target.state_dict()
    result["state_entries_here"] = len(state["params"])
    if rank == 0:
        torch.save(state, state_path)
    dist.barrier()
    restored = PolyakTarget(
        policy, tau=TAU, made_copy=shard_like(meta_skeleton(whole), policy), layout=ShardedLayout()
    )
    result["fresh_copy_diff"] = _worst(_full(restored.copy), after)
    restored.load_state_dict(torch.load(state_path, weights_only=True))
    result["restored_diff"] = _worst(_full(restored.copy), expected)

    entries = [None] * world
    dist.all_gather_object(entries, result["state_entries_here"])
    result["state_entries"] = entries
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Skip interpreter teardown: gloo's threads sometimes abort the process there after all is written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
