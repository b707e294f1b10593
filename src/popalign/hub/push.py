"""Put a trained model on the Hugging Face Hub: the card, the weights (or adapter), tokenizer and configs.

Only the files a user of the model needs leave the run folder -- never checkpoints, logs, caches or PoP
pair files. The upload itself is ``huggingface_hub``'s (``create_repo`` + ``upload_folder``); what fails
on the way (no network, offline mode, no token) becomes one line saying that nothing was uploaded.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path

from popalign.errors import PopalignError
from popalign.hub.card import CARD, write_model_card

WEIGHTS = (
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "adapter_config.json",
)
TOKENIZER = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
CONFIGS = ("config.json", "generation_config.json", "config.yaml")


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def files_to_upload(run_dir: str | Path, evaluation: Sequence[str] = ()) -> list[str]:
    """The run folder's files that go to the Hub, sorted; writes the card first if the run has none
    (with ``evaluation`` as its evaluation section, see :func:`popalign.hub.card.model_card`).

    Raises :class:`PopalignError` when the folder holds no final model (weights or adapter) or no tokenizer.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise PopalignError(f"{run}: no such run folder")
    names = sorted(p.name for p in run.iterdir() if p.is_file())
    if not any(_matches(n, WEIGHTS) for n in names):
        raise PopalignError(
            f"{run}: no final model here (model.safetensors or adapter_model.safetensors); "
            "push the run folder after training has finished"
        )
    if not any(_matches(n, TOKENIZER) for n in names):
        raise PopalignError(f"{run}: no tokenizer files here (tokenizer.json, tokenizer_config.json)")
    if CARD not in names:
        write_model_card(run, evaluation)
        names.append(CARD)
    return sorted(n for n in names if n == CARD or _matches(n, WEIGHTS + TOKENIZER + CONFIGS))


def _hub_failure(exc: Exception) -> PopalignError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        why = "not allowed (log in with `hf auth login` or set HF_TOKEN, with write access)"
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        why = f"{type(exc).__name__}: {first[:200]}"
    return PopalignError(f"cannot upload to the Hugging Face Hub ({why}); nothing was uploaded")


def push(run_dir: str | Path, repo: str, private: bool = False, evaluation: Sequence[str] = ()) -> str:
    """Upload :func:`files_to_upload` to the model repository ``repo`` (created if needed); its URL."""
    from huggingface_hub import HfApi, constants

    files = files_to_upload(run_dir, evaluation)
    if constants.HF_HUB_OFFLINE:
        raise PopalignError(
            "cannot reach the Hugging Face Hub: offline mode is on (HF_HUB_OFFLINE=1); nothing was uploaded"
        )
    api = HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=str(run_dir),
            repo_id=repo,
            repo_type="model",
            allow_patterns=files,
            commit_message=f"Upload {Path(run_dir).resolve().name} (popalign)",
        )
    except Exception as exc:  # network, auth and server errors alike end in one line
        raise _hub_failure(exc) from None
    return str(url)
