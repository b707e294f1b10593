"""Completion-only sequence log-probabilities: the quantity every DPO-family loss is built from.

``log pi(y | x) = sum_t log pi(y_t | x, y_<t)`` over the completion tokens only (paper Eq. 3, where it enters
the implicit reward ``beta * log pi_theta(y|x) / pi_ref(y|x)``). This is the hot path of training, so the
forward asks the model for the needed positions only, never materialises a full-vocabulary log-softmax,
and by default never holds those positions' logits at once either: the LM head runs a chunk of tokens at
a time (:mod:`popalign.modeling.chunked_head`, ``training.logps_chunk_size``).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor, nn


def _innermost(model: nn.Module) -> nn.Module:
    """The module whose ``forward`` finally runs: unwraps DDP/DeepSpeed (``.module``) and peft wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        inner = getattr(model, "module", None)
        if inner is not None and hasattr(inner, "forward"):
            model = inner
            continue
        if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
            model = model.get_base_model()
            continue
        break
    return model


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    # Wrappers (peft, DDP) pass **kwargs on to the wrapped model, so the innermost signature decides. The
    # instance's forward is inspected, not the class's: accelerate and others replace it per instance.
    params = inspect.signature(_innermost(model).forward).parameters
    return "logits_to_keep" in params


def _keeps_positions(model: nn.Module) -> bool:
    """Whether ``logits_to_keep`` may be a (B, K) tensor of positions (models built on transformers'
    ``slice_logits_to_keep``); otherwise it is an int: the last K positions."""
    import sys

    module = sys.modules.get(type(_innermost(model)).__module__)
    return hasattr(module, "slice_logits_to_keep")


def masked_token_logps(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """``log softmax(logits)[target]`` per position in float32, 0 where ``mask`` is False.

    Args:
        logits: (N, K, V) logits of the positions that predict ``targets``.
        targets: (N, K) token ids; any id may sit where ``mask`` is False (padding, -100).
        mask: (N, K) bool.

    Returns:
        (N, K) float32. ``logit[target] - logsumexp(logits)``: no (N, K, V) log-softmax is materialised.
    """
    import torch

    logits = logits.float()
    targets = targets.masked_fill(~mask, 0)
    target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (target_logits - torch.logsumexp(logits, dim=-1)) * mask


def _row_spans(mask: Tensor) -> tuple[Tensor, int]:
    """Per row the first completion column (or 1 for rows without one) and the widest span of completion
    columns, ``last - first + 1``, over the batch."""
    import torch

    seq_len = mask.shape[1]
    cols = torch.arange(seq_len, device=mask.device)[None, :]
    has = mask.any(dim=1)
    first = torch.where(mask, cols, seq_len).amin(dim=1)
    last = torch.where(mask, cols, -1).amax(dim=1)
    span = int((last - first + 1).clamp(min=0).max()) if bool(has.any()) else 1
    return torch.where(has, first, 1), max(span, 1)


def completion_logps(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    *,
    average: bool = False,
) -> Tensor:
    """Sum (or mean) of the completion tokens' log-probabilities, one number per sequence.

    Args:
        model: a causal LM (transformers, possibly wrapped by peft / DDP).
        input_ids: (B, T) right-padded ``prompt + completion`` token ids.
        attention_mask: (B, T), 1 on real tokens.
        completion_mask: (B, T), 1 where token t is a completion token to score. Token 0 cannot be scored
            (nothing precedes it). Padding is excluded even if marked, via ``attention_mask``.
        average: divide by the number of completion tokens (length-normalised log-prob).

    Returns:
        (B,) float32: ``sum_t completion_mask[b,t] * log pi(input_ids[b,t] | input_ids[b,<t])``.

    Only the logits that predict completion tokens are computed (``logits_to_keep``): per row when the
    model takes positions and the prompts differ in length, else from the batch's first completion
    position on. Each token's log-prob is ``logit[target] - logsumexp(logits)`` in float32, from the
    chunked head (:func:`popalign.modeling.chunked_head.scored_logps`) unless it is off or cannot see
    the model's head.
    """
    mask = completion_mask.bool() & attention_mask.bool()
    if mask[:, 0].any():
        raise ValueError("completion_mask marks token 0, which has no context to be scored from")
    seq_len = input_ids.shape[1]
    if seq_len < 2:
        raise ValueError("sequences need at least two tokens: a prompt token and a completion token")
    columns = mask.any(dim=0).nonzero()
    first = int(columns[0]) if len(columns) else seq_len - 1

    if _accepts_logits_to_keep(model) and _keeps_positions(model):
        starts, span = _row_spans(mask)
        # Per-row positions pay off only when they drop columns the batch-wide slice would keep.
        if span < seq_len - first:
            return _per_row_logps(model, input_ids, attention_mask, mask, starts, span, average)

    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if _accepts_logits_to_keep(model):
        # Logits at positions first-1 .. T-1, i.e. the last T-first+1 positions; the last one is unused.
        kwargs["logits_to_keep"] = seq_len - first + 1
    # Position p predicts token p+1: the logits of positions first-1 .. T-2 score targets first .. T-1.
    window = slice(-(seq_len - first + 1), -1)
    token_logps = kept_token_logps(model, kwargs, window, input_ids[:, first:], mask[:, first:])
    return _reduce(token_logps, mask, average)


def kept_token_logps(model: nn.Module, forward_kwargs: dict, window: slice, targets: Tensor, mask: Tensor):
    """(B, K) float32 log-probs of ``targets`` (B, K) where ``mask`` holds, 0 elsewhere, predicted by
    ``model(**forward_kwargs).logits[:, window]``: through the chunked head where it applies, else from
    the logits."""
    from popalign.modeling.chunked_head import scored_logps

    token_logps = scored_logps(model, _innermost(model), forward_kwargs, window, targets, mask)
    if token_logps is not None:
        return token_logps
    logits = model(**forward_kwargs).logits[:, window]
    return masked_token_logps(logits, targets, mask)


def _per_row_logps(model, input_ids, attention_mask, mask, starts, span, average) -> Tensor:
    """Logits only at each row's completion positions: (B, span) instead of (B, T - first + 1)."""
    import torch

    last = input_ids.shape[1] - 1
    raw = starts[:, None] + torch.arange(span, device=input_ids.device)[None, :]
    # A row starting late runs past the end; its clamped duplicates of the last column must not count.
    targets = raw.clamp(max=last)
    valid = mask.gather(1, targets) & (raw <= last)
    kwargs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "use_cache": False,
        "logits_to_keep": targets - 1,
    }
    token_logps = kept_token_logps(model, kwargs, slice(None), input_ids.gather(1, targets), valid)
    return _reduce(token_logps, mask, average)


def _reduce(token_logps: Tensor, mask: Tensor, average: bool) -> Tensor:
    total = token_logps.sum(dim=-1)
    if average:
        return total / mask.sum(dim=-1).clamp(min=1)
    return total


def sequence_scores(reward_model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(B,) scalar rewards ``r(x, y)`` of a sequence-classification model (its ``logits[:, 0]``, Eq. 2).

    ``input_ids``/``attention_mask`` are (B, T) right-padded. The model pools the last token that is not
    ``config.pad_token_id``, so the pad id must not also end real sequences (use a pad token distinct from
    the end-of-turn token, as :func:`~popalign.modeling.tokenizer.build_local_tokenizer` does).
    """
    out = reward_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.logits[:, 0].float()
