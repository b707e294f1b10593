"""``popalign sft``: the recipe's parts for supervised fine-tuning on prompt/response pairs, loss on
response tokens only (the stages are :mod:`popalign.train.recipe`'s).

The paper's pipeline (Section 4.2, Table 5) fine-tunes on UltraFeedback's chosen responses first; the
SFT model is then both the starting policy and the reference of preference training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from popalign.train.config import SFTConfig
from popalign.train.recipe import Job, run_recipe

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


def run_sft(cfg: SFTConfig, callbacks: list | None = None) -> dict[str, Any]:
    """Fine-tune as ``cfg`` says (:func:`popalign.train.recipe.run_recipe`); returns a summary (paths,
    metrics). Resumes from checkpoints. ``callbacks``: extra ``transformers.TrainerCallback`` objects."""
    return run_recipe(cfg, SFTParts(), callbacks)


class SFTParts:
    """The recipe's parts for SFT: one row per prompt and its chosen (or rejected) response, and
    transformers' own Trainer, whose loss is the causal LM's on the labelled tokens."""

    reward_model = False

    def check_data(self, table) -> None:
        """Any prompt/response data will do."""

    def save_how(self, cfg: SFTConfig) -> str:
        return "merged" if cfg.lora.enabled else "full"

    def setup_data(self, job: Job) -> tuple[Dataset, SFTCollator]:
        tokenized = job.tokenized
        responses = tokenized.chosen_ids if job.cfg.response == "chosen" else tokenized.rejected_ids
        return _Rows(len(tokenized)), SFTCollator(tokenized.prompt_ids, responses, job.tokenizer.pad_token_id)

    def make_trainer(self, job: Job, args, dataset, collator, callbacks: list | None):
        from transformers import Trainer

        return Trainer(
            model=job.model,
            args=args,
            train_dataset=dataset,
            data_collator=collator,
            processing_class=job.tokenizer,
            callbacks=callbacks,
        )
