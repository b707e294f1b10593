"""What every route shares: the served project (:class:`LabelContext`), a pair as the page and the
API show it, and the plain message page."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from popalign.label.project import Project
from popalign.label.render import markdown_html, prompt_turns, size_note
from popalign.label.store import LabelStore, Served


@dataclass
class LabelContext:
    """What the app serves: the store, the project, the preference table the ids refer to, and the
    guidelines (Markdown text, or ``None``)."""

    store: LabelStore
    project: Project
    table: Any  # popalign.data.schema.PreferenceTable
    guidelines: str | None = None

    def preference(self, pref_id: str) -> dict[str, Any]:
        return self.table.row(self.table.index_of(pref_id))

    @functools.cached_property
    def guidelines_version(self) -> str | None:
        from popalign.label.guidelines import digest

        return None if self.guidelines is None else digest(self.guidelines)

    @functools.cached_property
    def guidelines_html(self) -> Any:
        return markdown_html(self.guidelines)


def pair_view(ctx: LabelContext, served: Served) -> dict[str, Any]:
    """Both sides of a served pair, their text rendered as sanitised HTML (:mod:`~popalign.label.render`)."""
    sides = []
    for side, pref_id in (("a", served.id_a), ("b", served.id_b)):
        rec = ctx.preference(pref_id)
        sides.append(
            {
                "side": side,
                "id": pref_id,
                "turns": prompt_turns(rec["prompt"]),
                "chosen": markdown_html(rec["chosen"]),
                "rejected": markdown_html(rec["rejected"]),
                "chosen_size": size_note(rec["chosen"]),
                "rejected_size": size_note(rec["rejected"]),
            }
        )
    return {"assignment_id": served.assignment_id, "pair_id": served.pair_id, "sides": sides}


def pair_json(ctx: LabelContext, served: Served) -> dict[str, Any]:
    """A served pair for the API: ids and raw text (JSON-encoded, so safe to carry anything)."""
    out: dict[str, Any] = {
        "assignment_id": served.assignment_id,
        "pair_id": served.pair_id,
        "expires_at": served.expires_at,
    }
    for side, pref_id in (("a", served.id_a), ("b", served.id_b)):
        rec = ctx.preference(pref_id)
        out[side] = {key: rec[key] for key in ("id", "prompt", "chosen", "rejected")}
    return out


def message_page(title: str, message: str, status: int) -> Any:
    from flask import render_template

    return render_template("message.html", title=title, message=message, status=status), status
