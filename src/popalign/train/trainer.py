"""``PreferenceTrainer``: a ``transformers.Trainer`` whose loss is one of the paper's preference losses.

The training loop, distribution (DDP, FSDP, DeepSpeed through accelerate), checkpointing and logging
are transformers'. This class adds three things: the forward passes a preference loss needs
(the strong pair through the policy; for PoP the weak pair through the target under ``no_grad``),
the Polyak update of the target after every optimiser step, and the target's state in checkpoints.
The loss maths itself lives in :mod:`popalign.losses` (:func:`popalign.losses.compose.method_loss`).
"""

from __future__ import annotations

import glob
import os
from collections import defaultdict
from typing import Any

import torch
from transformers import ProgressCallback, Trainer, TrainerCallback

from popalign.errors import PopalignError
from popalign.losses.compose import method_loss
from popalign.losses.preference import LossOutput
from popalign.losses.rewards import implicit_rewards
from popalign.methods import Method
from popalign.modeling.logps import completion_logps, sequence_scores
from popalign.modeling.packing import packed_logps, sequence_sums
from popalign.modeling.pair_batch import STRONG, WEAK, PairBatch, layout, preference_count, select_pairs
from popalign.modeling.prefix_sharing import shared_prefix_logps
from popalign.modeling.reference import frozen_copy
from popalign.modeling.target import PolyakTarget, adapters_disabled
from popalign.train.config import LossSpec, ReferenceSpec, TargetSpec
from popalign.train.fsdp import is_fsdp2_sharded, meta_skeleton, shard_like
from popalign.train.margin_cache import WeakRewardCache
from popalign.train.sharding import ShardedLayout
from popalign.train.throughput import ThroughputMeter, non_embedding_parameters, peak_flops

TARGET_STATE = "popalign_target.pt"
MARGIN_CACHE_STATE = "popalign_margin_cache-{process}.pt"


class TrainingDiverged(PopalignError):
    """The loss became NaN or infinite; the run stops before the bad step touches the weights."""


