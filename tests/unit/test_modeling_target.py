"""The Polyak target policy (Eq. 7): exact averaging, copy and LoRA-adapter modes, checkpoint round trip."""

from __future__ import annotations

import io
import sys
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model

from popalign.errors import PopalignError
from popalign.modeling.logps import completion_logps
from popalign.modeling.target import (
    TARGET_ADAPTER,
    PolyakTarget,
    WholeTensors,
    _lerp_all,
    adapters_disabled,
    is_peft_model,
)
from popalign.modeling.tiny import tiny_causal_lm
from popalign.modeling.tokenizer import build_local_tokenizer
from popalign.train.sharding import ShardedLayout

# peft reads a deprecated transformers attribute when it wraps a model; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

INPUT_IDS = torch.tensor([[5, 9, 14, 30, 7, 8], [11, 12, 13, 40, 41, 2]])
ATTENTION_MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
COMPLETION_MASK = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 0]])


@pytest.fixture(scope="module")
def tokenizer():
    return build_local_tokenizer()


def logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK).logits


def logps(model):
    with torch.no_grad():
        return completion_logps(model, INPUT_IDS, ATTENTION_MASK, COMPLETION_MASK)


def perturb_(params, seed, scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=gen))


def lora_model(tokenizer, seed=0):
    # init_lora_weights=False: B != 0, so the adapter changes the outputs from the start.
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(tiny_causal_lm(tokenizer, seed=seed), config)


def live_lora(model):
    return {n: p for n, p in model.named_parameters() if ".default." in n}


def target_lora(model):
    return {n: p for n, p in model.named_parameters() if f".{TARGET_ADAPTER}." in n}


# ---- copy mode ------------------------------------------------------------------------------------------


def test_copy_starts_equal_so_the_margin_is_zero(tokenizer):
    policy = tiny_causal_lm(tokenizer, seed=0)
    target = PolyakTarget(policy)
    assert target.mode == "copy" and target.tau == 0.01
    with target.activated(policy) as target_model:
        assert target_model is not policy
        target_logps = logps(target_model)
    torch.testing.assert_close(target_logps, logps(policy), atol=0, rtol=0)
    assert not any(p.requires_grad for p in target.copy.parameters())
    assert not target.copy.training


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0])
def test_copy_update_is_the_exact_lerp(tokenizer, tau):
    policy = tiny_causal_lm(tokenizer, seed=0)
    target = PolyakTarget(policy, tau=tau)
    old = {n: p.detach().clone() for n, p in policy.named_parameters()}
    perturb_(policy.parameters(), seed=1)
    target.update(policy)
    for name, p in target.copy.named_parameters():
        new = dict(policy.named_parameters())[name].detach()
        if tau == 0.0:
            assert torch.equal(p, old[name])
        elif tau == 1.0:
            assert torch.equal(p, new)
        else:
            torch.testing.assert_close(p, (old[name] + new) / 2, atol=1e-7, rtol=0)


def test_midpoint_by_hand(tokenizer):
    policy = tiny_causal_lm(tokenizer, seed=0)
    weight = policy.model.norm.weight
    with torch.no_grad():
        weight.fill_(0.0)
    target = PolyakTarget(policy, tau=0.5)
    with torch.no_grad():
        weight.fill_(2.0)
    target.update(policy)
    assert torch.equal(target.copy.model.norm.weight, torch.ones_like(weight))
    target.update(policy)  # 1 -> 1.5: the target moves half the remaining way each step
    assert torch.equal(target.copy.model.norm.weight, torch.full_like(weight, 1.5))


def test_copy_target_lags_and_stays_detached(tokenizer):
    policy = tiny_causal_lm(tokenizer, seed=0)
    target = PolyakTarget(policy, tau=0.1)
    before = logps(policy)
    perturb_(policy.parameters(), seed=2, scale=0.05)
    target.update(policy)
    with target.activated(policy) as target_model:
        out = completion_logps(target_model, INPUT_IDS, ATTENTION_MASK, COMPLETION_MASK)
    assert not out.requires_grad  # Eq. 7's stop-gradient on the margin
    after = logps(policy)
    assert not torch.allclose(out, after) and not torch.allclose(out, before)
    assert policy.lm_head.weight.requires_grad


