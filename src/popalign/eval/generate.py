"""Sampling replies from policies on test prompts, written in AlpacaEval's ``model_outputs.json`` layout.

``model_outputs.json`` is a JSON list of ``{"instruction", "output", "generator"}`` records (plus ``id``,
which lets popalign pair two models' replies to the same prompt, and ``kl``), so the same file can go to
external judges.

**KL estimate.** With a reference model, each reply also gets ``kl = sum_t log pi_T(y_t | x, y_<t) -
log pi_ref,T(y_t | x, y_<t)`` over its generated tokens (up to and including the end-of-sequence token),
where ``pi_T`` is the distribution the replies are drawn from, ``softmax(logits / temperature)``, and
``pi_ref,T`` the reference at the same temperature. Averaged over prompts this is the plain Monte Carlo
("k1") estimator of ``KL(pi_T || pi_ref,T)`` over whole replies: unbiased, because the replies are samples
of ``pi_T`` itself; a single reply's value can be negative, the mean cannot be in expectation. It is exact
for ``top_p = 1`` (the default; top-k filtering is switched off so that nothing else truncates the sampling
distribution) and equals ``KL(pi || pi_ref)`` at temperature 1. Greedy decoding draws no samples, so it has
no KL estimate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from popalign.data.schema import Prompt
from popalign.errors import DataError, PopalignError
from popalign.io import atomic_write_json

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

OUTPUTS_FILE = "model_outputs.json"
KL_ESTIMATOR = (
    "mean over prompts of sum over generated tokens of log pi_T - log pi_ref,T on replies sampled from pi_T "
    "(temperature T, top_p 1): unbiased for KL(pi_T || pi_ref,T) in nats"
)


@dataclass
class GenerateSpec:
    """Sampling settings. ``temperature=0`` decodes greedily."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    max_prompt_length: int = 1024
    chat_template: bool = True

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise PopalignError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise PopalignError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise PopalignError(f"--top-p must lie in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise PopalignError(f"--batch-size must be at least 1, got {self.batch_size}")


def instruction_text(prompt: Prompt) -> str:
    """The ``instruction`` field: the prompt itself, or the last user turn of a multi-turn prompt."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else prompt[-1]["content"]


def load_prompts(
    path: str, split: str = "test", columns: str | None = None, limit: int | None = None
) -> tuple[list[str], list[Prompt]]:
    """``(ids, prompts)`` from a preference dataset, or from a file of ``instruction`` rows (AlpacaEval's)."""
    from popalign.data.formats import read_rows
    from popalign.data.load import load_preferences

    p = Path(path)
    if p.is_file() and not columns:
        raw = read_rows(str(p))
        if raw.rows and "instruction" in raw.rows[0] and "chosen" not in raw.rows[0]:
            rows = raw.rows[:limit] if limit else raw.rows
            for rec, number in zip(rows, raw.row_numbers, strict=False):
                if not isinstance(rec.get("instruction"), str) or not rec["instruction"].strip():
                    raise DataError(
                        "must be a non-empty string", file=raw.source, row=number, field="instruction"
                    )
            ids = [str(r.get("id", i)) for i, r in enumerate(rows)]
            return ids, [r["instruction"] for r in rows]
    overrides: dict[str, Any] = {"split": split, "tie_policy": "keep"}
    if columns:
        overrides["columns"] = columns
    if limit:
        overrides["limit"] = limit
    table, _ = load_preferences(path, **overrides)
    return list(table.ids), list(table.prompts)


@dataclass
class Samples:
    """Sampled replies in prompt order and, with a reference model, each reply's KL term ``(N,)`` (nats)."""

    outputs: list[str]
    kl: np.ndarray | None = None


def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: list[Prompt],
    spec: GenerateSpec,
    progress: bool = True,
    reference: Any = None,
) -> Samples:
    """One sampled reply per prompt, in prompt order; with ``reference``, the KL estimate of each reply.

    Prompts are rendered with :func:`~popalign.data.tokenize.render_prompt` (the chat template, as in
    training), left-padded in batches of similar length, and only the new tokens are decoded. Batch ``b`` is
    sampled under seed ``spec.seed + b`` with the caller's RNG left untouched, so a rerun gives the same text.
    The KL terms (see the module doc) are computed on the sampled token ids, not on re-tokenised text.
    """
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from popalign.data.tokenize import render_prompt

    texts = [render_prompt(p, tokenizer, spec.chat_template) for p in prompts]
    keep = spec.max_prompt_length
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if positions:
        # Prompt and reply must fit the model's positions; the prompt's end (the question) is kept.
        keep = max(1, min(keep, positions - spec.max_new_tokens))
    encoded = [ids[-keep:] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = np.argsort([-len(e) for e in encoded], kind="stable")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    sample = spec.temperature > 0
    options: dict[str, Any] = {"do_sample": sample, "max_new_tokens": spec.max_new_tokens}
    if sample:
        # top_k=0: no top-k filter from the model's generation config, so the replies are drawn from
        # softmax(logits / T) (truncated only by top_p) and the KL estimate is of that distribution.
        options.update(temperature=spec.temperature, top_p=spec.top_p, top_k=0)
    outputs: list[str] = [""] * len(prompts)
    kl = np.zeros(len(prompts)) if reference is not None and sample else None
    model.eval()
    starts = range(0, len(order), spec.batch_size)
    for b, start in enumerate(tqdm(starts, desc="generating", disable=not progress, leave=False)):
        part = order[start : start + spec.batch_size]
        width = max(len(encoded[i]) for i in part)
        ids = torch.full((len(part), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(part):
            ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(spec.seed + b)
            new = model.generate(
                input_ids=ids,
                attention_mask=mask,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
                **options,
            )[:, width:]
        for row, i in enumerate(part):
            outputs[i] = tokenizer.decode(new[row], skip_special_tokens=True).strip()
        if kl is not None:
            valid = reply_mask(new, tokenizer.eos_token_id)
            terms = sampled_logps(model, ids, mask, new, valid, spec.temperature)
            terms -= sampled_logps(reference, ids, mask, new, valid, spec.temperature)
            kl[part] = terms.cpu().numpy()
    return Samples(outputs, kl)


def reply_mask(new: Tensor, eos_token_id: int | None) -> Tensor:
    """``(B, T)`` True for the generated tokens of each reply: up to and including its first end token."""
    import torch

    if eos_token_id is None:
        return torch.ones_like(new, dtype=torch.bool)
    ended = (new == eos_token_id).long()
    return (ended.cumsum(dim=1) - ended) == 0


def sampled_logps(model: Any, ids: Tensor, mask: Tensor, new: Tensor, valid: Tensor, temperature: float):
    """``(B,)`` float32 ``sum_t log softmax(logits_t / temperature)[new_t]`` over the ``valid`` reply tokens.

    ``ids``/``mask``: the left-padded prompts ``(B, W)``; ``new``: the sampled tokens ``(B, T)``. One forward
    over prompt + reply, with positions counted from each row's first real token as in generation.
    """
    import torch

    from popalign.modeling.logps import masked_token_logps

    full = torch.cat([ids, new], dim=1)
    attention = torch.cat([mask, valid.to(mask.dtype)], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=attention, position_ids=positions).logits
    width = ids.shape[1]
    logits = logits[:, width - 1 : -1].float() / temperature
    return masked_token_logps(logits, new, valid).sum(dim=1)


def write_model_outputs(
    path: str | Path,
    ids: list[str],
    prompts: list[Prompt],
    outputs: list[str],
    generator: str,
    kl: np.ndarray | None = None,
) -> None:
    """Write AlpacaEval's ``model_outputs.json`` (atomically); ``kl``: each reply's KL term, when known."""
    records = [
        {"instruction": instruction_text(p), "output": o, "generator": generator, "id": i}
        for i, p, o in zip(ids, prompts, outputs, strict=True)
    ]
    if kl is not None:
        for rec, value in zip(records, kl, strict=True):
            rec["kl"] = float(value)
    atomic_write_json(path, records)


def outputs_file(path: str | Path) -> Path:
    """``path`` itself when it is a file, else ``model_outputs.json`` inside the folder (or its ``eval``)."""
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (p / OUTPUTS_FILE, p / "eval" / OUTPUTS_FILE):
        if candidate.is_file():
            return candidate
    raise PopalignError(f"{path}: no {OUTPUTS_FILE} there (run popalign eval generate first)")


def read_model_outputs(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``model_outputs.json`` (ours or any AlpacaEval-format file); ``id`` may be missing."""
    file = outputs_file(path)
    try:
        records = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc.msg} at line {exc.lineno})", file=str(file)) from None
    if not isinstance(records, list) or not records:
        raise DataError("expected a non-empty JSON list of {instruction, output, generator}", file=str(file))
    for n, rec in enumerate(records, start=1):
        for name in ("instruction", "output"):
            if not isinstance(rec, dict) or not isinstance(rec.get(name), str):
                raise DataError("missing or not a string", file=str(file), row=n, field=name)
    return records
