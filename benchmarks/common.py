"""What every benchmark shares: the shapes, the random model, the synthetic data, the step timer, memory.

The shared configuration (docs/benchmarks.md): a randomly initialised Llama (vocab 4096, hidden 256,
intermediate 688, 4 layers, 8 heads, 4 key-value heads), float32 on CPU, 8 preference pairs per step,
prompt 64 tokens, chosen and rejected 192 tokens each. Every implementation sees the same token ids, the
same initial weights and the same optimiser settings.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

# Benchmarks run offline; the Hub is never contacted (nor telemetry sent).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EOS_ID, PAD_ID, FIRST_WORD_ID = 0, 1, 2


@dataclass(frozen=True)
class Shape:
    """Model and batch shape of one benchmark configuration."""

    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    batch_size: int = 8
    prompt_len: int = 64
    completion_len: int = 192
    dtype: str = "float32"
    device: str = "cpu"

    @property
    def max_length(self) -> int:
        return self.prompt_len + self.completion_len

    @property
    def tokens_per_step(self) -> int:
        """Tokens of the preference pairs one optimiser step trains on: chosen and rejected sequences."""
        return 2 * self.batch_size * self.max_length


PRESETS: dict[str, Shape] = {
    "cpu": Shape(),
    # A ~1.1B-parameter Llama (TinyLlama-like widths) at sequence length 2048, for one H200.
    "h200": Shape(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        batch_size=8,
        prompt_len=512,
        completion_len=1536,
        dtype="bfloat16",
        device="cuda",
    ),
    # The code path of the h200 preset at a size a CPU runs in seconds (dry runs).
    "tiny": Shape(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        batch_size=4,
        prompt_len=16,
        completion_len=32,
    ),
}
# The same models with a Llama-3-sized vocabulary, where the LM head's logits outgrow the model.
PRESETS["h200-v128k"] = replace(PRESETS["h200"], vocab_size=128256)
PRESETS["tiny-v128k"] = replace(PRESETS["tiny"], vocab_size=128256)


@dataclass
class RunSpec:
    """One measured configuration: an implementation, a method and its options on a :class:`Shape`."""

    name: str
    impl: str  # "trl" or "popalign"
    method: str = "dpo"  # popalign method name ("dpo", "dpo-pop")
    lora: bool = False
    live_reference: bool = False
    prefix_sharing: bool | None = None  # None: popalign's default
    margin_refresh_steps: int = 1
    weak_pool: int = 0  # >0: weak preferences drawn from this many rows (a warm margin cache)
    weak_after_strong: bool = False  # the order before the memory lever: strong graph first, then weak
    logps_chunk_size: int | None = None  # popalign's training.logps_chunk_size (0: full logits)
    gradient_checkpointing: bool = False  # both trainers
    optim: str = "adamw_torch_fused"  # both trainers' optimiser (transformers' and popalign's default)
    warmup: int = 3
    steps: int = 10
    seed: int = 0
    learning_rate: float = 1e-6
    threads: int | None = None
    shape: Shape = field(default_factory=Shape)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSpec:
        data = dict(data)
        shape = Shape(**data.pop("shape"))
        return cls(shape=shape, **data)

    def with_shape(self, **changes: Any) -> RunSpec:
        return replace(self, shape=replace(self.shape, **changes))


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def llama_config(shape: Shape):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=max(2048, 2 * shape.max_length),
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=None,
        tie_word_embeddings=False,
    )


def build_model(shape: Shape, seed: int = 0):
    """The randomly initialised Llama of ``shape``: one seed, one set of weights, in every process.

    Built directly on ``shape.device`` in ``shape.dtype``, so a 1B model never passes through CPU memory.
    """
    import torch
    from transformers import LlamaForCausalLM

    config = llama_config(shape)
    config._attn_implementation = "sdpa"
    devices = [torch.cuda.current_device()] if shape.device == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(shape.device):
        torch.manual_seed(seed)
        model = LlamaForCausalLM._from_config(config, dtype=torch_dtype(shape.dtype))
    model.generation_config.pad_token_id = PAD_ID
    return model


def parameter_counts(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()
    return {"total": total, "non_embedding": total - embed - head, "lm_head": head}


def synthetic_ids(shape: Shape, n: int, seed: int = 0) -> tuple[list, list, list]:
    """``n`` random-id preferences: prompts of ``prompt_len``, responses of ``completion_len`` (eos last)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = (FIRST_WORD_ID, shape.vocab_size)
    prompts = rng.integers(*words, size=(n, shape.prompt_len)).tolist()
    body = shape.completion_len - 1
    chosen = [row + [EOS_ID] for row in rng.integers(*words, size=(n, body)).tolist()]
    rejected = [row + [EOS_ID] for row in rng.integers(*words, size=(n, body)).tolist()]
    return prompts, chosen, rejected


