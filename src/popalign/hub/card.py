"""The model card (``README.md``) of a run folder, in the Hugging Face Hub's format.

YAML front matter (``base_model``, ``datasets``, ``tags``, ``library_name``) rendered by
``huggingface_hub.ModelCardData``, then what a reader needs to trust or reproduce the model: the method
and its loss settings, the data and its fingerprint, the evaluation results when ``popalign eval`` has
run, the versions, and the paper to cite. Training writes the card; evaluating a run folder rewrites it. The
evaluation section comes from the caller (``popalign.eval.report.card_section``) as document blocks,
rendered by :mod:`popalign.document`: the card knows the Hub's format, not how results are stored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from popalign.document import Block, markdown_lines
from popalign.io import atomic_write_text

CARD = "README.md"
CITATION = """@misc{popalign_adaptive_margin_pop,
  title = {Adaptive Margin {RLHF} via Preference over Preferences},
  note  = {Anonymous authors, under double-blind review}
}"""
_VERSIONED = ("popalign", "torch", "transformers", "peft", "accelerate")


def _read(path: Path) -> Any:
    if not path.is_file():
        return None
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _hub_id(name: str) -> str | None:
    """``name`` when it reads as a Hub id (``owner/name`` or ``hub:owner/name``) and is not a local path."""
    from popalign.data.formats import HUB_PREFIX, looks_like_hub_id

    name = name[len(HUB_PREFIX) :] if name.startswith(HUB_PREFIX) else name
    return name if looks_like_hub_id(name) and not Path(name).exists() else None


def _versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _kind(cfg: dict[str, Any]) -> tuple[str, list[str]]:
    """A one-line description of what was trained and the card's tags."""
    if "method" not in cfg:
        return f"supervised fine-tuning on the {cfg.get('response', 'chosen')} replies", ["popalign", "sft"]
    objective = cfg.get("objective", "policy")
    family = "reward-model" if objective == "reward-model" else "dpo"
    return f"{objective} trained with `{cfg['method']}`", ["popalign", family, cfg["method"]]


def _settings(cfg: dict[str, Any]) -> list[str]:
    lines = []
    for section in ("loss", "pop", "target", "lora", "tokenize"):
        values = cfg.get(section)
        if isinstance(values, dict) and values:
            lines.append(f"- `{section}`: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    training = cfg.get("training") or {}
    keys = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "seed")
    lines.append("- `training`: " + ", ".join(f"{k}={training[k]}" for k in keys if k in training))
    return lines


def model_card(run_dir: str | Path, evaluation: Sequence[Block] = ()) -> str:
    """The card's text for the run in ``run_dir`` (its ``config.yaml`` and what training recorded).

    ``evaluation``: the blocks (:mod:`popalign.document`) of the run's evaluation section, given by whoever
    knows the results
    (``popalign.eval.report.card_section``); none before ``popalign eval`` has run.
    """
    from huggingface_hub import ModelCardData

    run_dir = Path(run_dir)
    cfg = _read(run_dir / "config.yaml") or {}
    rows = _read(run_dir / "train_rows.json") or {}
    results = _read(run_dir / "train_results.json") or {}
    model = (cfg.get("model") or {}).get("name_or_path", "")
    data = cfg.get("data") or {}
    what, tags = _kind(cfg)
    base, dataset = _hub_id(model), _hub_id(str(data.get("path", "")))
    front = ModelCardData(
        base_model=base,
        datasets=[dataset] if dataset else None,
        tags=tags,
        library_name="transformers",
    ).to_yaml()
    name = run_dir.resolve().name
    lines = [f"---\n{front}\n---", "", f"# {name}", "", f"A {what}, made with popalign.", ""]
    lines += [f"- base model: `{model}`" + ("" if base else " (local or random; not on the Hub)")]
    if "method" in cfg:
        lines.append(f"- method: `{cfg['method']}` (see popalign's docs/losses.md)")
    lines += ["", "## Training data", ""]
    lines.append(
        # The path as the config gave it: the card is public, the resolved path is this machine's.
        f"- source: `{data.get('path')}` (split `{data.get('split') or 'train'}`)"
    )
    lines.append(f"- preferences: {len(rows.get('rows', [])):,}, fingerprint `{rows.get('fingerprint')}`")
    lines += ["", "## Settings", "", *_settings(cfg), ""]
    if results:
        lines += [
            "## Training result",
            "",
            ", ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in results.items()),
            "",
        ]
    lines += markdown_lines(list(evaluation))
    lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in _versions().items()), ""]
    lines += ["## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def write_model_card(run_dir: str | Path, evaluation: Sequence[Block] = ()) -> Path:
    """(Re)write ``run_dir/README.md`` (``evaluation`` as in :func:`model_card`)."""
    path = Path(run_dir) / CARD
    atomic_write_text(path, model_card(run_dir, evaluation))
    return path
