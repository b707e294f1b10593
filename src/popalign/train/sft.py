"""``popalign sft``: supervised fine-tuning on prompt/response pairs, loss on response tokens only.

The paper's pipeline (Section 4.2, Table 5) fine-tunes on UltraFeedback's chosen responses first; the
SFT model is then both the starting policy and the reference of preference training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from popalign.train.config import SFTConfig

IGNORE_INDEX = -100


class _Rows(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class SFTCollator:
    """``input_ids``, ``attention_mask`` and ``labels`` (prompt and padding set to -100), shape ``(B, T)``."""

    def __init__(self, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_token_id: int):
        self.prompt_ids, self.response_ids, self.pad = prompt_ids, response_ids, pad_token_id

    def __call__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        from popalign.modeling.batching import pad_rows

        rows = [self.prompt_ids[i] + self.response_ids[i] for i in idx]
        ids, mask = pad_rows(rows, self.pad)
        labels = ids.clone()
        labels[mask == 0] = IGNORE_INDEX
        for r, i in enumerate(idx):
            labels[r, : len(self.prompt_ids[i])] = IGNORE_INDEX
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def run_sft(cfg: SFTConfig) -> dict[str, Any]:
    from transformers import Trainer

    from popalign.data.tokenize import tokenize_preferences, truncation_warning
    from popalign.train.run import _training_texts
    from popalign.train.setup import (
        announce,
        apply_lora,
        build_model_and_tokenizer,
        finish_run,
        finished_run,
        start_run,
        training_arguments,
    )

    done = finished_run(cfg)
    if done is not None:
        return done
    out, resume, table, _ = start_run(cfg)
    model, tokenizer = build_model_and_tokenizer(cfg.model, texts=_training_texts(table))
    model = apply_lora(model, cfg.lora)
    tokenized = tokenize_preferences(table, tokenizer, cfg.tokenize)
    announce(truncation_warning(tokenized.stats))
    responses = tokenized.chosen_ids if cfg.response == "chosen" else tokenized.rejected_ids
    trainer = Trainer(
        model=model,
        args=training_arguments(cfg.training, out),
        train_dataset=_Rows(len(tokenized)),
        data_collator=SFTCollator(tokenized.prompt_ids, responses, tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    return finish_run(trainer, tokenizer, out, "merged" if cfg.lora.enabled else "full", resume)
