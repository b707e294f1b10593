"""Run one benchmark configuration in this process and print its measurements as one JSON line.

    python -m benchmarks.worker '<RunSpec as JSON>'

The orchestrator (:mod:`benchmarks.train_step`) starts one process per configuration, so that each peak
RSS belongs to that configuration alone. Both implementations are driven through their real trainers
(``popalign.train.trainer.PreferenceTrainer`` and ``trl.DPOTrainer``) on the same token ids, the same
initial weights and the same optimiser settings; only optimiser steps are timed.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from typing import Any

from benchmarks.common import (
    PAD_ID,
    RunSpec,
    StepTimer,
    build_model,
    ids_to_text,
    memory_record,
    model_flops_per_step,
    parameter_counts,
    synthetic_ids,
    word_tokenizer,
)


def _n_preferences(spec: RunSpec) -> int:
    # One spare batch so the last step never meets a short batch.
    return (spec.warmup + spec.steps + 1) * spec.shape.batch_size


def _common_args(spec: RunSpec) -> dict[str, Any]:
    """Optimiser and loop settings both trainers get, word for word."""
    on_gpu = spec.shape.device == "cuda"
    return {
        "learning_rate": spec.learning_rate,
        "max_steps": spec.warmup + spec.steps,
        "per_device_train_batch_size": spec.shape.batch_size,
        "gradient_accumulation_steps": 1,
        "lr_scheduler_type": "constant",
        "weight_decay": 0.0,
        "optim": spec.optim,
        "max_grad_norm": 1.0,
        "bf16": on_gpu and spec.shape.dtype == "bfloat16",
        "seed": spec.seed,
        "logging_steps": 10_000,
        "report_to": "none",
        "dataloader_num_workers": 0,
    }


def _setup_threads(spec: RunSpec) -> None:
    import torch

    if spec.threads:
        torch.set_num_threads(spec.threads)


def run_popalign(spec: RunSpec, callbacks: list | None = None) -> dict[str, Any]:
    import numpy as np

    from popalign.data.tokenize import TokenizedPreferences
    from popalign.methods import get_method
    from popalign.modeling.chunked_head import kernels_used, set_chunk_size
    from popalign.modeling.lora import apply_lora
    from popalign.train.collate import PairExamples, PreferenceCollator
    from popalign.train.config import LoraSpec, LossSpec, ReferenceSpec
    from popalign.train.recipe import training_arguments
    from popalign.train.trainer import PreferenceTrainer

    shape = spec.shape
    set_chunk_size(spec.logps_chunk_size)  # before the reference precompute, as `popalign train` does
    n = _n_preferences(spec)
    prompts, chosen, rejected = synthetic_ids(shape, n, spec.seed)
    tokenized = TokenizedPreferences(prompts, chosen, rejected, fingerprint="benchmark")
    model = build_model(shape, spec.seed)
    counts = parameter_counts(model)
    model = apply_lora(model, LoraSpec(enabled=spec.lora))
    model.to(shape.device)
    method = get_method(spec.method)
    rss_model = memory_record()

    ref_c = ref_r = None
    precompute = {}
    if not spec.live_reference:
        ref_c, ref_r, precompute = _precompute_reference(model, tokenized, shape)

    rng = np.random.default_rng(spec.seed + 1)
    weak = None
    if method.needs_weak_pair:
        pool = spec.weak_pool or n
        weak = rng.integers(0, pool, size=n)
    examples = PairExamples(np.arange(n), weak)
    collator_kw = {} if spec.prefix_sharing is None else {"prefix_sharing": spec.prefix_sharing}
    collator = PreferenceCollator(
        tokenized,
        PAD_ID,
        reference_chosen_logps=ref_c,
        reference_rejected_logps=ref_r,
        with_weak=method.needs_weak_pair,
        **collator_kw,
    )
    train_spec = _training_spec(spec)
    trainer_cls = _strong_first_trainer() if spec.weak_after_strong else PreferenceTrainer
    with tempfile.TemporaryDirectory() as out:
        trainer = trainer_cls(
            model=model,
            args=training_arguments(train_spec, out),
            train_dataset=examples,
            data_collator=collator,
            method=method,
            loss=LossSpec(margin_refresh_steps=spec.margin_refresh_steps),
            reference=ReferenceSpec(precompute=not spec.live_reference),
        )
        for callback in callbacks or ():
            trainer.add_callback(callback)
        timer = StepTimer()
        trainer.add_callback(timer.callback)
        trainer.train()
        extra = {
            "weak_forward_rows": getattr(trainer, "weak_forward_rows", None),
            "head_kernels": sorted(kernels_used()),
        }
    flops = model_flops_per_step(shape, counts, weak_pair=method.needs_weak_pair, lora=spec.lora)
    return {
        **timer.summary(spec.warmup),
        **precompute,
        **extra,
        "model_rss": rss_model,
        "params": counts,
        "model_flops_per_step": flops,
    }


def _precompute_reference(model, tokenized, shape) -> tuple[Any, Any, dict[str, float]]:
    """Reference log-probs of every preference, timed: the precompute throughput the table reports."""
    from popalign.modeling.reference import compute_reference_logps
    from popalign.modeling.target import adapters_disabled

    start = time.perf_counter()
    with adapters_disabled(model):
        ref_c, ref_r = compute_reference_logps(
            model, tokenized, PAD_ID, batch_size=2 * shape.batch_size, progress=False
        )
    seconds = time.perf_counter() - start
    rows = 2 * len(ref_c)
    return ref_c, ref_r, {"precompute_s": seconds, "precompute_seq_per_s": rows / seconds}


def _training_spec(spec: RunSpec):
    """The shared benchmark's optimiser settings (AdamW, constant rate) as popalign's."""
    from popalign.train.config import TrainingSpec

    args = _common_args(spec)
    return TrainingSpec(
        learning_rate=args["learning_rate"],
        max_steps=args["max_steps"],
        per_device_train_batch_size=args["per_device_train_batch_size"],
        gradient_accumulation_steps=1,
        lr_scheduler_type="constant",
        warmup_ratio=0.0,
        weight_decay=0.0,
        optim=args["optim"],
        max_grad_norm=1.0,
        gradient_checkpointing=spec.gradient_checkpointing,
        bf16=args["bf16"],
        seed=spec.seed,
        logging_steps=args["logging_steps"],
        save_steps=10_000,
        save_total_limit=None,
        report_to=["none"],
        progress=False,
        torch_threads=spec.threads,
        logps_chunk_size=spec.logps_chunk_size,
    )


def _strong_first_trainer():
    """PreferenceTrainer with the forward order before the memory lever: the weak pair's no-grad forward
    runs while the strong pair's graph is alive."""
    from popalign.losses.compose import method_loss
    from popalign.modeling.pair_batch import STRONG, PairBatch
    from popalign.train.trainer import PreferenceTrainer

    class StrongFirst(PreferenceTrainer):
        def preference_outputs(self, model, inputs):
            logs: dict = {}
            batch = PairBatch(inputs)
            chosen, rejected = self._rewards(model, batch.pair(STRONG), logs)
            weak_c, weak_r = self._weak_rewards(model, batch, logs)
            out = method_loss(
                self.method,
                chosen,
                rejected,
                weak_chosen_rewards=weak_c,
                weak_rejected_rewards=weak_r,
                params=self.loss,
            )
            out.metrics.update(logs)
            return out

    return StrongFirst


