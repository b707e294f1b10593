"""Padding-free batches: several preferences' sequences packed into a few rows, no padding between them.

A padded batch of ``B`` preferences is ``2B`` rows as wide as its longest sequence; on real preference
data (replies from a few words to thousands of characters) most of it is padding, which every layer
computes. Here the ``2B`` sequences ``prompt + chosen`` / ``prompt + rejected`` are laid end to end in rows
as wide as the longest sequence (first-fit decreasing, so a row holds as many as fit). Position ids restart
at 0 for each sequence and no attention mask is passed: transformers' mask utilities then keep attention
inside each sequence (a block-diagonal causal mask for ``sdpa``/``eager``; ``cu_seqlens`` for
flash-attention's varlen kernels). Every completion token therefore sees exactly the context it has in its
own padded row, and the log-probs (paper Eq. 3's ``log pi(y|x)``) equal the padded path's to float32
rounding. Only the row tails are padding (each tail is one more short "sequence", which no real token
sees).

A batch in this layout holds ``input_ids``, ``position_ids``, ``completion_mask`` and ``sequence_index``
``(R, T)`` (which of the ``2B`` sequences each column belongs to; -1 on a row's padding tail) and
``sequence_lengths`` ``(2B,)``; sequence ``i`` is output ``i`` of :func:`packed_logps`, chosen rows first
as in :func:`~popalign.modeling.batching.pair_tensors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from popalign.modeling.logps import _innermost, _keeps_positions, kept_token_logps

if TYPE_CHECKING:
    from torch import Tensor, nn

    from popalign.data.tokenize import TokenizedPreferences

# Attention implementations whose transformers integration separates packed sequences by position ids.
PACKED_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")

# Keys of one side (strong or weak pair) of a batch in this layout, row-shaped first.
PACKED_ROW_KEYS = ("input_ids", "position_ids", "completion_mask", "sequence_index")


def padding_free_unsupported(model: nn.Module) -> str | None:
    """Why ``model`` cannot run packed rows, or None when it can: a transformers causal LM built on the
    shared mask utilities, with an attention kernel that honours packed position ids, whose forward takes
    per-row ``logits_to_keep`` positions."""
    import sys

    inner = _innermost(model)
    config = getattr(inner, "config", None)
    kernel = getattr(config, "_attn_implementation", None)
    if kernel not in PACKED_ATTENTION:
        return f"attention {kernel!r} is not one of {', '.join(PACKED_ATTENTION)}"
    # Models whose masks do not come from transformers' masking_utils would attend across sequences.
    module = sys.modules.get(type(inner).__module__)
    if not hasattr(module, "create_causal_mask"):
        return f"{type(inner).__name__} does not build its masks with transformers' create_causal_mask"
    if not _keeps_positions(model):
        return f"{type(inner).__name__} does not take per-row logits_to_keep positions"
    return None


def pack_rows(
    sequences: list[list[int]], prompt_lengths: list[int], pad_id: int, multiple_of: int | None = None
) -> dict[str, Tensor]:
    """``sequences`` (each ``prompt + completion``) packed into rows as wide as the longest one.

    Args:
        sequences: token lists; sequence ``i`` keeps index ``i`` in ``sequence_index``.
        prompt_lengths: per sequence, the leading tokens that are not scored (at least 1).
        pad_id: the id of a row's padding tail.
        multiple_of: round the row width up to a multiple of this.
    """
    import torch

    if any(p < 1 for p in prompt_lengths):
        raise ValueError("padding-free rows need a prompt of at least one token in every sequence")
    width = max(len(s) for s in sequences)
    if multiple_of:
        width = -(-width // multiple_of) * multiple_of
    rows: list[list[int]] = []  # sequence numbers per row
    room: list[int] = []
    for i in sorted(range(len(sequences)), key=lambda i: -len(sequences[i])):
        row = next((r for r, free in enumerate(room) if free >= len(sequences[i])), None)
        if row is None:
            rows.append([])
            room.append(width)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= len(sequences[i])
    shape = (len(rows), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    completion = torch.zeros(shape, dtype=torch.long)
    index = torch.full(shape, -1, dtype=torch.long)
    for r, members in enumerate(rows):
        col = 0
        for i in members:
            n = len(sequences[i])
            ids[r, col : col + n] = torch.tensor(sequences[i], dtype=torch.long)
            positions[r, col : col + n] = torch.arange(n)
            completion[r, col + prompt_lengths[i] : col + n] = 1
            index[r, col : col + n] = i
            col += n
        # The tail restarts its positions too, so that it is a sequence of its own which nothing sees.
        positions[r, col:] = torch.arange(width - col)
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    return {
        "input_ids": ids,
        "position_ids": positions,
        "completion_mask": completion,
        "sequence_index": index,
        "sequence_lengths": lengths,
    }


def pack_pairs(
    tokenized: TokenizedPreferences, idx: list[int], pad_id: int, multiple_of: int | None = None
) -> dict[str, Tensor]:
    """The preferences ``idx`` as packed rows: sequences ``:B`` are ``prompt + chosen``, ``B:``
    ``prompt + rejected`` (the order of :func:`~popalign.modeling.batching.pair_tensors`' rows)."""
    prompts = [tokenized.prompt_ids[i] for i in idx]
    sequences = [p + tokenized.chosen_ids[i] for p, i in zip(prompts, idx, strict=True)]
    sequences += [p + tokenized.rejected_ids[i] for p, i in zip(prompts, idx, strict=True)]
    return pack_rows(sequences, [len(p) for p in prompts + prompts], pad_id, multiple_of)


def unpack(tensors: dict[str, Tensor]) -> tuple[list[list[int]], list[int]]:
    """The sequences of packed rows and their prompt lengths, in sequence order."""
    n = int(tensors["sequence_lengths"].shape[0])
    ids, index = tensors["input_ids"].cpu(), tensors["sequence_index"].cpu()
    completion = tensors["completion_mask"].cpu()
    sequences, prompts = [], []
    for i in range(n):
        where = index == i
        sequences.append(ids[where].tolist())
        prompts.append(int(where.sum() - completion[where].sum()))
    return sequences, prompts


def select_sequences(tensors: dict[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
    """Packed rows of the sequences ``keep`` (a (k,) index) only, renumbered ``0 .. k-1`` in that order."""
    sequences, prompts = unpack(tensors)
    tails = tensors["input_ids"][tensors["sequence_index"] < 0]
    pad_id = int(tails[0]) if len(tails) else 0  # the rows' own padding id (no real token sees it)
    order = keep.tolist()
    packed = pack_rows([sequences[i] for i in order], [prompts[i] for i in order], pad_id)
    device = tensors["input_ids"].device
    return {k: v.to(device) for k, v in packed.items()}


def sequence_sums(values: Tensor, sequence_index: Tensor, n: int) -> Tensor:
    """(n,) per-sequence sums of ``values`` (R, T) (0 on padding tails), by ``sequence_index`` (R, T)."""
    import torch

    where = sequence_index >= 0
    out = torch.zeros(n, dtype=values.dtype, device=values.device)
    return out.index_add(0, sequence_index[where], values[where])


def packed_logps(
    model: nn.Module,
    input_ids: Tensor,
    position_ids: Tensor,
    completion_mask: Tensor,
    sequence_index: Tensor,
    n_sequences: int,
    *,
    average: bool = False,
) -> Tensor:
    """(n_sequences,) float32 completion log-probs of packed rows, sequence ``i`` at index ``i``.

    Args:
        model: a causal LM for which :func:`padding_free_unsupported` is None (possibly peft/DDP-wrapped).
        input_ids, position_ids, completion_mask, sequence_index: (R, T), as :func:`pack_rows` makes them.
        n_sequences: how many sequences the rows hold.
        average: divide each sum by its number of completion tokens.

    The same values as :func:`~popalign.modeling.logps.completion_logps` on the sequences' padded rows.
    Only the positions that predict completion tokens reach the LM head (per-row ``logits_to_keep``).
    """
    import torch

    mask = completion_mask.bool() & (sequence_index >= 0)
    if bool((mask & (position_ids == 0)).any()):
        raise ValueError(
            "completion_mask marks a sequence's first token, which has no context to be scored from"
        )
    width = input_ids.shape[1]
    cols = torch.arange(width, device=input_ids.device)[None, :].expand_as(mask)
    # Each row's completion columns first, in order; the rest (value `width`) pads rows to one count.
    ordered = torch.where(mask, cols, width).sort(dim=1).values
    count = max(int(mask.sum(dim=1).max()), 1)
    ordered = ordered[:, :count]
    valid = ordered < width
    targets = ordered.clamp(max=width - 1)
    kwargs = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": None,
        "use_cache": False,
        # A completion token never starts a sequence (checked above), so its predictor is in its sequence.
        "logits_to_keep": (targets - 1).clamp(min=0),
    }
    token_logps = kept_token_logps(model, kwargs, slice(None), input_ids.gather(1, targets), valid)
    owner = torch.where(valid, sequence_index.gather(1, targets), -1)
    sums = sequence_sums(token_logps, owner, n_sequences)
    if average:
        counts = sequence_sums(mask.to(sums.dtype), sequence_index, n_sequences)
        return sums / counts.clamp(min=1)
    return sums