def word_tokenizer(vocab_size: int):
    """A whitespace word-level tokenizer: token ``w<i>`` is id ``i``, so text maps to chosen ids exactly."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"</s>": EOS_ID, "<pad>": PAD_ID}
    vocab.update({f"w{i}": i for i in range(FIRST_WORD_ID, vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<pad>", padding_side="right"
    )


def ids_to_text(ids: list[int]) -> str:
    return " ".join("</s>" if i == EOS_ID else f"w{i}" for i in ids)


class StepTimer:
    """Seconds between consecutive optimiser-step ends: the whole loop, data loading included.

    Added to a Trainer last, so it fires after every other step-end callback (e.g. the Polyak update).
    """

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if timer.last is None:
                    timer.last = time.perf_counter()
                    timer.last_cpu = time.process_time()

            def on_step_end(self, args, state, control, **kwargs):
                timer.mark()

        self.callback = _Callback()
        self.last: float | None = None
        self.last_cpu = 0.0
        self.intervals: list[float] = []
        self.cpu_intervals: list[float] = []

    def mark(self) -> None:
        _synchronize()  # GPU work is asynchronous: a step ends when its kernels have finished
        now, cpu = time.perf_counter(), time.process_time()
        if self.last is not None:
            self.intervals.append(now - self.last)
            self.cpu_intervals.append(cpu - self.last_cpu)
        self.last, self.last_cpu = now, cpu

    def summary(self, warmup: int) -> dict[str, Any]:
        timed = self.intervals[warmup:]
        if not timed:
            raise RuntimeError(f"no step was timed ({len(self.intervals)} steps, {warmup} warm-up)")
        return {
            "step_s": statistics.median(timed),
            "step_s_min": min(timed),
            "step_s_max": max(timed),
            "steps_timed": len(timed),
            # CPU seconds of this process per step: less sensitive than wall time to other processes
            # competing for the cores (with one thread; more threads add their spin-waits).
            "cpu_s": statistics.median(self.cpu_intervals[warmup:]),
            "intervals": [round(t, 4) for t in self.intervals],
        }


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _synchronize() -> None:
    if _cuda():
        import torch

        torch.cuda.synchronize()


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux's ``VmHWM`` first: it starts afresh at ``exec``. ``ru_maxrss`` does not: a child started by a
    large parent reports at least the parent's size at the fork, so it serves only where ``/proc`` is
    missing (on Linux it is KiB).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def memory_record() -> dict[str, float]:
    out = {"peak_rss_mib": round(peak_rss_mib(), 1)}
    if _cuda():
        import torch

        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def model_flops_per_step(
    shape: Shape, counts: dict[str, int], *, weak_pair: bool = False, lora: bool = False
) -> float:
    """Model FLOPs of one optimiser step on the plain layout, the MFU numerator.

    Forward: ``2 * N * tokens`` for the non-embedding weights, ``2 * vocab * hidden`` per completion
    position for the LM head, and causal attention ``2 * 2 * layers * hidden * T^2 / 2`` per sequence.
    Backward: twice the forward for full fine-tuning, once for LoRA (no weight gradients of the frozen
    base). DPO-PoP adds one forward of the weak pair. Work an implementation avoids (prefix sharing)
    still counts, so MFU compares implementations on the same work.
    """
    rows = 2 * shape.batch_size
    dense = 2 * counts["non_embedding"] * rows * shape.max_length
    head = 2 * counts["lm_head"] * rows * shape.completion_len
    attention = 2 * shape.num_hidden_layers * shape.hidden_size * rows * shape.max_length**2
    forward = dense + head + attention
    step = forward * (2 if lora else 3)
    return step + forward if weak_pair else step
