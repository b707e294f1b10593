"""Token log-probs straight from the final hidden states and the LM head, a chunk of tokens at a time.

``log pi(y_t | ...) = logit[y_t] - logsumexp(logits)`` with ``logits = h W^T + b`` needs the (N, V) logits
only one row at a time, yet computing them through the model's LM head materialises all of them at once
(the (B, K, V) tensor that, with a 128k vocabulary and 2k-token sequences, is larger than the model) and
autograd keeps them, in float32, for the backward. :func:`linear_token_logps` computes them ``chunk``
tokens at a time, keeps only the hidden states, targets and each token's logsumexp, and recomputes each
chunk's logits in the backward: the same maths as the full-logits path (bit for bit when one chunk holds
every token, else to float32 rounding), in ``chunk x V`` extra memory.

:func:`scored_logps` runs a causal LM so that its head computes nothing: a pre-hook on the LM head module
hands it an empty slice of the hidden states, and a forward hook computes the chunked log-probs of the
scored positions with the module's own weight *inside* the module's call. The model's own forward
(through peft, DDP, FSDP or DeepSpeed wrappers) therefore runs unchanged, and sharded weights are
gathered exactly when the plain head would have them. Heads it cannot see as one ``nn.Linear`` (a LoRA
adapter on the head, logit soft-capping or scaling) take the full-logits path, said once per reason.

On CUDA, Liger-Kernel's fused linear cross-entropy (the ``liger`` extra) replaces the torch loop when it
is installed and takes per-token gradients (its ``reduction="none"`` backward); else the torch loop runs.
"""

from __future__ import annotations

import functools
import inspect
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

    from torch import Tensor, nn

# Logits elements per chunk when the chunk size is automatic: 64 MiB in float32 (4,096 tokens at vocab
# 4,096, 512 at 32,000, 130 at 128,256).
AUTO_CHUNK_ELEMENTS = 2**24

# Config fields of transformers models that change logits after the head's matmul; a model that sets
# one to a value other than the neutral one keeps the full-logits path.
_LOGIT_TRANSFORMS = {"final_logit_softcapping": None, "logit_scale": None, "logits_scaling": 1.0}

_chunk_setting: int | None = None
_reported: set[str] = set()
_kernels_used: set[str] = set()


def set_chunk_size(tokens: int | None) -> None:
    """The process-wide chunk size (``training.logps_chunk_size``): tokens per chunk, ``None`` for
    automatic (:data:`AUTO_CHUNK_ELEMENTS` logits per chunk), 0 for the full-logits path."""
    global _chunk_setting
    if tokens is not None and tokens < 0:
        raise ValueError(f"logps_chunk_size must be >= 0 or null, got {tokens}")
    _chunk_setting = tokens


def chunk_size_setting() -> int | None:
    return _chunk_setting


