"""A cache of the weak preferences' target rewards: DPO-PoP without a target forward on every step.

DPO-PoP's margin (Eq. 7) is the target policy's reward difference on the weak preference of each PoP
pair, which costs one no-grad forward of the weak pair per step. With ``loss.margin_refresh_steps = N > 1``
the target rewards of a weak preference, once computed, are reused for the next ``N - 1`` optimiser steps
whenever that preference is a weak pair again; only rows without a fresh entry run through the target.
The target moves by Polyak averaging with rate ``tau`` (a memory of about ``1/tau`` steps), so a margin up to
``N`` steps old is close to the current one while ``N`` is well below ``1/tau``. ``N = 1`` is Eq. 7 exactly.

Checkpoints hold the cache (one file per process, merged on load, so a resume may use another number of
processes), so a resumed run serves the same rows from the cache as an uninterrupted one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor


class WeakRewardCache:
    """Target rewards ``(chosen, rejected)`` per weak preference, each with the step it was computed at.

    Args:
        refresh_steps: an entry computed at optimiser step ``s`` serves steps ``s .. s + refresh_steps - 1``.
    """

    def __init__(self, refresh_steps: int):
        if refresh_steps < 1:
            raise ValueError(f"refresh_steps must be >= 1, got {refresh_steps}")
        self.refresh_steps = refresh_steps
        self._entries: dict[int, tuple[float, float, int]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, index: list[int], step: int) -> tuple[list[bool], list[float], list[float]]:
        """Per row: whether a fresh entry exists, and its chosen / rejected rewards (0.0 where not)."""
        fresh, chosen, rejected = [], [], []
        for i in index:
            entry = self._entries.get(i)
            ok = entry is not None and step - entry[2] < self.refresh_steps
            fresh.append(ok)
            chosen.append(entry[0] if ok else 0.0)
            rejected.append(entry[1] if ok else 0.0)
        self.hits += sum(fresh)
        self.misses += len(fresh) - sum(fresh)
        return fresh, chosen, rejected

    def store(self, index: list[int], chosen: Tensor, rejected: Tensor, step: int) -> None:
        for i, c, r in zip(index, chosen.tolist(), rejected.tolist(), strict=True):
            self._entries[i] = (c, r, step)

    def state_dict(self) -> dict[str, Any]:
        """Entries and counters as plain lists (loadable with ``torch.load(weights_only=True)``)."""
        index = sorted(self._entries)
        return {
            "refresh_steps": self.refresh_steps,
            "index": index,
            "entries": [list(self._entries[i]) for i in index],
            "hits": self.hits,
            "misses": self.misses,
        }

    def merge_state_dict(self, state: dict[str, Any]) -> None:
        """Add the entries of ``state`` (e.g. another process's), keeping the newer of two for one row.

        Under data parallelism every process holds the same target, so an entry computed anywhere is the
        one any process would compute at that step.
        """
        for i, (c, r, step) in zip(state["index"], state["entries"], strict=True):
            mine = self._entries.get(i)
            if mine is None or step > mine[2]:
                self._entries[i] = (float(c), float(r), int(step))
