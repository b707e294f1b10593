"""Where preferences are and how to read them: the one definition of every data option.

:class:`DataSpec` is embedded in run configs (``data.tie_policy``) and its fields are the flags of every
command that reads preferences (``--tie-policy``, see :mod:`popalign.cli._data_options`). Kept free of
numpy and friends so that building the command line stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from popalign.config import ConfigError, help_field
from popalign.data.validate import check_column_targets

# What evaluation reads unless told otherwise: a folder's test split, ties kept (reported apart).
EVAL_DEFAULTS = {"split": "test", "tie_policy": "keep"}


@dataclass
class DataSpec:
    """Where the preferences are and how to read them; embeddable in run configs."""

    path: str = help_field(
        "",
        help="file (.jsonl .json .parquet .csv), folder (save_to_disk, or holding <split>.jsonl), "
        "or hub:owner/name",
    )
    split: str | None = help_field(
        None,
        help="split to read: a folder's <split> file, a DatasetDict's or Hub dataset's split (unset: train, "
        "test for eval); on a single file only when the file holds that split",
    )
    columns: dict[str, str] = help_field(
        default_factory=dict,
        help="target -> source column (dotted paths reach nested fields, e.g. score_chosen: meta.s1); "
        "targets: id, prompt, chosen, rejected, score_chosen, score_rejected, response_a, response_b, "
        "score_a, score_b",
    )
    tie_policy: Literal["error", "skip", "keep"] = help_field(
        "error",
        help="pairs with equal scores: skip (counted) leaves them out, ordered rows (chosen/rejected) and "
        "unordered pairs alike; for unordered pairs error asks for a decision and keep puts response_a in "
        "chosen; ordered ties are kept under error and keep (the data chose)",
    )
    skip_bad_rows: bool = help_field(
        False, help="bad rows: stop at the first (false), or skip them and report counts per reason (true)"
    )
    empty_replies: Literal["keep", "error"] = help_field(
        "keep",
        help="empty or whitespace chosen/rejected replies: keep (counted in the report; UltraFeedback has "
        "a few, scored as real responses) or error (then skip_bad_rows skips them); empty prompts are always "
        "an error",
    )
    limit: int | None = help_field(None, help="keep only the first N valid rows (quick runs); reported")

    def validate(self) -> None:
        check_column_targets(self.columns)
        if self.tie_policy not in ("error", "skip", "keep"):
            raise ConfigError(f"tie_policy must be error, skip or keep, got {self.tie_policy!r}")
        if self.empty_replies not in ("keep", "error"):
            raise ConfigError(f"empty_replies must be keep or error, got {self.empty_replies!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be a positive number of rows, got {self.limit}")