def chunk_tokens(vocab_size: int, setting: int | None) -> int:
    """Tokens per chunk for a head of ``vocab_size`` rows (``setting`` > 0, or automatic when None)."""
    if setting:
        return setting
    return max(1, AUTO_CHUNK_ELEMENTS // max(vocab_size, 1))


def kernels_used() -> set[str]:
    """The kernels that computed log-probs in this process so far: "liger", "chunked" (benchmarks)."""
    return set(_kernels_used)


def report_once(reason: str) -> None:
    """Print ``reason`` on stderr the first time it is given in this process."""
    if reason not in _reported:
        _reported.add(reason)
        print(f"popalign: {reason}", file=sys.stderr)


# ---- the head ---------------------------------------------------------------------------------------


def plain_head(inner: nn.Module) -> tuple[nn.Module | None, str | None]:
    """``(head, None)`` if ``inner``'s LM head is one plain ``nn.Linear`` whose output is the logits, else
    ``(None, why)``. ``inner`` is the innermost causal LM (no peft or DDP wrapper)."""
    import torch

    getter = getattr(inner, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    name = type(inner).__name__
    if head is None:
        return None, f"{name} has no output embeddings"
    if type(head) is not torch.nn.Linear:
        kind = f"{type(head).__module__}.{type(head).__qualname__}"
        return None, f"the LM head of {name} is a {kind}, not a plain torch.nn.Linear"
    config = getattr(inner, "config", None)
    for key, neutral in _LOGIT_TRANSFORMS.items():
        value = getattr(config, key, neutral)
        if value != neutral:
            return None, f"{name} transforms its logits after the head ({key}={value})"
    return head, None


# ---- the chunked function ---------------------------------------------------------------------------


def _compute_dtype(hidden: Tensor, weight: Tensor):
    """The dtype the head's matmul runs in: autocast's where it is on (as for ``nn.Linear``), else the
    weight's."""
    import torch

    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


@functools.cache
def _chunked_function():
    """The autograd function, built on first use (torch is imported inside functions)."""
    import torch

    class ChunkedLinearLogps(torch.autograd.Function):
        """(N,) float32 ``logit[target] - logsumexp(logits)`` of ``logits = hidden @ weight.T + bias``."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, chunk, dtype):
            out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
            lse = torch.empty_like(out)
            logits = None
            w = weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            with torch.autocast(hidden.device.type, enabled=False):
                for s in range(0, hidden.shape[0], chunk):
                    logits = torch.nn.functional.linear(hidden[s : s + chunk].to(dtype), w, b).float()
                    # The full-logits path's formula, so that a token's value is the same on both paths
                    # whatever the batch around it (log_softmax's CPU kernel rounds by batch shape).
                    lse[s : s + chunk] = torch.logsumexp(logits, dim=-1)
                    picked = logits.gather(1, targets[s : s + chunk, None]).squeeze(1)
                    out[s : s + chunk] = picked - lse[s : s + chunk]
            # All tokens in one chunk: its probabilities (chunk x V at most) are kept, not recomputed.
            one_chunk = logits is not None and hidden.shape[0] <= chunk
            kept = logits.sub_(lse[:, None]).exp_() if one_chunk and any(ctx.needs_input_grad[:3]) else None
            ctx.save_for_backward(hidden, weight, bias, targets, lse, kept)
            ctx.chunk, ctx.dtype = chunk, dtype
            return out

        @staticmethod
        def backward(ctx, grad_out):
            hidden, weight, bias, targets, lse, kept = ctx.saved_tensors
            chunk, dtype = ctx.chunk, ctx.dtype
            need_h, need_w, need_b = ctx.needs_input_grad[:3]
            w = weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            grad_h = torch.empty_like(hidden) if need_h else None
            # Chunks' weight gradients are summed in float32: a bfloat16 running sum would round each time.
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
            grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
            with torch.autocast(hidden.device.type, enabled=False):
                for s in range(0, hidden.shape[0], chunk):
                    h = hidden[s : s + chunk].to(dtype)
                    go = grad_out[s : s + chunk].float()
                    # d logp / d logits = onehot(target) - softmax(logits)
                    if kept is None:
                        g = torch.nn.functional.linear(h, w, b).float()
                        g.sub_(lse[s : s + chunk, None]).exp_().mul_(-go[:, None])
                    else:
                        g = kept * -go[:, None]  # a new tensor: the saved one survives retain_graph
                    g.scatter_add_(1, targets[s : s + chunk, None], go[:, None])
                    g = g.to(dtype)
                    if need_h:
                        grad_h[s : s + chunk] = (g @ w).to(hidden.dtype)
                    if need_w and dtype == torch.float32:
                        grad_w.addmm_(g.t(), h)  # in place: no (V, H) product per chunk
                    elif need_w:
                        grad_w += g.t() @ h  # float32 sum of per-chunk products in the matmul's dtype
                    if need_b:
                        grad_b += g.float().sum(0)
            grad_w = None if grad_w is None else grad_w.to(weight.dtype)
            grad_b = None if grad_b is None else grad_b.to(bias.dtype)
            return grad_h, grad_w, grad_b, None, None, None

    return ChunkedLinearLogps


def _liger_function():
    """Liger-Kernel's fused linear cross-entropy function if installed and its ``reduction="none"``
    backward takes per-token gradients (a per-sequence DPO weight differs per token), else None."""
    try:
        from liger_kernel.ops import fused_linear_cross_entropy as flce
    except ImportError:
        return None
    forward = getattr(flce, "fused_linear_cross_entropy_forward", None)
    if forward is None or "token_grad_output" not in inspect.signature(forward).parameters:
        return None
    return getattr(flce, "LigerFusedLinearCrossEntropyFunction", None)


def select_kernel(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[str, str]:
    """``("liger", why)`` where Liger's fused kernel takes the shape, else ``("chunked", why not)``."""
    import torch

    if hidden.device.type != "cuda":
        return "chunked", f"Liger-Kernel runs on CUDA only (device {hidden.device.type})"
    if _liger_function() is None:
        return "chunked", "Liger-Kernel with per-token gradients is not installed (extra 'liger')"
    supported = (torch.float16, torch.bfloat16, torch.float32)
    if hidden.dtype not in supported or hidden.dtype != weight.dtype or torch.is_autocast_enabled("cuda"):
        return "chunked", f"Liger-Kernel needs hidden and head of one dtype without autocast ({hidden.dtype})"
    if bias is not None and bias.dtype != weight.dtype:
        return "chunked", "Liger-Kernel needs the head's bias in the weight's dtype"
    return "liger", "Liger-Kernel fused linear cross-entropy"


def linear_token_logps(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    chunk: int,
    valid: Tensor | None = None,
) -> Tensor:
    """(N,) float32 log-probs of ``targets`` (N,) under ``softmax(hidden @ weight.T + bias)``.

    Args:
        hidden: (N, H) final hidden states of the scored positions.
        weight: (V, H) LM head weight; bias: (V,) or None.
        targets: (N,) token ids in ``[0, V)``.
        chunk: tokens per chunk of the torch path (the ``chunk x V`` logits are all it holds at once).
        valid: (N,) bool, rows whose value is used; the others (padding) may hold anything and must get
            no upstream gradient. None: all rows.
    """
    kernel, _ = select_kernel(hidden, weight, bias)
    _kernels_used.add(kernel)
    if kernel == "liger" and hidden.shape[0] > 0:
        import torch

        function = _liger_function()
        if valid is not None:
            targets = targets.masked_fill(~valid, -100)  # Liger's ignore_index: no loss, no gradient
        # (input, weight, target, bias, ce_weight, ignore_index, lse_square_scale, label_smoothing,
        # reduction, softcap, return_z_loss, accum_dtype)
        args = (hidden.contiguous(), weight, targets, bias, None, -100, 0.0, 0.0, "none", None, False)
        out = function.apply(*args, torch.float32)
        loss = out[0] if isinstance(out, tuple) else out
        return -loss.float()
    dtype = _compute_dtype(hidden, weight)
    return _chunked_function().apply(hidden, weight, bias, targets, chunk, dtype)


# ---- running a model through its head ---------------------------------------------------------------


@contextmanager
def _scoring_head(
    head: nn.Module, window: slice, mask: Tensor, targets: Tensor, chunk: int
) -> Iterator[dict]:
    """While active, ``head``'s call returns (B, K) log-probs of ``targets`` (B, K) instead of logits.

    The head's input (B, K', H) is scored row for row as the head would compute its logits (the same
    matmul rows, padding included, so each token's value does not depend on the batch around it beyond
    what the full logits do); ``[:, window]`` of those rows must be ``mask``'s (B, K).
    """
    import torch

    state: dict[str, Any] = {"calls": 0}

    def before(module, args):
        state["hidden"] = args[0]
        return (args[0][:, :0],) + tuple(args[1:])

    def after(module, args, output):
        hidden = state.pop("hidden")
        state["calls"] += 1
        keep = torch.zeros(hidden.shape[:2], dtype=torch.bool, device=mask.device)
        if keep[:, window].shape != mask.shape:
            raise RuntimeError(
                f"the LM head saw hidden states {tuple(hidden.shape[:2])} where {tuple(mask.shape)} were "
                "expected; set training.logps_chunk_size=0 for this model"
            )
        keep[:, window] = mask
        ids = torch.zeros(keep.shape, dtype=torch.long, device=mask.device)
        ids[:, window] = targets.masked_fill(~mask, 0)
        rows = hidden.reshape(-1, hidden.shape[-1])
        logps = linear_token_logps(rows, module.weight, module.bias, ids.view(-1), chunk, keep.view(-1))
        return logps.view(keep.shape)[:, window]

    pre = head.register_forward_pre_hook(before)
    # First among the forward hooks, so that a DeepSpeed ZeRO-3 release hook runs after the weight's use
    # and wraps these outputs for its re-gather in the backward.
    post = head.register_forward_hook(after, prepend=True)
    try:
        yield state
    finally:
        pre.remove()
        post.remove()


def scored_logps(
    model: nn.Module,
    inner: nn.Module,
    forward_kwargs: dict[str, Any],
    window: slice,
    targets: Tensor,
    mask: Tensor,
) -> Tensor | None:
    """(B, K) float32 log-probs of ``targets`` (B, K) where ``mask`` (B, K) holds, 0 elsewhere; the logits
    that predict them are ``model(**forward_kwargs).logits[:, window]``.

    None when the chunked head does not apply (chunking off, or a head it cannot see: said once); the
    caller then takes the full-logits path.
    """

    setting = chunk_size_setting()
    if setting == 0:
        return None
    head, why = plain_head(inner)
    if head is None:
        report_once(f"log-probs from full logits: {why}")
        return None
    chunk = chunk_tokens(head.weight.shape[0], setting)
    with _scoring_head(head, window, mask, targets, chunk) as state:
        logps = model(**forward_kwargs).logits
    if state["calls"] != 1 or logps.shape != mask.shape:
        raise RuntimeError(
            f"{type(inner).__name__} called its LM head {state['calls']} times or changed its output; set "
            "training.logps_chunk_size=0 for this model"
        )
    return logps * mask
