"""Completion-only sequence log-probabilities: the quantity every DPO-family loss is built from.

``log pi(y | x) = sum_t log pi(y_t | x, y_<t)`` over the completion tokens only (paper Eq. 3, where it enters
the implicit reward ``beta * log pi_theta(y|x) / pi_ref(y|x)``). This is the hot path of training, so the
forward asks the model for logits of the needed positions only and never materialises a full-vocabulary
log-softmax.
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

    Only logits from the position before the batch's first completion token onwards are computed
    (``logits_to_keep``), and each token's log-prob is ``logit[target] - logsumexp(logits)`` in float32.
    """
    import torch

    mask = completion_mask.bool() & attention_mask.bool()
    if mask[:, 0].any():
        raise ValueError("completion_mask marks token 0, which has no context to be scored from")
    seq_len = input_ids.shape[1]
    if seq_len < 2:
        raise ValueError("sequences need at least two tokens: a prompt token and a completion token")
    columns = mask.any(dim=0).nonzero()
    first = int(columns[0]) if len(columns) else seq_len - 1

    kwargs = {}
    if _accepts_logits_to_keep(model):
        # Logits at positions first-1 .. T-1, i.e. the last T-first+1 positions; the last one is unused.
        kwargs["logits_to_keep"] = seq_len - first + 1
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits
    # Position p predicts token p+1: keep the logits of positions first-1 .. T-2 for targets first .. T-1.
    logits = logits[:, -(seq_len - first + 1) : -1].float()
    targets = input_ids[:, first:]
    mask = mask[:, first:]
    # Padding or ignore ids (-100) may sit at masked places; any valid index will do there.
    targets = targets.masked_fill(~mask, 0)

    target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    token_logps = (target_logits - torch.logsumexp(logits, dim=-1)) * mask
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
