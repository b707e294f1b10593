"""Reading a model card back, as the Hub does: what the card tests check."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def parse_card(path: str | Path) -> tuple[dict[str, Any], str]:
    """``(front matter, body)`` of a card file, read back with ``huggingface_hub.ModelCard``."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(str(path))
    return card.data.to_dict(), card.text