class _PolyakUpdate(TrainerCallback):
    def __init__(self, trainer: PreferenceTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        # Once the policy is wrapped; on a resume the checkpoint's target was loaded already.
        self.trainer.ensure_target()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.update_target()


class PreferenceTrainer(Trainer):
    """Trains a policy (DPO family, Eq. 3, 7, 8) or a reward model (Eq. 2, 4, 5) on preference batches.

    Args:
        method: the preset (sampler, margin source, loss form, weighting) from :mod:`popalign.methods`; its
            ``objective`` says whether rewards are implicit (policy) or explicit (reward model).
        loss: the loss settings (``beta``, the constant margin, ``M_max``, label smoothing, the margin
            cache); default :class:`~popalign.train.config.LossSpec`.
        target: the Polyak target's settings (``tau``), used when the margin source scores the weak pair with
            the target.
        reference: ``precompute=False`` runs the reference model each step instead of reading precomputed
            log-probs from the batch.
        mean_over_step: the loss is the mean over every preference of the optimiser step (all micro-batches,
            all processes), not the mean of the micro-batches' means: needed where micro-batches differ in
            size (``training.max_tokens_per_batch``), for which the two differ.
    """

    def __init__(
        self,
        *args: Any,
        method: Method,
        loss: LossSpec | None = None,
        target: TargetSpec | None = None,
        reference: ReferenceSpec | None = None,
        mean_over_step: bool = False,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        # Without mean_over_step our loss is a per-example mean of one micro-batch; the Trainer divides it
        # by the accumulation steps, so batch 8 equals batch 4 x 2 accumulation steps. With it, the loss
        # is divided by the step's number of preferences here (see _get_num_items_in_batch).
        self.mean_over_step = mean_over_step
        self.loss_is_scaled_for_ga = mean_over_step
        self.method = method
        self.loss = loss or LossSpec()
        self.target: PolyakTarget | None = None
        self.tau = (target or TargetSpec()).tau
        live_reference = not (reference or ReferenceSpec()).precompute
        # FSDP2 full fine-tuning: the target is sharded like the policy, which the Trainer wraps only when
        # training starts; until then this holds the target's weightless structure.
        self._target_skeleton: torch.nn.Module | None = None
        if method.needs_weak_pair and method.source.uses_target:
            if self._fsdp_full_copy(f"the Polyak target (loss.margin_source={method.margin})"):
                self._target_skeleton = meta_skeleton(self.model)
            else:
                self.target = PolyakTarget(self.model, self.tau, layout=ShardedLayout())
                if self.target.mode == "copy":
                    # Under DeepSpeed the Trainer leaves the model on the CPU until prepare(); the copy
                    # must live where the policy will run.
                    self.target.copy.to(self.args.device)
            self.add_callback(_PolyakUpdate(self))
        self.reference_model: torch.nn.Module | None = None
        needs_reference = not method.reward_model and not method.loss_form.reference_free
        if live_reference and needs_reference and not _is_peft(self.model):
            if getattr(self, "is_fsdp_enabled", False):
                raise PopalignError(
                    "a live reference model is not supported under FSDP with full fine-tuning; keep "
                    "reference.precompute=true (the default), or train with lora.enabled=true"
                )
            self.reference_model = frozen_copy(self.model, self.args.device)
        self.live_reference = live_reference
        self.margin_cache: WeakRewardCache | None = None
        if method.needs_weak_pair and self.loss.margin_refresh_steps > 1:
            self.margin_cache = WeakRewardCache(self.loss.margin_refresh_steps)
        # Weak-pair rows run through the target so far (the margin cache's saving shows here).
        self.weak_forward_rows = 0
        self._metric_sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64))
        self._metric_count = 0
        self._throughput: ThroughputMeter | None = None

    def _fsdp_full_copy(self, what: str) -> bool:
        """Whether ``what`` needs a full model copy under FSDP (it is then sharded like the policy).

        LoRA keeps the target inside the policy as a second adapter, which FSDP shards with it. FSDP1
        flattens parameters per wrapped unit, so a copy's shards would not line up with the policy's.
        """
        if not getattr(self, "is_fsdp_enabled", False) or _is_peft(self.model):
            return False
        version = getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1)
        if version != 2:
            raise PopalignError(
                f"{what} needs a model copy sharded like the policy, which popalign supports with FSDP2 "
                "only; set fsdp_version: 2 in the accelerate config (configs/accelerate/fsdp.yaml), or use "
                "lora.enabled=true, DDP or DeepSpeed ZeRO-2"
            )
        return True

    def ensure_target(self) -> None:
        """FSDP2: build the target, sharded like the now wrapped policy (every process must call this)."""
        if self._target_skeleton is None:
            return
        if not is_fsdp2_sharded(self.model):
            raise PopalignError("internal: the FSDP2 target was requested before the policy was wrapped")
        plugin = self.accelerator.state.fsdp_plugin
        made = shard_like(
            self._target_skeleton,
            self.model,
            mp_policy=plugin.mixed_precision_policy,
            offload_policy=plugin.cpu_offload,
        )
        self._target_skeleton = None
        self.target = PolyakTarget(self.model, self.tau, made_copy=made, layout=ShardedLayout())

    # ---- forward passes -------------------------------------------------------------------------
    def _unwrapped(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model)

    def _reference_logps(self, model, pair: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "reference_chosen_logps" in pair:
            return pair["reference_chosen_logps"], pair["reference_rejected_logps"]
        if not self.live_reference:
            raise PopalignError(
                "reference log-probs are missing from the batch and reference.precompute is on"
            )
        with torch.no_grad():
            if self.reference_model is not None:
                logps = self._logps(self.reference_model, pair)
            else:
                with adapters_disabled(self._unwrapped(model)):
                    logps = self._logps(self._unwrapped(model), pair)
        half = logps.shape[0] // 2
        return logps[:half], logps[half:]

    @staticmethod
    def _logps(model, pair: dict) -> torch.Tensor:
        """(2B,) completion log-probs of a pair, chosen rows first, in any layout."""
        kind = layout(pair)
        if kind == "packed":
            return packed_logps(
                model,
                pair["input_ids"],
                pair["position_ids"],
                pair["completion_mask"],
                pair["sequence_index"],
                int(pair["sequence_lengths"].shape[0]),
            )
        if kind == "shared":
            return shared_prefix_logps(
                model,
                pair["input_ids"],
                pair["prompt_lengths"],
                pair["chosen_lengths"],
                pair["rejected_lengths"],
            )
        return completion_logps(model, pair["input_ids"], pair["attention_mask"], pair["completion_mask"])

    def _rewards(self, model, pair: dict, logs: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards of chosen and rejected, ``(B,)`` each: implicit (policy) or explicit (reward model).
        ``logs`` (the strong pair's only) receives the policy's log-probs."""
        if self.method.reward_model:
            scores = sequence_scores(model, pair["input_ids"], pair["attention_mask"])
            half = scores.shape[0] // 2
            return scores[:half], scores[half:]
        logps = self._logps(model, pair)
        half = logps.shape[0] // 2
        policy_chosen_logps, policy_rejected_logps = logps[:half], logps[half:]
        if self.method.loss_form.reference_free:
            zero = torch.zeros_like(policy_chosen_logps).detach()
            reference_chosen_logps = reference_rejected_logps = zero
        else:
            reference_chosen_logps, reference_rejected_logps = self._reference_logps(model, pair)
        if logs is not None:
            logs["logps/chosen"] = policy_chosen_logps.detach()
            logs["logps/rejected"] = policy_rejected_logps.detach()
        return implicit_rewards(
            policy_chosen_logps,
            policy_rejected_logps,
            reference_chosen_logps,
            reference_rejected_logps,
            self.loss.beta,
        )

    @staticmethod
    def _lengths(pair: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Completion tokens of chosen and rejected, ``(B,)`` each, in any layout."""
        kind = layout(pair)
        if kind == "shared":
            return pair["chosen_lengths"], pair["rejected_lengths"]
        if kind == "packed":
            counts = sequence_sums(
                pair["completion_mask"], pair["sequence_index"], int(pair["sequence_lengths"].shape[0])
            )
        else:
            counts = pair["completion_mask"].sum(dim=1)
        half = counts.shape[0] // 2
        return counts[:half], counts[half:]

    @torch.no_grad()
    def _weak_rewards(self, model, batch: PairBatch, logs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if self.margin_cache is not None and batch.weak_index is not None:
            return self._cached_weak_rewards(model, batch, logs)
        weak = batch.pair(WEAK)
        self.weak_forward_rows += int(batch.weak_index.shape[0]) if batch.weak_index is not None else 0
        if self._target_skeleton is not None:
            raise PopalignError("internal: the FSDP2 target was not built before the first step")
        if self.target is None:
            return self._rewards(model, weak)
        with self.target.activated(self._unwrapped(model)) as target_model:
            return self._rewards(target_model, weak)

    def _cached_weak_rewards(self, model, batch: PairBatch, logs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Target rewards of the weak pairs, from the cache where fresh; the rest run as one smaller batch."""
        index = batch.weak_index.tolist()
        step = self.state.global_step
        fresh, cached_c, cached_r = self.margin_cache.lookup(index, step)
        device = batch.weak_index.device
        chosen = torch.tensor(cached_c, device=device, dtype=torch.float32)
        rejected = torch.tensor(cached_r, device=device, dtype=torch.float32)
        stale = torch.tensor([not f for f in fresh], device=device).nonzero().squeeze(-1)
        if not len(stale) and self._forward_is_collective():
            # Sharded weights are gathered inside the forward, so every process must run one: a process
            # with nothing stale refreshes its first row rather than skipping.
            stale = stale.new_zeros(1)
        if len(stale):
            sub = select_pairs(batch.pair(WEAK), stale)
            self.weak_forward_rows += len(stale)
            if self.target is None:
                c, r = self._rewards(model, sub)
            else:
                with self.target.activated(self._unwrapped(model)) as target_model:
                    c, r = self._rewards(target_model, sub)
            chosen[stale], rejected[stale] = c.to(chosen.dtype), r.to(rejected.dtype)
            self.margin_cache.store([index[i] for i in stale.tolist()], c, r, step)
        logs["margin/cached"] = torch.tensor(fresh, device=device, dtype=torch.float32)
        return chosen, rejected

    def _forward_is_collective(self) -> bool:
        """Whether a forward may communicate (sharded weights, DDP buffer syncs): with several processes
        none may skip one alone."""
        return self.accelerator.num_processes > 1

    def preference_outputs(self, model, inputs) -> LossOutput:
        batch = PairBatch(inputs)
        logs: dict[str, torch.Tensor] = {}
        weak_c = weak_r = None
        if self.method.needs_weak_pair:
            # The no-grad weak forward runs first: its activations are freed before the strong pair's graph
            # is built, so DPO-PoP's peak memory stays that of vanilla DPO.
            weak_c, weak_r = self._weak_rewards(model, batch, logs)
        strong = batch.pair(STRONG)
        chosen_rewards, rejected_rewards = self._rewards(model, strong, logs)
        lengths = None
        if self.method.needs_lengths:
            lengths = dict(zip(("chosen", "rejected"), self._lengths(strong), strict=True))
            if self.method.needs_weak_pair:
                lengths.update(
                    zip(("weak_chosen", "weak_rejected"), self._lengths(batch.pair(WEAK)), strict=True)
                )
        out = method_loss(
            self.method,
            chosen_rewards,
            rejected_rewards,
            gt_margins=batch.gt_margins,
            weak_chosen_rewards=weak_c,
            weak_rejected_rewards=weak_r,
            margin_column=batch.margin_column,
            lengths=lengths,
            rows=batch.rows,
            params=self.loss,
        )
        out.metrics.update(logs)
        return out

    # ---- Trainer hooks ---------------------------------------------------------------------------
    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """With ``mean_over_step``: the preferences in the step's micro-batches, over every process."""
        if not self.mean_over_step:
            return super()._get_num_items_in_batch(batch_samples, device)
        count = torch.tensor(sum(preference_count(b) for b in batch_samples), device=device)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.gather(count[None]).sum()
        return count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = self.preference_outputs(model, inputs)
        if self.mean_over_step and num_items_in_batch is not None:
            # Data parallelism averages gradients over processes; the step's mean needs their sum.
            loss = out.losses.sum() * self.accelerator.num_processes / num_items_in_batch
        else:
            loss = out.losses.mean()
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the loss became {loss.item()} at step {self.state.global_step + 1}; no update was applied. "
                f"Last good checkpoint: {self._last_checkpoint() or 'none yet'}. "
                "Lower training.learning_rate or loss.beta, or set loss.max_margin, and resume."
            )
        if model.training:
            self._accumulate(out.metrics)
            self._meter().add(PairBatch(inputs))
        return (loss, out) if return_outputs else loss

    def _accumulate(self, metrics: dict[str, torch.Tensor]) -> None:
        for name, value in metrics.items():
            self._metric_sums[name] = self._metric_sums[name] + value.detach().double().sum().cpu()
        first = next(iter(metrics.values()))
        self._metric_count += int(first.shape[0]) if first.dim() else 1

    def _meter(self) -> ThroughputMeter:
        if self._throughput is None:
            inner = self._unwrapped(self.model)
            self._throughput = ThroughputMeter(
                non_embedding_parameters(inner), lora=_is_peft(inner), peak=peak_flops(self.args.device)
            )
        return self._throughput

    def _log_throughput(self, logs: dict[str, float]) -> None:
        """Real tokens/s, padding share and MFU since the last log, in the logs and on the progress bar."""
        if self._throughput is None:
            return

        def reduce(counts: list[int]) -> list[float]:
            totals = torch.tensor(counts, dtype=torch.float64, device=self.accelerator.device)
            return self.accelerator.reduce(totals, reduction="sum").tolist()

        rates = self._throughput.take(reduce, self.accelerator.num_processes)
        logs.update(rates)
        bar = next((c for c in self.callback_handler.callbacks if isinstance(c, ProgressCallback)), None)
        if rates and bar is not None and bar.training_bar is not None:
            shown = {"tok/s": f"{rates['throughput/real_tokens_per_s']:.0f}"}
            shown["pad"] = f"{rates['throughput/padding_share']:.0%}"
            if "throughput/mfu" in rates:
                shown["MFU"] = f"{rates['throughput/mfu']:.1%}"
            bar.training_bar.set_postfix(shown, refresh=False)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            self._log_throughput(logs)
        if self._metric_count and "loss" in logs:
            names = sorted(self._metric_sums)
            sums = torch.stack(
                [self._metric_sums[n] for n in names] + [torch.tensor(float(self._metric_count))]
            )
            sums = sums.to(self.accelerator.device, dtype=torch.float32)
            # Means over every example of every process since the last log, not a mean of means.
            sums = self.accelerator.reduce(sums, reduction="sum")
            for name, total in zip(names, sums[:-1].tolist(), strict=True):
                logs[name] = round(total / sums[-1].item(), 6)
            self._metric_sums.clear()
            self._metric_count = 0
        super().log(logs, start_time)

    def update_target(self) -> None:
        if self.target is not None:
            self.target.update(self._unwrapped(self.model))

    def _last_checkpoint(self) -> str | None:
        from popalign.train.checkpoints import latest_checkpoint

        return latest_checkpoint(self.args.output_dir)

    def _save_checkpoint(self, model, trial) -> None:
        # The target is written before the Trainer's own files: a checkpoint whose trainer_state.json
        # exists (written last) therefore always holds its target.
        folder = os.path.join(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}")
        if self.target is not None:
            # Every process takes part: a sharded target is gathered into whole tensors here.
            state = self.target.state_dict()
            if self.args.should_save:
                os.makedirs(folder, exist_ok=True)
                torch.save(state, os.path.join(folder, TARGET_STATE))
        if self.margin_cache is not None:
            # Each process caches the weak rows of its own batches.
            os.makedirs(folder, exist_ok=True)
            name = MARGIN_CACHE_STATE.format(process=self.args.process_index)
            torch.save(self.margin_cache.state_dict(), os.path.join(folder, name))
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        # The one resume hook that runs under every backend (DeepSpeed skips _load_from_checkpoint) and
        # after the model is wrapped, when an FSDP2 target can be built.
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        self.ensure_target()
        if self.target is not None:
            path = os.path.join(checkpoint, TARGET_STATE)
            if not os.path.exists(path):
                raise PopalignError(f"{checkpoint}: the checkpoint has no target state ({TARGET_STATE})")
            self.target.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        if self.margin_cache is not None:
            pattern = os.path.join(checkpoint, MARGIN_CACHE_STATE.format(process="*"))
            for path in sorted(glob.glob(pattern)):
                self.margin_cache.merge_state_dict(torch.load(path, weights_only=True))


def _is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")
