"""Prefix sharing: the prompt runs through the model once for both responses of a preference.

The plain layout puts ``prompt + chosen`` and ``prompt + rejected`` in two rows, so the prompt is computed
twice. Here each preference is one row ``[prompt, chosen, rejected, padding]`` with a block attention mask:
chosen tokens see the prompt and the chosen tokens before them, rejected tokens see the prompt and the
rejected tokens before them (never the chosen response), and the rejected tokens' position ids restart
after the prompt. Every completion token therefore sees exactly the context it has in the plain layout,
and the log-probs (paper Eq. 3's ``log pi(y|x)``) are the same up to float rounding; the model does
``len(prompt)`` fewer tokens of work per preference.

The mask is a 4D additive float mask, which transformers' ``sdpa`` and ``eager`` attention take as given;
kernels that ignore such masks (flash-attention) must use the plain layout, see
:func:`prefix_sharing_supported`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from popalign.modeling.logps import _accepts_logits_to_keep, _innermost, _keeps_positions, kept_token_logps

if TYPE_CHECKING:
    from torch import Tensor, nn

# Attention implementations known to apply a custom 4D mask exactly as given.
MASKED_ATTENTION = ("sdpa", "eager")


def prefix_sharing_supported(model: nn.Module) -> bool:
    """Whether ``model`` can run the shared layout: a transformers causal LM with sdpa/eager attention whose
    forward accepts ``position_ids`` and per-row ``logits_to_keep`` positions."""
    inner = _innermost(model)
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) not in MASKED_ATTENTION:
        return False
    return _accepts_logits_to_keep(model) and _keeps_positions(model)


def shared_rows(
    prompts: list[list[int]],
    chosen: list[list[int]],
    rejected: list[list[int]],
    pad_id: int,
    multiple_of: int | None = None,
) -> dict[str, Tensor]:
    """One right-padded row ``prompt + chosen + rejected`` per preference.

    Returns ``input_ids`` (B, L) and ``prompt_lengths``, ``chosen_lengths``, ``rejected_lengths`` (B,),
    from which :func:`shared_prefix_logps` rebuilds positions and the mask.
    """
    import torch

    rows = [p + c + r for p, c, r in zip(prompts, chosen, rejected, strict=True)]
    width = max(len(r) for r in rows)
    if multiple_of:
        width = -(-width // multiple_of) * multiple_of
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return {
        "input_ids": ids,
        "prompt_lengths": torch.tensor([len(p) for p in prompts], dtype=torch.long),
        "chosen_lengths": torch.tensor([len(c) for c in chosen], dtype=torch.long),
        "rejected_lengths": torch.tensor([len(r) for r in rejected], dtype=torch.long),
    }


def _segments(prompt: Tensor, chosen: Tensor, rejected: Tensor, width: int) -> Tensor:
    """(B, L) segment of every column: 0 prompt, 1 chosen, 2 rejected, 3 padding."""
    import torch

    col = torch.arange(width, device=prompt.device)[None, :]
    p, pc, pcr = prompt[:, None], (prompt + chosen)[:, None], (prompt + chosen + rejected)[:, None]
    seg = torch.full((prompt.shape[0], width), 3, dtype=torch.long, device=prompt.device)
    seg = torch.where(col < pcr, 2, seg)
    seg = torch.where(col < pc, 1, seg)
    return torch.where(col < p, 0, seg)


def block_attention_mask(segments: Tensor, dtype) -> Tensor:
    """(B, 1, L, L) additive mask: 0 where query q may attend key k, the dtype's minimum elsewhere.

    Allowed: ``k <= q`` and key in the prompt or in the query's own segment. A padding query sees only
    itself, so no row is fully masked (which would give NaN in softmax) and no real token sees padding.
    """
    import torch

    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    q_seg, k_seg = segments[:, :, None], segments[:, None, :]
    allowed = causal & ((k_seg == 0) | (k_seg == q_seg)) & (q_seg != 3)
    allowed = allowed | torch.eye(width, dtype=torch.bool, device=segments.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _positions(segments: Tensor, chosen: Tensor) -> Tensor:
    """Position ids: columns for prompt and chosen, restarting after the prompt for rejected, 0 on padding."""
    import torch

    col = torch.arange(segments.shape[1], device=segments.device)[None, :].expand_as(segments)
    pos = torch.where(segments == 2, col - chosen[:, None], col)
    return torch.where(segments == 3, 0, pos)


def shared_prefix_logps(
    model: nn.Module,
    input_ids: Tensor,
    prompt_lengths: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    average: bool = False,
) -> Tensor:
    """Completion log-probs of chosen and rejected from one forward of the shared layout.

    Args:
        model: a causal LM for which :func:`prefix_sharing_supported` holds (possibly peft/DDP-wrapped).
        input_ids: (B, L) rows ``prompt + chosen + rejected``, right-padded (:func:`shared_rows`).
        prompt_lengths, chosen_lengths, rejected_lengths: (B,) token counts; prompts need at least one token.
        average: divide each sum by its number of completion tokens.

    Returns:
        (2B,) float32, chosen rows first: the same layout and values as
        :func:`~popalign.modeling.logps.completion_logps` on the plain ``2B`` rows.
    """
    import torch

    if bool((prompt_lengths < 1).any()):
        raise ValueError("prefix sharing needs a prompt of at least one token in every row")
    device = input_ids.device
    p, c, r = (t.to(device) for t in (prompt_lengths, chosen_lengths, rejected_lengths))
    segments = _segments(p, c, r, input_ids.shape[1])
    dtype = _innermost(model).get_input_embeddings().weight.dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    mask = block_attention_mask(segments, dtype)

    # Logits kept: chosen token t (column p+t) is predicted at column p-1+t; rejected token 0 at the
    # prompt's last column p-1, rejected token t>0 (column p+c+t) at column p+c+t-1.
    c_max, r_max = int(c.max()), int(r.max())
    t_c = torch.arange(c_max, device=device)[None, :]
    t_r = torch.arange(r_max, device=device)[None, :]
    last = input_ids.shape[1] - 1
    chosen_targets = (p[:, None] + t_c).clamp(max=last)
    rejected_targets = (p + c)[:, None] + t_r
    rejected_source = torch.where(t_r == 0, p[:, None] - 1, rejected_targets - 1).clamp(max=last)
    keep = torch.cat([chosen_targets - 1, rejected_source], dim=1)
    targets = torch.cat([chosen_targets, rejected_targets.clamp(max=last)], dim=1)
    valid = torch.cat([t_c < c[:, None], t_r < r[:, None]], dim=1)

    kwargs = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "position_ids": _positions(segments, c),
        "logits_to_keep": keep,
        "use_cache": False,
    }
    token_logps = kept_token_logps(model, kwargs, slice(None), input_ids.gather(1, targets), valid)
    chosen_logps = token_logps[:, :c_max].sum(dim=-1)
    rejected_logps = token_logps[:, c_max:].sum(dim=-1)
    if average:
        chosen_logps = chosen_logps / c.clamp(min=1)
        rejected_logps = rejected_logps / r.clamp(min=1)
    return torch.cat([chosen_logps, rejected_logps])