def _trl_dataset(spec: RunSpec):
    from datasets import Dataset

    prompts, chosen, rejected = synthetic_ids(spec.shape, _n_preferences(spec), spec.seed)
    # The leading space makes prompt + response split into exactly prompt_len + completion_len words; the
    # responses already end in the eos token, so TRL adds none.
    return Dataset.from_dict(
        {
            "prompt": [ids_to_text(p) for p in prompts],
            "chosen": [" " + ids_to_text(c) for c in chosen],
            "rejected": [" " + ids_to_text(r) for r in rejected],
        }
    )


def run_trl(spec: RunSpec, callbacks: list | None = None) -> dict[str, Any]:
    from trl import DPOConfig, DPOTrainer

    shape = spec.shape
    model = build_model(shape, spec.seed)
    counts = parameter_counts(model)
    ref_model = copy.deepcopy(model).eval() if spec.live_reference else None
    rss_model = memory_record()
    dataset = _trl_dataset(spec)
    args = _common_args(spec)
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        warmup_steps=0,
        gradient_checkpointing=spec.gradient_checkpointing,
        fp16=False,
        precompute_ref_log_probs=not spec.live_reference,
        precompute_ref_batch_size=2 * shape.batch_size,
        max_length=shape.max_length,
        beta=0.1,
        loss_type=["sigmoid"],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=shape.device == "cpu",
        **args,
    )
    precompute: dict[str, float] = {}
    original = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, dataset, name, batch_size):
        start = time.perf_counter()
        result = original(self, dataset, name, batch_size)
        seconds = time.perf_counter() - start
        precompute.update(precompute_s=seconds, precompute_seq_per_s=2 * len(dataset) / seconds)
        return result

    DPOTrainer._precompute_ref_logps = timed_precompute
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=config,
        train_dataset=dataset,
        processing_class=word_tokenizer(shape.vocab_size),
    )
    _check_trl_lengths(trainer, spec)
    for callback in callbacks or ():
        trainer.add_callback(callback)
    timer = StepTimer()
    trainer.add_callback(timer.callback)
    trainer.train()
    return {
        **timer.summary(spec.warmup),
        **precompute,
        "model_rss": rss_model,
        "params": counts,
        "model_flops_per_step": model_flops_per_step(shape, counts),
    }


def _check_trl_lengths(trainer, spec: RunSpec) -> None:
    row = trainer.train_dataset[0]
    got = (len(row["prompt_ids"]), len(row["chosen_ids"]), len(row["rejected_ids"]))
    want = (spec.shape.prompt_len, spec.shape.completion_len, spec.shape.completion_len)
    if got != want:
        raise RuntimeError(f"TRL tokenised the benchmark texts to {got} tokens, expected {want}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = RunSpec.from_json(json.loads(argv[0]))
    _setup_threads(spec)
    import torch

    run = run_trl if spec.impl == "trl" else run_popalign
    result = run(spec)
    result.update(memory_record())
    if torch.cuda.is_available() and spec.shape.device == "cuda":
        result["device_name"] = torch.cuda.get_device_name(0)
    result.update(
        name=spec.name,
        spec=spec.to_json(),
        threads=torch.get_num_threads(),
        tokens_per_s=spec.shape.tokens_per_step / result["step_s"],
    )
    print("BENCH-RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