def test_copy_state_dict_round_trip(tokenizer):
    policy = tiny_causal_lm(tokenizer, seed=0)
    target = PolyakTarget(policy, tau=0.5)
    perturb_(policy.parameters(), seed=3)
    target.update(policy)
    buffer = io.BytesIO()
    torch.save(target.state_dict(), buffer)
    buffer.seek(0)

    fresh = PolyakTarget(tiny_causal_lm(tokenizer, seed=5), tau=0.5)
    fresh.load_state_dict(torch.load(buffer))
    for (name, a), (_, b) in zip(target.copy.named_parameters(), fresh.copy.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_bad_tau_and_mode_are_rejected(tokenizer):
    policy = tiny_causal_lm(tokenizer, seed=0)
    with pytest.raises(ValueError, match="tau"):
        PolyakTarget(policy, tau=1.5)
    with pytest.raises(PopalignError, match="peft"):
        PolyakTarget(policy, mode="adapter")
    with pytest.raises(PopalignError, match="copy"):
        PolyakTarget(lora_model(tokenizer), mode="copy").load_state_dict({"mode": "adapter", "params": {}})


# ---- adapter mode ---------------------------------------------------------------------------------------


def test_adapter_mode_is_chosen_for_peft_and_shares_the_base(tokenizer):
    model = lora_model(tokenizer)
    assert is_peft_model(model)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    trainable_before = {n for n, p in model.named_parameters() if p.requires_grad}
    target = PolyakTarget(model, tau=0.5)

    assert target.mode == "adapter"
    assert TARGET_ADAPTER in model.peft_config and model.active_adapter == "default"
    live, tgt = live_lora(model), target_lora(model)
    assert len(tgt) == len(live) == 8  # A and B of q_proj and v_proj in 2 layers
    for name, p in live.items():
        assert torch.equal(tgt[name.replace(".default.", f".{TARGET_ADAPTER}.")], p)
    assert not any(p.requires_grad for p in tgt.values())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable_before

    perturb_(live.values(), seed=4)
    target.update(model)
    for name, p in model.named_parameters():
        if name in base_before:
            assert torch.equal(p, base_before[name]), name  # the frozen base is never touched


def test_activated_runs_the_old_weights_and_restores_the_live_adapter(tokenizer):
    model = lora_model(tokenizer)
    twin = lora_model(tokenizer)  # same seed: the policy as it was before the step
    model.train()
    target = PolyakTarget(model, tau=0.01)
    with target.activated(model) as target_model:
        torch.testing.assert_close(logps(target_model), logps(model), atol=0, rtol=0)

    perturb_(live_lora(model).values(), seed=5)
    live_out = logits(model)
    with target.activated(model) as target_model:
        assert not target_model.training
        target_out = logits(target_model)
    assert not torch.allclose(target_out, live_out, atol=1e-3)
    torch.testing.assert_close(target_out, logits(twin.eval()), atol=1e-6, rtol=0)

    # Afterwards the live adapter is active, trainable, in train mode, and still differs from the target.
    assert model.active_adapter == "default" and model.training
    assert all(p.requires_grad for p in live_lora(model).values())
    assert not any(p.requires_grad for p in target_lora(model).values())
    torch.testing.assert_close(logits(model), live_out, atol=0, rtol=0)


def test_adapter_update_lerps_the_lora_weights(tokenizer):
    model = lora_model(tokenizer)
    target = PolyakTarget(model, tau=0.5)
    old = {n: p.detach().clone() for n, p in live_lora(model).items()}
    perturb_(live_lora(model).values(), seed=6)
    target.update(model)
    tgt = target_lora(model)
    for name, p in live_lora(model).items():
        twin = tgt[name.replace(".default.", f".{TARGET_ADAPTER}.")]
        torch.testing.assert_close(twin, (old[name] + p.detach()) / 2, atol=1e-7, rtol=0)


def test_adapter_state_dict_round_trip(tokenizer):
    model = lora_model(tokenizer)
    target = PolyakTarget(model, tau=1.0)
    perturb_(live_lora(model).values(), seed=7)
    target.update(model)
    saved = {
        k: (v if k != "params" else {n: t.clone() for n, t in v.items()})
        for k, v in target.state_dict().items()
    }
    assert saved["mode"] == "adapter" and len(saved["params"]) == 8

    other = lora_model(tokenizer)
    restored = PolyakTarget(other, tau=1.0)
    restored.load_state_dict(saved)
    with restored.activated(other) as a, target.activated(model) as b:
        torch.testing.assert_close(logits(a), logits(b), atol=0, rtol=0)


def test_adapters_disabled_gives_the_base_model(tokenizer):
    model = lora_model(tokenizer)
    base = tiny_causal_lm(tokenizer, seed=0).eval()
    model.eval()
    with_adapter = logits(model)
    with adapters_disabled(model) as reference:
        torch.testing.assert_close(logits(reference), logits(base), atol=1e-6, rtol=0)
    assert not torch.allclose(with_adapter, logits(base), atol=1e-3)
    torch.testing.assert_close(logits(model), with_adapter, atol=0, rtol=0)
    with adapters_disabled(base) as same:  # no adapters: the model itself (the policy at initialisation)
        assert same is base


def test_completion_logps_through_peft_equals_the_full_forward(tokenizer):
    model = lora_model(tokenizer).eval()
    with torch.no_grad():
        full = torch.log_softmax(logits(model)[:, :-1].float(), -1)
        token = full.gather(-1, INPUT_IDS[:, 1:, None]).squeeze(-1)
        want = (token * COMPLETION_MASK[:, 1:]).sum(-1)
    torch.testing.assert_close(logps(model), want, atol=1e-5, rtol=0)


# ---- update mechanics -----------------------------------------------------------------------------------


def test_lerp_mixed_dtypes_falls_back_to_per_tensor():
    target = [torch.zeros(3, dtype=torch.bfloat16), torch.zeros(2)]
    source = [torch.full((3,), 2.0), torch.full((2,), 4.0)]
    _lerp_all(target, source, 0.5, WholeTensors())
    assert torch.equal(target[0], torch.ones(3, dtype=torch.bfloat16))
    assert torch.equal(target[1], torch.full((2,), 2.0))


class FakeGathered:
    """Stands in for ``deepspeed.zero.GatheredParameters``: records what it was asked to gather."""

    calls: list = []

    def __init__(self, params, modifier_rank=None):
        FakeGathered.calls.append((len(params), modifier_rank))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture()
def fake_deepspeed(monkeypatch):
    FakeGathered.calls = []
    module = SimpleNamespace(zero=SimpleNamespace(GatheredParameters=FakeGathered))
    monkeypatch.setitem(sys.modules, "deepspeed", module)
    return FakeGathered.calls


def test_zero3_partitioned_target_is_gathered_with_a_modifier_rank(tokenizer, fake_deepspeed):
    model = lora_model(tokenizer)
    target = PolyakTarget(model, tau=0.5, layout=ShardedLayout())
    for p in list(live_lora(model).values()) + list(target_lora(model).values()):
        p.ds_id = 0  # what ZeRO-3 partitioning leaves on a parameter
    target.update(model)
    # modifier_rank=None would make DeepSpeed drop the writes when it re-partitions.
    assert fake_deepspeed == [(16, 0)]

    for p in target_lora(model).values():
        del p.ds_id
    target.update(model)  # only the live adapter is partitioned: a read-only gather
    assert fake_deepspeed[-1] == (8, None)  # the 8 partitioned live tensors only


def test_full_copy_of_zero3_weights_is_refused(tokenizer, fake_deepspeed):
    policy = tiny_causal_lm(tokenizer, seed=0)
    policy.lm_head.weight.ds_id = 0
    with pytest.raises(PopalignError, match="full-copy target cannot be made from ZeRO-3"):
        PolyakTarget(policy, layout=ShardedLayout())
    assert fake_deepspeed == []


@pytest.mark.parametrize("mark", ["ds_id", "to_local"])
def test_default_layout_refuses_sharded_weights_and_names_the_layout(tokenizer, mark):
    # Whole-tensor arithmetic on shards would silently update only this process's slice.
    policy = tiny_causal_lm(tokenizer, seed=0)
    setattr(policy.lm_head.weight, mark, 0)
    with pytest.raises(PopalignError, match="sharded.*layout=popalign.train.sharding.ShardedLayout"):
        PolyakTarget(policy)
    model = lora_model(tokenizer)
    setattr(next(iter(live_lora(model).values())), mark, 0)
    with pytest.raises(PopalignError, match="sharded"):
        PolyakTarget(model)


def test_sharded_layout_on_whole_tensors_is_the_default_arithmetic(tokenizer):
    policy = tiny_causal_lm(tokenizer, seed=0)
    plain, sharded = PolyakTarget(policy, tau=0.3), PolyakTarget(policy, tau=0.3, layout=ShardedLayout())
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1)
    plain.update(policy)
    sharded.update(policy)
    a, b = plain.state_dict()["params"], sharded.state_dict()["params"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fsdp_full_copy_needs_fsdp2():
    from types import SimpleNamespace

    from popalign.train.trainer import PreferenceTrainer

    def trainer(version, fsdp=True, peft=False):
        plugin = SimpleNamespace(fsdp_version=version)
        model = SimpleNamespace(peft_config={}) if peft else SimpleNamespace()
        return SimpleNamespace(
            is_fsdp_enabled=fsdp,
            model=model,
            accelerator=SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)),
        )

    assert PreferenceTrainer._fsdp_full_copy(trainer(2), "the target") is True
    assert PreferenceTrainer._fsdp_full_copy(trainer(2, fsdp=False), "the target") is False
    assert PreferenceTrainer._fsdp_full_copy(trainer(1, peft=True), "the target") is False  # LoRA: an adapter
    with pytest.raises(PopalignError, match="the target needs a model copy sharded.*fsdp_version: 2"):
        PreferenceTrainer._fsdp_full_copy(trainer(1), "the target")
