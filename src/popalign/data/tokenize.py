"""Tokenise a preference table once: prompt, chosen and rejected token ids per preference.

Both pairs of every PoP example come from the same preference table, so tokenising (and computing
reference log-probs) per preference, not per training example, is what keeps PoP cheap.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from popalign.config import help_field
from popalign.data.schema import PreferenceTable, Prompt


@dataclass
class TokenizeSpec:
    max_length: int = help_field(1024, help="Longest prompt+response in tokens; longer pairs are truncated.")
    max_prompt_length: int = help_field(
        512, help="Longest prompt kept when a pair must be truncated (the prompt's end is kept)."
    )
    chat_template: bool = help_field(
        True, help="Render prompts with the tokenizer's chat template when it has one (instruction models)."
    )

    def validate(self) -> None:
        if self.max_prompt_length >= self.max_length:
            raise ValueError("tokenize.max_prompt_length must be smaller than tokenize.max_length")


@dataclass
class TokenizedPreferences:
    """Token ids per preference: ``prompt_ids[i]``, ``chosen_ids[i]``, ``rejected_ids[i]`` (lists of ints).

    Responses end with the tokenizer's end-of-sequence token so the model learns to stop.
    """

    prompt_ids: list[list[int]]
    chosen_ids: list[list[int]]
    rejected_ids: list[list[int]]
    stats: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.prompt_ids)


def render_prompt(prompt: Prompt, tokenizer: Any, use_chat_template: bool = True) -> str:
    """The prompt as the model sees it, ending where the assistant's reply begins."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Without a template: the turns as plain text, then a blank line before the reply.
    text = "\n\n".join(m["content"] for m in messages)
    bos = tokenizer.bos_token or ""
    return f"{bos}{text}\n\n"


def _truncate(
    prompt: list[int], response: list[int], spec: TokenizeSpec
) -> tuple[list[int], list[int], bool]:
    if len(prompt) + len(response) <= spec.max_length:
        return prompt, response, False
    if len(prompt) > spec.max_prompt_length:
        prompt = prompt[-spec.max_prompt_length :]
    response = response[: spec.max_length - len(prompt)]
    return prompt, response, True


def tokenize_preferences(table: PreferenceTable, tokenizer: Any, spec: TokenizeSpec) -> TokenizedPreferences:
    """Tokenise every preference; truncation is counted in ``stats``, never silent."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; set one so responses can end")
    prompts = [render_prompt(p, tokenizer, spec.chat_template) for p in table.prompts]

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    prompt_ids = encode(prompts)
    chosen_raw = [ids + [eos] for ids in encode(list(table.chosen))]
    rejected_raw = [ids + [eos] for ids in encode(list(table.rejected))]
    out_p, out_c, out_r = [], [], []
    truncated = 0
    for p, c, r in zip(prompt_ids, chosen_raw, rejected_raw, strict=True):
        # Chosen and rejected keep the same prompt so their log-probs condition on the same context.
        longest = c if len(c) >= len(r) else r
        p_cut, _, cut = _truncate(p, longest, spec)
        room = spec.max_length - len(p_cut)
        out_p.append(p_cut)
        out_c.append(c[:room])
        out_r.append(r[:room])
        truncated += int(cut or len(c) > room or len(r) > room)
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in zip(out_p, out_c, out_r, strict=True)]
    stats = {
        "rows": len(table),
        "truncated_rows": truncated,
        "max_length": spec.max_length,
        "longest_pair_tokens": max(lengths) if lengths else 0,
        "mean_pair_tokens": (sum(lengths) / len(lengths)) if lengths else 0.0,
    }
    key = json.dumps(
        {
            "data": table.fingerprint(),
            "spec": [spec.max_length, spec.max_prompt_length, spec.chat_template],
            "tokenizer": _tokenizer_fingerprint(tokenizer),
        },
        sort_keys=True,
    )
    fp = hashlib.sha256(key.encode()).hexdigest()[:16]
    return TokenizedPreferences(out_p, out_c, out_r, stats=stats, fingerprint=fp)


TRUNCATION_WARN = 0.05


def truncation_warning(stats: dict[str, Any]) -> str | None:
    """A warning when more than 5% of the pairs were cut at ``tokenize.max_length``, else ``None``."""
    rows, cut = stats["rows"], stats["truncated_rows"]
    if not rows or cut <= TRUNCATION_WARN * rows:
        return None
    return (
        f"warning: {cut:,} of {rows:,} pairs ({100 * cut / rows:.0f}%) were truncated at "
        f"tokenize.max_length={stats['max_length']} (longest pair: {stats['longest_pair_tokens']} tokens); "
        "the model learns from cut-off replies. Raise tokenize.max_length if memory allows."
    )


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    vocab = tokenizer.get_vocab()
    h = hashlib.sha256()
    h.update(json.dumps(sorted(vocab.items())[:50000], ensure_ascii=False).encode())
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    h.update(str(tokenizer.eos_token_id).encode())
    return h.hexdigest()[:16]
